"""How much a VAE uses its latent code: active units, mutual information, aggregated-posterior KL (chapters 2, 4, 6).

Every function takes the encoder's outputs over a dataset, ``mu`` and ``logvar`` of shape (N, d).
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor

from course_code import arguments
from course_code.distributions import LOG_2PI, kl_normal_per_dim, log_normal, log_standard_normal, reparameterize


def _check_posteriors(mu: Tensor, logvar: Tensor) -> None:
    """``mu`` and ``logvar``: the encoder's outputs over at least one datapoint, both of shape (N, d)."""
    arguments.tensor("mu", mu, 2, "(N, d)")
    arguments.tensor("logvar", logvar, 2, "(N, d)")
    if mu.shape != logvar.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}: they must match")
    if len(mu) == 0:
        raise ValueError("mu and logvar are empty (N = 0): encode at least one datapoint")


def unit_variances(mu: Tensor) -> Tensor:
    """Var_x(E_q[z_j]) for each latent dimension j: how much the posterior mean moves with the data; shape (d,)."""
    arguments.tensor("mu", mu)
    if mu.ndim != 2 or len(mu) < 2:
        raise ValueError(f"mu must have shape (N, d) with N ≥ 2, got {tuple(mu.shape)}")
    return mu.var(dim=0)


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """The number of dimensions with Var_x(E_q[z_j]) > threshold (Burda et al., 2016; chapter 4)."""
    arguments.number("threshold", threshold, non_negative=True)
    return int((unit_variances(mu) > threshold).sum())


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z_j|x) ‖ N(0, 1)) averaged over the data, for each dimension j; shape (d,)."""
    _check_posteriors(mu, logvar)
    return kl_normal_per_dim(mu, logvar).mean(0)


def _log_aggregate(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z) = log (1/N) Σ_n q(z|x_n) for points z of shape (M, d): shape (M,).

    The (M, N) table of log q(z_m|x_n) is formed by expanding the square, Σ_j (z_j − μ_j)²/σ_j²
    = z² · 1/σ² − 2 z · μ/σ² + Σ_j μ_j²/σ_j², so that it costs two matrix products. The expansion
    cancels large terms when σ is small, so it is done in float64.
    """
    z, mu, logvar64 = z.double(), mu.double(), logvar.double()
    precision = torch.exp(-logvar64)  # (N, d)
    squares = (z**2) @ precision.T - 2 * z @ (mu * precision).T + (mu**2 * precision).sum(-1)  # (M, N)
    log_q = -0.5 * (squares + logvar64.sum(-1) + mu.shape[-1] * LOG_2PI)
    return (torch.logsumexp(log_q, dim=1) - math.log(len(mu))).to(logvar.dtype)


def mutual_information(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None, n_samples: int = 1) -> Tensor:
    """I_q(x; z) = E_x E_q[log q(z|x) − log q(z)], q(z) the mixture of the batch's posteriors; a variant of He et al. (2019).

    One z_n is drawn from each q(z|x_n) and both log-densities are taken at it, so an encoder that
    ignores x scores exactly 0 and one that identifies every datapoint scores log N (eq. `eq-mi`).
    He et al. use the analytic entropy −E_q[log q(z|x)] for the first term; here it is sampled at
    the same z_n, which makes the estimate noisier but exactly 0 for a collapsed encoder. With
    ``n_samples=K`` every datapoint gets K draws and the estimate is their average (less noise).
    """
    _check_posteriors(mu, logvar)
    if arguments.integer("n_samples", n_samples) == 1:
        z = reparameterize(mu, logvar, generator=generator)
        return (log_normal(z, mu, logvar) - _log_aggregate(z, mu, logvar)).mean()
    z = reparameterize(mu, logvar, n_samples, generator)  # (K, N, d)
    log_q = log_normal(z, mu, logvar).reshape(-1)
    return (log_q - _log_aggregate(z.reshape(-1, mu.shape[-1]), mu, logvar)).mean()


