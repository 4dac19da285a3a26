"""Inference per datapoint: fitting q(z|x) to each x on its own, from the prior or from an encoder's output (chapter 5).

Stochastic variational inference (SVI) gives every datapoint its own parameters (μ, log σ²) and
climbs that datapoint's ELBO by gradient ascent; semi-amortized inference starts the same climb
from the encoder's output. A batch is optimized as one ``(B, d)`` tensor: the objective is a sum
over datapoints and Adam updates every coordinate separately, so the gradient steps of one
datapoint do not depend on the others. The result still depends on the batch in two ways: the
stopping rule looks at the batch's mean objective, so every datapoint takes the same number of
steps, and the noise draws of :func:`standardized_noise` come from one generator for the whole
batch, so a datapoint gets different draws in a different batch.
"""

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from course_code import arguments
from course_code.distributions import kl_standard_normal, log_normal
from course_code.objectives import LogLik, elbo

ExactElbo = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, mu, logvar) -> (B,)


class Inferred(NamedTuple):
    """The optimized q of each datapoint, and how the optimization went.

    ``trace[t]`` is the mean over the batch of the objective after ``t`` steps (``trace[0]`` at the
    start); it never decreases, because each datapoint keeps the best (μ, log σ²) it has visited.
    """

    mu: Tensor
    logvar: Tensor
    trace: list[float]
    steps: int
    converged: bool


