"""Gradients of an expectation through the sampling distribution: score-function and pathwise estimators (chapter 3).

For q = N(μ, σ²), applied elementwise, the estimators take the standard-normal noise ε as an
argument (so both can be fed the same draws) and return one gradient estimate per draw, so
that their means and variances can be measured. The closed-form variances are those of
f(z) = z² and the derivative in μ, the chapter's worked example.

Chapter 7 adds the gradient of the importance-weighted bound, standard and doubly
reparameterized (DReG), and the signal-to-noise ratio of a gradient estimator.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from course_code import arguments, objectives
from course_code.distributions import kl_standard_normal, log_normal, log_standard_normal, reparameterize

ScalarFn = Callable[[Tensor], Tensor]  # elementwise f(z)


def _check_gaussian(mu: Tensor, sigma: Tensor, eps: Tensor) -> None:
    for name, t in (("mu", mu), ("sigma", sigma), ("eps", eps)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if mu.shape != sigma.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but sigma has shape {tuple(sigma.shape)}")
    if eps.shape[1:] != mu.shape:
        raise ValueError(f"eps must have shape (n_samples, *mu.shape); mu has shape {tuple(mu.shape)}, eps {tuple(eps.shape)}")
    if (sigma <= 0).any():
        raise ValueError("sigma must be positive")


def score_function(f: ScalarFn, mu: Tensor, sigma: Tensor, eps: Tensor, baseline: float | Tensor = 0.0) -> tuple[Tensor, Tensor]:
    """Per-sample score-function (REINFORCE) estimates of ∇_μ and ∇_σ of E_{N(μ,σ²)}[f(z)] (chapter 3, eq. `eq-score-function`).

    For each noise draw ε (shape ``(n, *mu.shape)``), z = μ + σε and the estimate is (f(z) − b) ∇ log q(z)
    = (f(z) − b)·(ε/σ, (ε² − 1)/σ) with a constant baseline b; f is never differentiated.
    """
    _check_gaussian(mu, sigma, eps)
    arguments.function("f", f)
    with torch.no_grad():
        weight = f(mu + sigma * eps) - baseline
        return weight * eps / sigma, weight * (eps**2 - 1) / sigma


def pathwise(f: ScalarFn, mu: Tensor, sigma: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample pathwise (reparameterization) estimates f'(z) and f'(z)·ε of ∇_μ and ∇_σ, z = μ + σε (chapter 3, eq. `eq-pathwise`).

    The derivative f' is taken by autograd through z (eq. `eq-reparam`); shapes as in :func:`score_function`.
    """
    _check_gaussian(mu, sigma, eps)
    arguments.function("f", f)
    with torch.enable_grad():
        z = (mu.detach() + sigma.detach() * eps).requires_grad_(True)
        (df_dz,) = torch.autograd.grad(f(z).sum(), z)
    return df_dz, df_dz * eps


