"""What each latent dimension encodes: the KL term decomposed, the mutual information gap, β-TCVAE (chapter 11).

Chen et al. (2018) split the KL term of the ELBO, averaged over the data, into three parts:

    E_x[KL(q(z|x) ‖ p(z))] = I_q(x; z) + TC(q(z)) + Σ_j KL(q(z_j) ‖ p(z_j)),

the index-code mutual information, the total correlation of the aggregated posterior q(z) =
(1/N) Σ_n q(z|x_n), and the dimension-wise KL. :func:`kl_decomposition` estimates all four terms
at the same samples, so the identity holds to rounding. The mutual information gap (MIG) scores
how well each generating factor is captured by one latent dimension alone.
"""

import math

import torch
from torch import Tensor

from course_code import arguments, models
from course_code.diagnostics import _check_posteriors, _log_aggregate
from course_code.distributions import LOG_2PI, log_normal, log_standard_normal, reparameterize


def _log_aggregate_per_dim(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z_j) = log (1/N) Σ_n q(z_j|x_n) for every dimension j of points z (M, d): shape (M, d)."""
    return torch.stack([_log_aggregate(z[:, j : j + 1], mu[:, j : j + 1], logvar[:, j : j + 1]) for j in range(z.shape[1])], -1)


def kl_decomposition(mu: Tensor, logvar: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The KL term and its three parts (eq. `eq-tc-decomposition`), by Monte Carlo over the dataset's posteriors.

    ``mu``, ``logvar`` (N, d) are the encoder's outputs over the whole dataset, which defines q(z). For
    K = ``n_samples`` draws z ~ q(z|x_n) of every datapoint, with log q(z) and log q(z_j) the exact
    mixtures over the N posteriors, it returns the averages of

    - ``mean_kl``: log q(z|x) − log p(z),
    - ``mutual_information``: log q(z|x) − log q(z),
    - ``total_correlation``: log q(z) − Σ_j log q(z_j),
    - ``dimension_kl``: Σ_j [log q(z_j) − log p(z_j)],

    so that ``mean_kl`` is the sum of the other three at the same draws.
    """
    _check_posteriors(mu, logvar)
    z = reparameterize(mu, logvar, arguments.integer("n_samples", n_samples), generator)  # (K, N, d)
    log_q_given_x = log_normal(z, mu, logvar).reshape(-1)
    flat = z.reshape(-1, mu.shape[-1])
    log_q = _log_aggregate(flat, mu, logvar)
    log_q_dims = _log_aggregate_per_dim(flat, mu, logvar)
    log_p = log_standard_normal(flat)
    return {
        "mean_kl": (log_q_given_x - log_p).mean(),
        "mutual_information": (log_q_given_x - log_q).mean(),
        "total_correlation": (log_q - log_q_dims.sum(-1)).mean(),
        "dimension_kl": (log_q_dims.sum(-1) - log_p).mean(),
    }


def _check_codes(name: str, codes: Tensor) -> Tensor:
    arguments.tensor(name, codes, 1, "(N,)")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer levels (dtype int64), got {codes.dtype}: discretize it first")
    if len(codes) == 0:
        raise ValueError(f"{name} is empty")
    if (codes < 0).any():
        raise ValueError(f"{name} must hold non-negative integer levels")
    return codes


def discrete_entropy(codes: Tensor) -> Tensor:
    """H(a) in nats of a discrete variable, from its N observed levels (N,), by counting."""
    counts = torch.bincount(_check_codes("codes", codes)).to(torch.get_default_dtype())
    p = counts[counts > 0] / len(codes)
    return -(p * p.log()).sum()


def discrete_mutual_information(a: Tensor, b: Tensor) -> Tensor:
    """I(a; b) = H(a) + H(b) − H(a, b) in nats, from N paired observations of two discrete variables."""
    _check_codes("a", a)
    _check_codes("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired observations of the same length, got {len(a)} and {len(b)}")
    joint = a * (int(b.max()) + 1) + b
    return discrete_entropy(a) + discrete_entropy(b) - discrete_entropy(joint)


def discretize(latents: Tensor, bins: int = 20) -> Tensor:
    """Each column of ``latents`` (N, d) cut into ``bins`` equal-width bins over its range: integer levels (N, d)."""
    arguments.tensor("latents", latents, 2, "(N, d)")
    arguments.integer("bins", bins, minimum=2)
    low, high = latents.min(0).values, latents.max(0).values
    width = torch.where(high > low, (high - low) / bins, torch.ones_like(high))
    return ((latents - low) / width).floor().clamp(0, bins - 1).long()


def mutual_information_matrix(latents: Tensor, factors: Tensor, bins: int = 20) -> Tensor:
    """I(z_j; v_k) in nats for every latent dimension j and generating factor k: shape (d, K)."""
    arguments.tensor("factors", factors, 2, "(N, K)")
    if len(factors) != len(latents):
        raise ValueError(f"latents and factors must describe the same N images, got {len(latents)} and {len(factors)}")
    codes = discretize(latents, bins)
    return torch.stack([
        torch.stack([discrete_mutual_information(codes[:, j], factors[:, k]) for k in range(factors.shape[1])])
        for j in range(codes.shape[1])
    ])


