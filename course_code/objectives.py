"""The evidence lower bound, its weighted variants, and importance-sampled bounds on log p(x) (chapters 2, 4, 6).

A model enters these functions through two things only: the parameters ``(mu, logvar)`` of
the diagonal Gaussian q(z|x), and a function ``log_lik(x, z)`` that returns log p(x|z) with
shape ``(K, B)`` for samples ``z`` of shape ``(K, B, d)``. The prior is N(0, I) here; a model
with another prior or a richer q computes its own log-weights (``models.VAE.log_weights``) and
uses :func:`log_mean_exp_chunked`.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from course_code import arguments
from course_code.distributions import (
    kl_normal_per_dim,
    log_normal,
    log_standard_normal,
    reparameterize,
)

LogLik = Callable[[Tensor, Tensor], Tensor]


class ElboTerms(NamedTuple):
    """The ELBO of each datapoint and its two parts, all shape ``(B,)``; ``elbo = rec - kl``."""

    elbo: Tensor
    rec: Tensor
    kl: Tensor
    kl_per_dim: Tensor | None  # (B, d) when the KL is analytic, else None


def _check_q(log_lik: LogLik, x: Tensor, mu: Tensor, logvar: Tensor) -> None:
    arguments.function("log_lik", log_lik)
    for name, t in (("x", x), ("mu", mu), ("logvar", logvar)):
        arguments.tensor(name, t)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}")
    if mu.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"x has batch shape {tuple(x.shape[:-1])} but q has batch shape {tuple(mu.shape[:-1])}")


def elbo(
    log_lik: LogLik,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1,
    analytic_kl: bool = True,
    generator: torch.Generator | None = None,
) -> ElboTerms:
    """Monte Carlo ELBO with K samples: E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) (eq. `eq-elbo-rec-kl`).

    With ``analytic_kl=False`` the KL is estimated from the same samples, E_q[log q(z|x) − log p(z)].
    """
    _check_q(log_lik, x, mu, logvar)
    z = reparameterize(mu, logvar, arguments.integer("n_samples", n_samples), generator)  # (K, B, d)
    rec = checked_log_lik(log_lik, x, z).mean(0)
    if analytic_kl:
        kl_per_dim = kl_normal_per_dim(mu, logvar)
        kl = kl_per_dim.sum(-1)
    else:
        kl_per_dim = None
        kl = (log_normal(z, mu, logvar) - log_standard_normal(z)).mean(0)
    return ElboTerms(rec - kl, rec, kl, kl_per_dim)


def weighted_loss(terms: ElboTerms, beta: float = 1.0, free_bits: float = 0.0) -> Tensor:
    """Training loss −(E[rec] − β·KL), averaged over the batch (eqs. `eq-beta-elbo`, `eq-free-bits`).

    ``free_bits=λ > 0`` replaces the KL by Σ_j max(λ, KL_j), where KL_j is dimension j's KL
    averaged over the batch (Kingma et al., 2016), so no dimension is pushed below λ nats.
    """
    if not isinstance(terms, ElboTerms):
        raise TypeError(f"terms must be the ElboTerms that objectives.elbo returns, got {type(terms).__name__}")
    arguments.number("beta", beta, non_negative=True)
    arguments.number("free_bits", free_bits, non_negative=True)
    if free_bits > 0:
        if terms.kl_per_dim is None:
            raise ValueError("free_bits > 0 needs the per-dimension KL: compute the ELBO with analytic_kl=True")
        kl = terms.kl_per_dim.mean(0).clamp(min=free_bits).sum()
    else:
        kl = terms.kl.mean()
    return -(terms.rec.mean() - beta * kl)


def log_weights(
    log_lik: LogLik, x: Tensor, mu: Tensor, logvar: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x) for z_k ~ q(z|x); shape ``(K, B)``."""
    _check_q(log_lik, x, mu, logvar)
    z = reparameterize(mu, logvar, n_samples, generator)
    return checked_log_lik(log_lik, x, z) + log_standard_normal(z) - log_normal(z, mu, logvar)


def checked_log_lik(log_lik: LogLik, x: Tensor, z: Tensor) -> Tensor:
    """``log_lik(x, z)``, checked to have the shape ``(K, B)`` of the samples ``z`` (K, B, d) it was given."""
    values = log_lik(x, z)
    if not isinstance(values, Tensor) or values.shape != z.shape[:-1]:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"log_lik(x, z) must return log p(x|z) of shape (K, B) = {tuple(z.shape[:-1])} for z of shape "
            f"(K, B, d) = {tuple(z.shape)}, got {shape}: sum over the pixels (last axis) only, keep the sample axis"
        )
    return values


def iwae_bound(
    log_lik: LogLik,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int,
    chunk_size: int = 500,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-weighted bound log (1/K) Σ_k w_k ≤ log p(x), per datapoint (eq. `eq-iwae`).

    It never holds more than ``chunk_size`` samples per datapoint in memory: the log-sum-exp of
    each chunk is combined with the others by one more log-sum-exp. For large K this is the
    importance-sampled estimate of log p(x) used throughout the course.
    """
    return log_mean_exp_chunked(lambda k: log_weights(log_lik, x, mu, logvar, k, generator), n_samples, chunk_size)


def log_mean_exp_chunked(draw_log_weights: Callable[[int], Tensor], n_samples: int, chunk_size: int = 500) -> Tensor:
    """log (1/K) Σ_k w_k from ``draw_log_weights(k)``, which returns k fresh log-weights of shape ``(k, B)``.

    The K = ``n_samples`` weights are drawn ``chunk_size`` at a time; each chunk's log-sum-exp is
    combined with the others by one more log-sum-exp, so memory does not grow with K.
    """
    arguments.function("draw_log_weights", draw_log_weights)
    arguments.integer("n_samples", n_samples)
    arguments.integer("chunk_size", chunk_size)
    partial = []
    for start in range(0, n_samples, chunk_size):
        partial.append(torch.logsumexp(draw_log_weights(min(chunk_size, n_samples - start)), dim=0))
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(n_samples)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """(Σ_k w_k)² / Σ_k w_k² from log-weights of shape (K, B): between 1 (one weight dominates) and K (all equal) (chapter 7)."""
    arguments.tensor("log_w", log_w, 2, "(K, B)")
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


@torch.no_grad()
def log_px_estimate(
    log_lik: LogLik,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1000,
    chunk_size: int = 500,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Importance-sampled estimate of log p(x) with q(z|x) as the proposal, no gradients (eq. `eq-log-px-is`)."""
    return iwae_bound(log_lik, x, mu, logvar, n_samples, chunk_size, generator)