def score_function_bernoulli(
    f: ScalarFn,
    p: Tensor,
    n_samples: int,
    baseline: float | Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample score-function estimates of d/dp E_{Bernoulli(p)}[f(b)] for a discrete latent b (chapter 3).

    Each estimate is (f(b) − baseline)·(b/p − (1 − b)/(1 − p)); shape ``(n_samples, *p.shape)``.
    """
    if not isinstance(p, Tensor):
        raise TypeError(f"p must be a torch.Tensor, got {type(p).__name__}")
    if ((p <= 0) | (p >= 1)).any():
        raise ValueError("p must lie strictly between 0 and 1")
    arguments.integer("n_samples", n_samples)
    arguments.function("f", f)
    with torch.no_grad():
        b = torch.bernoulli(p.expand(n_samples, *p.shape), generator=generator)
        return (f(b) - baseline) * (b / p - (1 - b) / (1 - p))


def pathwise_variance_square(mu: Tensor, sigma: Tensor) -> Tensor:
    """Variance 4σ² of the pathwise estimate 2z of d/dμ E[z²], z ~ N(μ, σ²) (chapter 3, eq. `eq-square-variances`)."""
    return (4 * sigma**2).expand(torch.broadcast_shapes(mu.shape, sigma.shape))


def score_function_variance_square(mu: Tensor, sigma: Tensor, baseline: bool = False) -> Tensor:
    """Variance of the score-function estimate of d/dμ E[z²]: μ⁴/σ² + 14μ² + 15σ² (chapter 3, eq. `eq-square-variances`).

    With ``baseline=True`` the baseline is the exact mean E[z²] = μ² + σ², and the variance is 8μ² + 10σ².
    """
    if baseline:
        return 8 * mu**2 + 10 * sigma**2
    return mu**4 / sigma**2 + 14 * mu**2 + 15 * sigma**2


def elbo_surrogate(
    log_lik: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    estimator: str = "pathwise",
    n_samples: int = 1,
    baseline: float | Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The batch-mean Monte Carlo ELBO (analytic KL) whose gradient in (μ, log σ²) uses the chosen estimator (chapter 3, eq. `eq-score-function`).

    ``"pathwise"`` differentiates through z = μ + σ ⊙ ε; ``"score"`` treats z as a constant and adds
    (log p(x|z) − b)·(log q(z|x) − its value), which is zero but carries the score-function gradient.
    """
    if estimator == "pathwise":
        z = reparameterize(mu, logvar, n_samples, generator)
        rec = log_lik(x, z)
    elif estimator == "score":
        z = reparameterize(mu.detach(), logvar.detach(), n_samples, generator)
        rec = log_lik(x, z)
        log_q = log_normal(z, mu, logvar)
        rec = rec + (rec.detach() - baseline) * (log_q - log_q.detach())
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose 'pathwise' or 'score'")
    return (rec.mean(0) - kl_standard_normal(mu, logvar)).mean()


def gradient_samples(objective: Callable[[], Tensor], params: Sequence[Tensor], repeats: int) -> Tensor:
    """Evaluate ``objective()`` ``repeats`` times and stack its gradients in ``params``, flattened: shape ``(repeats, P)``."""
    arguments.integer("repeats", repeats)
    arguments.function("objective", objective)
    params = list(params)
    rows = []
    for _ in range(repeats):
        grads = torch.autograd.grad(objective(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


# --- Importance-weighted bounds: the standard and the doubly reparameterized gradient (chapter 7) ---

IWAE_ESTIMATORS = ("iwae", "dreg")


def iwae_surrogate(
    log_lik: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int,
    estimator: str = "iwae",
    generator: torch.Generator | None = None,
) -> Tensor:
    """The IWAE bound log (1/K) Σ_k w_k per datapoint, whose gradient is the chosen estimator's (chapter 7, eq. `eq-iwae-gradient`).

    ``"iwae"`` differentiates the bound itself: Σ_k w̃_k ∇ log w_k, with normalized weights w̃_k.
    ``"dreg"`` gives the decoder the same gradient and the encoder (through μ, log σ²) the doubly
    reparameterized one, Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ, where log q in log w_k is held fixed in φ
    (Tucker et al., 2019; eq. `eq-dreg`). The value is the bound in both cases; the prior is N(0, I).
    """
    if estimator not in IWAE_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {IWAE_ESTIMATORS}")
    objectives._check_q(log_lik, x, mu, logvar)
    z = reparameterize(mu, logvar, arguments.integer("n_samples", n_samples), generator)  # (K, B, d)

    def log_w(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        return objectives.checked_log_lik(log_lik, x, z) + log_standard_normal(z) - log_normal(z, mu, logvar)

    if estimator == "iwae":
        return torch.logsumexp(log_w(z, mu, logvar), dim=0) - math.log(n_samples)
    with torch.no_grad():
        log_w_value = log_w(z, mu, logvar)
        weights = torch.softmax(log_w_value, dim=0)  # w̃_k, constants for the gradient
        bound = torch.logsumexp(log_w_value, dim=0) - math.log(n_samples)
    z_fixed = z.detach()
    z_scaled = z_fixed + weights[..., None] * (z - z_fixed)  # the value of z; its path to φ is scaled by w̃_k
    surrogate = (weights * log_w(z_scaled, mu.detach(), logvar.detach())).sum(0)
    return surrogate - surrogate.detach() + bound


def gradient_snr(samples: Tensor) -> Tensor:
    """Signal-to-noise ratio |mean| / standard deviation of each column of gradient ``samples`` (R, P) (Rainforth et al., 2018).

    A column that is always exactly 0 (a parameter the objective does not reach) has no SNR: nan.
    """
    arguments.tensor("samples", samples, 2, "(repeats, parameters)")
    if len(samples) < 2:
        raise ValueError(f"samples must hold at least 2 gradient estimates (rows), got {len(samples)}")
    return samples.mean(0).abs() / samples.std(0)