def fixed_noise_elbo(log_lik: LogLik, x: Tensor, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """ELBO with the noise held fixed: (1/K) Σ_k log p(x | μ + σ ⊙ ε_k) − KL(q ‖ p(z)), shape (B,) (chapter 5, eq. `eq-elbo-fixed-noise`).

    ``eps`` has shape ``(K, B, d)``. With the same ``eps`` at every step the objective is a fixed,
    smooth function of (μ, log σ²), so its maximum is well defined (common random numbers).
    """
    if eps.ndim != 3 or eps.shape[1:] != mu.shape:
        raise ValueError(f"eps must have shape (K, *mu.shape) = (K, {', '.join(map(str, mu.shape))}), got {tuple(eps.shape)}")
    z = mu + torch.exp(0.5 * logvar) * eps
    return log_lik(x, z).mean(0) - kl_standard_normal(mu, logvar)


def standardized_noise(n_samples: int, shape: torch.Size, generator: torch.Generator, dtype: torch.dtype | None = None) -> Tensor:
    """Draws ε of shape ``(K, B, d)`` made to have, for each datapoint, sample mean 0 and sample covariance I exactly (chapter 5).

    Moment matching: the fixed-noise ELBO is then exact whenever log p(x|z) is quadratic in z (a
    linear-Gaussian decoder), and much less noisy otherwise. Needs K > d. The price is a small bias in
    higher moments: for d = 1, E[(1/K) Σ_k ε_k⁴] = 3(K − 1)/(K + 1) instead of 3, so the fixed-noise
    ELBO is a consistent estimate with an O(1/K) bias, not an unbiased one.
    """
    n_points, z_dim = shape
    arguments.integer("n_samples", n_samples)
    if n_samples <= z_dim:
        raise ValueError(f"moment matching needs more samples than latent dimensions: n_samples={n_samples}, d={z_dim}")
    eps = torch.randn((n_samples, n_points, z_dim), generator=generator, dtype=torch.float64)
    eps = eps - eps.mean(0)
    chol = torch.linalg.cholesky(torch.einsum("kbi,kbj->bij", eps, eps) / n_samples)  # (B, d, d)
    eps = torch.linalg.solve_triangular(chol, eps.permute(1, 2, 0), upper=False)  # (B, d, K)
    return eps.permute(2, 0, 1).to(dtype or torch.get_default_dtype())


def optimize_q(
    log_lik: LogLik | None,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    exact_elbo: ExactElbo | None = None,
    n_samples: int = 32,
    lr: float = 0.05,
    max_steps: int = 2000,
    tol: float = 1e-3,
    window: int = 50,
    seed: int = 0,
) -> Inferred:
    """Maximize every datapoint's ELBO over its own (μ, log σ²) with Adam, starting from ``(mu, logvar)`` (chapter 5, eq. `eq-svi`).

    The objective is ``exact_elbo(x, mu, logvar)`` when given (no Monte Carlo noise), else the
    ELBO with ``n_samples`` fixed, moment-matched noise draws (:func:`standardized_noise`, seeded
    with ``seed``). Stopping rule: stop after step t once the mean objective has risen by less than
    ``tol`` nats over the last ``window`` steps (``converged=True``), or after ``max_steps`` steps.
    """
    if log_lik is None and exact_elbo is None:
        raise ValueError("give log_lik (Monte Carlo ELBO) or exact_elbo (closed form or quadrature)")
    for name, f in (("log_lik", log_lik), ("exact_elbo", exact_elbo)):
        if f is not None:
            arguments.function(name, f)
    for name, t in (("x", x), ("mu", mu), ("logvar", logvar)):
        arguments.tensor(name, t)
    if mu.shape != logvar.shape or mu.ndim != 2 or mu.shape[0] != x.shape[0]:
        raise ValueError(
            f"mu and logvar must both have shape (B, d) with B = len(x) = {x.shape[0]}; "
            f"got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    arguments.integer("n_samples", n_samples)
    arguments.integer("max_steps", max_steps, minimum=0)
    arguments.integer("window", window)
    arguments.number("tol", tol, non_negative=True)
    arguments.number("lr", lr, positive=True)
    arguments.integer("seed", seed, minimum=0)
    if exact_elbo is None:
        eps = standardized_noise(n_samples, mu.shape, torch.Generator().manual_seed(seed), mu.dtype)

        def objective(m, lv):
            return fixed_noise_elbo(log_lik, x, m, lv, eps)
    else:

        def objective(m, lv):
            return exact_elbo(x, m, lv)

    params = [mu.detach().clone().requires_grad_(True), logvar.detach().clone().requires_grad_(True)]
    optimizer = torch.optim.Adam(params, lr=lr)
    best_mu, best_logvar = mu.detach().clone(), logvar.detach().clone()
    best = torch.full((x.shape[0],), -torch.inf, dtype=mu.dtype)
    trace: list[float] = []
    for step in range(max_steps + 1):
        value = objective(*params)
        with torch.no_grad():
            better = value > best
            best = torch.where(better, value, best)
            best_mu[better], best_logvar[better] = params[0][better], params[1][better]
        trace.append(best.mean().item())
        converged = step >= window and trace[step] - trace[step - window] < tol
        if converged or step == max_steps:
            break
        optimizer.zero_grad(set_to_none=True)
        (-value.sum()).backward()
        optimizer.step()
    return Inferred(best_mu, best_logvar, trace, step, converged)


def svi(log_lik: LogLik | None, x: Tensor, z_dim: int, **options) -> Inferred:
    """Per-datapoint inference from scratch: :func:`optimize_q` started at the prior, μ = 0, σ² = 1 (chapter 5)."""
    arguments.tensor("x", x)
    arguments.integer("z_dim", z_dim)
    start = torch.zeros(x.shape[0], z_dim, dtype=x.dtype)
    return optimize_q(log_lik, x, start, start.clone(), **options)


@torch.no_grad()
def elbo_estimate(
    log_lik: LogLik, x: Tensor, mu: Tensor, logvar: Tensor, n_samples: int = 1000, chunk_size: int = 250, generator: torch.Generator | None = None
) -> Tensor:
    """The ELBO of each datapoint from ``n_samples`` fresh draws, ``chunk_size`` at a time, no gradients (eq. `eq-elbo-rec-kl`)."""
    arguments.integer("n_samples", n_samples)
    arguments.integer("chunk_size", chunk_size)
    sizes = [min(chunk_size, n_samples - start) for start in range(0, n_samples, chunk_size)]
    parts = [elbo(log_lik, x, mu, logvar, k, generator=generator).elbo * k for k in sizes]
    return torch.stack(parts).sum(0) / n_samples


def gap_summary(log_px: Tensor, elbo_best: Tensor, elbo_amortized: Tensor) -> Tensor:
    """Mean and standard error of the approximation, amortization and total gaps: rows in that order, shape (3, 2) (chapter 5, eq. `eq-gap-decomposition`).

    Per datapoint: approximation = log p(x) − ELBO(q*), amortization = ELBO(q*) − ELBO(q_φ),
    total = log p(x) − ELBO(q_φ). The standard error is the sample standard deviation over √B.
    """
    for name, t in (("log_px", log_px), ("elbo_best", elbo_best), ("elbo_amortized", elbo_amortized)):
        arguments.tensor(name, t)
    if not log_px.shape == elbo_best.shape == elbo_amortized.shape or log_px.ndim != 1 or len(log_px) < 2:
        raise ValueError(
            "log_px, elbo_best and elbo_amortized must be 1-D of the same length ≥ 2; got shapes "
            f"{tuple(log_px.shape)}, {tuple(elbo_best.shape)}, {tuple(elbo_amortized.shape)}"
        )
    gaps = torch.stack([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized])
    return torch.stack([gaps.mean(1), gaps.std(1) / len(log_px) ** 0.5], dim=1)