def aggregate_kl(
    mu: Tensor, logvar: Tensor, n_samples: int = 1, generator: torch.Generator | None = None, log_prior: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """KL(q(z) ‖ p(z)) for the aggregated posterior q(z) = (1/N) Σ_n q(z|x_n), by Monte Carlo (chapters 2, 9).

    p(z) is N(0, I) unless ``log_prior`` (a function of z of shape (M, d) returning shape (M,)) says otherwise.
    """
    _check_posteriors(mu, logvar)
    log_prior = log_standard_normal if log_prior is None else log_prior
    arguments.function("log_prior", log_prior)
    z = reparameterize(mu, logvar, arguments.integer("n_samples", n_samples), generator).reshape(-1, mu.shape[-1])
    return (_log_aggregate(z, mu, logvar) - log_prior(z)).mean()


def surgery_on_grid(mu: Tensor, logvar: Tensor, limit: float | None = None, n_points: int = 4001) -> dict[str, Tensor]:
    """The three terms of ELBO surgery for a 1-D latent, by quadrature (chapter 2, eq. `eq-elbo-surgery`).

    Returns ``mean_kl`` = E_x[KL(q(z|x) ‖ p(z))] in closed form, and ``mutual_information`` = I_q(x; z)
    and ``aggregate_kl`` = KL(q(z) ‖ p(z)) integrated on a grid over [−limit, limit] (by default wide
    enough for every posterior); the identity says the first is the sum of the others.
    """
    arguments.tensor("mu", mu)
    arguments.tensor("logvar", logvar)
    mu, logvar = (t[:, None] if t.ndim == 1 else t for t in (mu, logvar))  # (N,) is a batch of 1-D latents
    _check_posteriors(mu, logvar)
    if mu.shape[-1] != 1:
        raise ValueError(f"surgery_on_grid needs a 1-D latent, got d={mu.shape[-1]}")
    arguments.integer("n_points", n_points, minimum=2)
    if limit is not None:
        arguments.number("limit", limit, positive=True)
    else:  # wide enough that every posterior and the prior have negligible mass outside
        limit = max(8.0, (mu.abs() + 10 * torch.exp(0.5 * logvar)).max().item())
    z = torch.linspace(-limit, limit, n_points, dtype=mu.dtype)[:, None]  # (G, 1)
    dz = 2 * limit / (n_points - 1)
    log_q_n = log_normal(z[:, None, :], mu[None], logvar[None])  # (G, N)
    log_q = torch.logsumexp(log_q_n, dim=1) - math.log(len(mu))  # (G,)
    q_n = torch.exp(log_q_n)
    mutual_information = (q_n * (log_q_n - log_q[:, None])).sum(0).mean() * dz
    aggregate_kl = (torch.exp(log_q) * (log_q - log_standard_normal(z))).sum() * dz
    return {
        "mean_kl": kl_normal_per_dim(mu, logvar).sum(-1).mean(),
        "mutual_information": mutual_information,
        "aggregate_kl": aggregate_kl,
    }


def aggregate_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z) of the aggregated posterior (1/N) Σ_n q(z|x_n) at points ``z`` of shape (M, d): shape (M,) (chapter 9).

    The points are taken 1,024 at a time, so that a grid of tens of thousands of points against
    thousands of posteriors never holds the whole (M, N) table in memory.
    """
    _check_posteriors(mu, logvar)
    arguments.tensor("z", z, 2, "(M, d)")
    if z.shape[-1] != mu.shape[-1]:
        raise ValueError(f"z has {z.shape[-1]} latent dimensions but the posteriors have {mu.shape[-1]}")
    return torch.cat([_log_aggregate(chunk, mu, logvar) for chunk in z.split(1024)])  # chunks bound the (M, N) table's memory


def aggregate_kl_on_grid(mu: Tensor, logvar: Tensor, grid: Tensor, log_prior: Tensor) -> Tensor:
    """KL(q(z) ‖ p(z)) by quadrature on a regular grid (G, d), given log p(z) at the grid points (G,) (chapter 9).

    Both densities are discretized on the grid (each normalized to sum to one over its points), so the
    result is the KL between two distributions on the grid points: never negative, whatever the spacing.
    """
    arguments.tensor("log_prior", log_prior, 1, "(G,)")
    if len(log_prior) != len(grid):
        raise ValueError(f"log_prior has {len(log_prior)} values for {len(grid)} grid points: give one per point")
    return kl_on_grid(aggregate_log_density(grid, mu, logvar), log_prior)


def kl_on_grid(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q ‖ p) from log q(z) and log p(z) at the G points of a regular grid, each up to a constant, shape (G,) (chapter 9).

    Both are normalized to sum to one over the points, as in :func:`aggregate_kl_on_grid`; given the
    log q(z) already computed on the grid, this skips computing it again.
    """
    arguments.tensor("log_q", log_q, 1, "(G,)")
    arguments.tensor("log_p", log_p, 1, "(G,)")
    if log_q.shape != log_p.shape:
        raise ValueError(f"log_q has {len(log_q)} grid points and log_p has {len(log_p)}: give both at the same points")
    log_q, log_p = torch.log_softmax(log_q, 0), torch.log_softmax(log_p, 0)
    return (log_q.exp() * (log_q - log_p)).sum()


def prior_mass_in_holes(log_q: Tensor, log_p: Tensor, ratio: float = 10.0) -> Tensor:
    """The prior's mass in the "holes" of the aggregated posterior, on a regular grid (chapter 9, eq. `eq-holes`).

    ``log_q`` and ``log_p`` hold log q(z) and log p(z) at the G grid points (shape (G,), each up to a
    constant: both are normalized over the grid). A point is in a hole when q(z) < p(z) / ``ratio``;
    the result is the sum of the normalized p over those points.
    """
    arguments.tensor("log_q", log_q, 1, "(G,)")
    arguments.tensor("log_p", log_p, 1, "(G,)")
    if log_q.shape != log_p.shape:
        raise ValueError(f"log_q has {len(log_q)} grid points and log_p has {len(log_p)}: give both at the same points")
    ratio = arguments.number("ratio", ratio, positive=True)
    log_q, log_p = torch.log_softmax(log_q, 0), torch.log_softmax(log_p, 0)
    return log_p.exp()[log_q < log_p - math.log(ratio)].sum()
