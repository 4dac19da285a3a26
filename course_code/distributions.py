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
