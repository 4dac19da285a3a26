"""Diagonal Gaussians, Bernoulli pixels and the KL divergence (chapters 1–3).

Every function takes tensors and returns tensors. Log-densities are summed over the last
dimension, so a batch ``x`` of shape ``(B, D)`` gives one number per datapoint, shape ``(B,)``.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from course_code import arguments

LOG_2PI = math.log(2 * math.pi)


class NonFiniteError(ValueError):
    """A tensor holds NaN or infinite values (during training: a sign that the optimization diverged)."""


def _check(name: str, t: Tensor) -> None:
    arguments.tensor(name, t)
    if not torch.isfinite(t).all():
        raise NonFiniteError(f"{name} contains NaN or infinite values")


def _check_pair(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    _check(a_name, a)
    _check(b_name, b)
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{a_name} has shape {tuple(a.shape)} and {b_name} has shape {tuple(b.shape)}: "
            "they must match (or broadcast)"
        ) from None


def _as_tensor(name: str, value: Tensor | float, like: Tensor) -> Tensor:
    """A tensor argument as it is, or a number as a tensor of ``like``'s dtype and device."""
    if not isinstance(value, Tensor):
        value = arguments.number(name, value)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def reparameterize(
    mu: Tensor, logvar: Tensor, n_samples: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw z = μ + σ ⊙ ε with ε ~ N(0, I), differentiable in μ and log σ² (eq. `eq-reparam`).

    With ``n_samples=K`` the result has a leading sample axis: shape ``(K, *mu.shape)``.
    """
    _check_pair("mu", mu, "logvar", logvar)
    shape = mu.shape if n_samples is None else (arguments.integer("n_samples", n_samples), *mu.shape)
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def log_normal(x: Tensor, mu: Tensor, logvar: Tensor | float) -> Tensor:
    """log N(x; μ, diag σ²), summed over the last axis; ``logvar`` may be a float (fixed variance)."""
    _check_pair("x", x, "mu", mu)
    logvar = _as_tensor("logvar", logvar, x)
    _check_pair("x", x, "logvar", logvar)
    elementwise = -0.5 * (LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar))
    return elementwise.expand(torch.broadcast_shapes(x.shape, mu.shape, logvar.shape)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis: the prior p(z) of every model in the course."""
    _check("z", z)
    return -0.5 * (LOG_2PI + z**2).sum(-1)


def log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over the last axis, computed from logits (chapter 4).

    ``x`` may be any value in [0, 1] (grey levels give the continuous cross-entropy).
    """
    _check_pair("x", x, "logits", logits)
    if (x < 0).any() or (x > 1).any():
        raise ValueError(
            f"Bernoulli targets must lie in [0, 1]; x ranges over [{x.min().item():.3g}, {x.max().item():.3g}]. "
            "Scale the data to [0, 1] or use a Gaussian likelihood."
        )
    x, logits = torch.broadcast_tensors(x, logits)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def kl_normal_per_dim(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | float = 0.0, logvar_p: Tensor | float = 0.0) -> Tensor:
    """KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) for each coordinate, not summed (eq. `eq-kl-gauss`)."""
    _check_pair("mu_q", mu_q, "logvar_q", logvar_q)
    mu_p, logvar_p = _as_tensor("mu_p", mu_p, mu_q), _as_tensor("logvar_p", logvar_p, mu_q)
    _check_pair("mu_q", mu_q, "mu_p", mu_p)
    _check_pair("logvar_q", logvar_q, "logvar_p", logvar_p)
    return 0.5 * (logvar_p - logvar_q + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p) - 1)


def kl_normal(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | float = 0.0, logvar_p: Tensor | float = 0.0) -> Tensor:
    """KL between two diagonal Gaussians, summed over the last axis (eq. `eq-kl-gauss`)."""
    return kl_normal_per_dim(mu_q, logvar_q, mu_p, logvar_p).sum(-1)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²): the VAE's KL term (eq. `eq-kl-prior`)."""
    _check_pair("mu", mu, "logvar", logvar)
    return -0.5 * (1 + logvar - mu**2 - torch.exp(logvar)).sum(-1)


# Full-covariance Gaussians N(μ, LLᵀ), parameterized by the Cholesky factor L (chapter 8).


def _check_scale_tril(name: str, scale_tril: Tensor, mu: Tensor) -> None:
    _check(name, scale_tril)
    d = mu.shape[-1]
    if scale_tril.ndim < 2 or scale_tril.shape[-2:] != (d, d):
        raise ValueError(f"{name} must have shape (..., {d}, {d}) to match mu of shape {tuple(mu.shape)}; got {tuple(scale_tril.shape)}")
    if not (torch.diagonal(scale_tril, dim1=-2, dim2=-1) > 0).all():
        raise ValueError(f"{name} must be lower triangular with a positive diagonal (a Cholesky factor); build it with torch.linalg.cholesky")