def mig(latents: Tensor, factors: Tensor, bins: int = 20) -> dict[str, Tensor]:
    """The mutual information gap (Chen et al., 2018, eq. `eq-mig`) of latent codes against known factors.

    For each factor v_k, the gap between the largest and the second-largest I(z_j; v_k) over the
    latent dimensions, divided by H(v_k): 1 when one dimension alone carries the factor, 0 when two
    carry it equally. Returns ``mig`` (the mean over factors), ``gaps`` (K,), and ``information``
    (d, K) in nats. ``latents`` are usually the posterior means μ_φ(x) (N, d), d ≥ 2.
    """
    information = mutual_information_matrix(latents, factors, bins)
    if information.shape[0] < 2:
        raise ValueError("mig needs at least two latent dimensions (a gap between the best and the second best)")
    entropy = torch.stack([discrete_entropy(factors[:, k]) for k in range(factors.shape[1])])
    gaps = information_gaps(information, entropy)
    return {"mig": gaps.mean(), "gaps": gaps, "information": information}


def information_gaps(information: Tensor, entropy: Tensor) -> Tensor:
    """Each factor's gap (eq. `eq-mig`): the largest minus the second-largest I(z_j; v_k) over j, divided by H(v_k).

    ``information`` (d, K) holds I(z_j; v_k) in nats, ``entropy`` (K,) holds H(v_k); the result has shape (K,).
    """
    arguments.tensor("information", information, 2, "(d, K)")
    arguments.tensor("entropy", entropy, 1, "(K,)")
    if information.shape[0] < 2 or entropy.shape[0] != information.shape[1]:
        raise ValueError(f"information must be (d, K) with d >= 2 and entropy (K,), got {tuple(information.shape)} "
                         f"and {tuple(entropy.shape)}")
    top = information.topk(2, dim=0).values  # (2, K)
    return (top[0] - top[1]) / entropy


def gaussian_total_correlation(cov: Tensor) -> Tensor:
    """TC of N(m, Σ) in closed form: ½ (Σ_j log Σ_jj − log det Σ), for covariances (..., d, d): shape (...)."""
    arguments.tensor("cov", cov)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must hold square covariance matrices (..., d, d), got shape {tuple(cov.shape)}")
    log_det = 2 * torch.linalg.cholesky(cov).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (cov.diagonal(dim1=-2, dim2=-1).log().sum(-1) - log_det)


def minibatch_log_aggregate(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int) -> tuple[Tensor, Tensor]:
    """log q(z_i) and log q(z_ij) of a batch's own draws, estimated from the batch alone (eq. `eq-stratified`).

    ``z``, ``mu``, ``logvar`` (M, d): draw z_i ~ q(z|x_i) and the posteriors of M distinct datapoints
    out of N = ``dataset_size``. The aggregate q(z_i) = (1/N) Σ_n q(z_i|x_n) is estimated by its own
    datapoint's term, weighted 1/N, plus the other M − 1 posteriors standing for the other N − 1
    datapoints, each weighted (N − 1)/(N (M − 1)): unbiased for a random batch, exact when M = N.
    Returns log q(z_i) (M,) and every dimension's log q(z_ij) (M, d).
    """
    m = arguments.tensor("z", z, 2, "(M, d)").shape[0]
    n = arguments.integer("dataset_size", dataset_size, minimum=m)
    if m < 2:
        raise ValueError("minibatch_log_aggregate needs a batch of at least two datapoints")
    # log q(z_ij | x_m) for every pair of batch members i, m and dimension j: (M, M, d)
    pairwise = -0.5 * (LOG_2PI + logvar[None] + (z[:, None, :] - mu[None]) ** 2 * torch.exp(-logvar[None]))
    log_w = torch.full((m, m), math.log((n - 1) / (n * (m - 1))), dtype=z.dtype, device=z.device)
    log_w.fill_diagonal_(-math.log(n))
    log_q = torch.logsumexp(pairwise.sum(-1) + log_w, dim=1)
    log_q_dims = torch.logsumexp(pairwise + log_w[..., None], dim=1)
    return log_q, log_q_dims


class TCVAE(models.VAE):
    """β-TCVAE (Chen et al., 2018): the ELBO's KL term split as in :func:`kl_decomposition`, the total correlation weighted.

    Its loss, for a batch of M datapoints out of ``dataset_size``, is
    −[log p(x|z) − (log q(z|x) − log q(z)) − β·(log q(z) − Σ_j log q(z_j)) − Σ_j (log q(z_j) − log p(z_j))]
    (eq. `eq-tcvae`) with q(z) and q(z_j) estimated from the batch by :func:`minibatch_log_aggregate`.
    With β = 1 it is the usual ELBO, whatever the estimate. The ``beta`` of :meth:`loss` weights the
    total correlation only.
    """

    def __init__(self, *args, dataset_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.standard or self.objective != "elbo":
            raise ValueError("TCVAE decomposes the KL against N(0, I) of a diagonal Gaussian q: no prior, flow or iwae objective")
        self.dataset_size = arguments.integer("dataset_size", dataset_size)
        self.config["dataset_size"] = self.dataset_size

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        arguments.number("beta", beta, non_negative=True)
        if free_bits != 0.0 or n_samples != 1:
            raise ValueError("TCVAE's loss takes one sample per datapoint and no free bits")
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)  # (M, d)
        rec = self.log_likelihood(x, z[None])[0]
        log_q_given_x = log_normal(z, mu, logvar)
        log_q, log_q_dims = minibatch_log_aggregate(z, mu, logvar, max(self.dataset_size, len(x)))
        mi = log_q_given_x - log_q
        tc = log_q - log_q_dims.sum(-1)
        dim_kl = log_q_dims.sum(-1) - log_standard_normal(z)
        loss = -(rec - mi - beta * tc - dim_kl).mean()
        kl = mi + tc + dim_kl
        return loss, {"elbo": (rec - kl).mean().item(), "rec": rec.mean().item(), "kl": kl.mean().item(), "tc": tc.mean().item()}