def _whiten(scale_tril: Tensor, v: Tensor) -> Tensor:
    """L⁻¹v for vectors v of shape (..., d), by triangular solve (L broadcasts against v's batch axes)."""
    shape = torch.broadcast_shapes(scale_tril.shape[:-2], v.shape[:-1])
    L = scale_tril.expand(*shape, *scale_tril.shape[-2:])
    return torch.linalg.solve_triangular(L, v.expand(*shape, v.shape[-1])[..., None], upper=False)[..., 0]


def log_det_tril(scale_tril: Tensor) -> Tensor:
    """log det(LLᵀ) = 2 Σ_j log L_jj for a Cholesky factor L (eq. `eq-full-cov-logdet`)."""
    return 2 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)


def reparameterize_full(
    mu: Tensor, scale_tril: Tensor, n_samples: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw z = μ + Lε with ε ~ N(0, I): a reparameterized sample of N(μ, LLᵀ) (eq. `eq-full-cov-reparam`)."""
    _check("mu", mu)
    _check_scale_tril("scale_tril", scale_tril, mu)
    shape = mu.shape if n_samples is None else (arguments.integer("n_samples", n_samples), *mu.shape)
    eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + (scale_tril @ eps[..., None])[..., 0]


def log_normal_full(x: Tensor, mu: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(x; μ, LLᵀ) = −½ (d log 2π + log det LLᵀ + ‖L⁻¹(x − μ)‖²) (eq. `eq-full-cov-logpdf`)."""
    _check_pair("x", x, "mu", mu)
    _check_scale_tril("scale_tril", scale_tril, mu)
    r = _whiten(scale_tril, x - mu)
    return -0.5 * (x.shape[-1] * LOG_2PI + log_det_tril(scale_tril) + (r**2).sum(-1))


def kl_normal_full(mu_q: Tensor, scale_tril_q: Tensor, mu_p: Tensor | None = None, scale_tril_p: Tensor | None = None) -> Tensor:
    """KL(N(μ_q, L_q L_qᵀ) ‖ N(μ_p, L_p L_pᵀ)) in closed form; the prior N(0, I) when μ_p and L_p are left out (eq. `eq-kl-full`).

    With M = L_p⁻¹L_q and m = L_p⁻¹(μ_p − μ_q): ½ (‖M‖²_F + ‖m‖² − d + log det Σ_p − log det Σ_q).
    """
    _check("mu_q", mu_q)
    _check_scale_tril("scale_tril_q", scale_tril_q, mu_q)
    d = mu_q.shape[-1]
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
    if scale_tril_p is None:
        scale_tril_p = torch.eye(d, dtype=mu_q.dtype, device=mu_q.device)
    _check_pair("mu_q", mu_q, "mu_p", mu_p)
    _check_scale_tril("scale_tril_p", scale_tril_p, mu_q)
    shape = torch.broadcast_shapes(scale_tril_p.shape, scale_tril_q.shape)
    M = torch.linalg.solve_triangular(scale_tril_p.expand(shape), scale_tril_q.expand(shape), upper=False)
    m = _whiten(scale_tril_p, mu_p - mu_q)
    trace = (M**2).sum((-2, -1))
    return 0.5 * (trace + (m**2).sum(-1) - d + log_det_tril(scale_tril_p) - log_det_tril(scale_tril_q))


def log_mixture_normal(z: Tensor, mu: Tensor, logvar: Tensor, log_weights: Tensor) -> Tensor:
    """log Σ_k π_k N(z; μ_k, diag σ_k²) for a mixture of K diagonal Gaussians (chapter 9, eq. `eq-mixture-prior`).

    ``mu`` and ``logvar`` have shape (K, d) and ``log_weights`` = log π has shape (K,); ``z`` has any
    leading shape ``(..., d)`` and the result has shape ``z.shape[:-1]``.
    """
    arguments.tensor("mu", mu, 2, "(K, d)")
    arguments.tensor("logvar", logvar, 2, "(K, d)")
    arguments.tensor("log_weights", log_weights, 1, "(K,)")
    if logvar.shape != mu.shape or len(log_weights) != len(mu):
        raise ValueError(f"mu {tuple(mu.shape)}, logvar {tuple(logvar.shape)} and log_weights {tuple(log_weights.shape)} "
                         "must describe the same K components: shapes (K, d), (K, d) and (K,)")
    _check("z", z)
    if z.ndim == 0 or z.shape[-1] != mu.shape[-1]:
        raise ValueError(f"z must end with the latent axis of size d = {mu.shape[-1]}, got shape {tuple(z.shape)}")
    return torch.logsumexp(log_weights + log_normal(z.unsqueeze(-2), mu, logvar), dim=-1)
