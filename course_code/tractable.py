"""Models where log p(x) and the posterior are known: the ground truth that lets chapters measure gaps exactly.

- :class:`LinearGaussian`: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) — probabilistic PCA, every
  quantity in closed form (chapter 2).
- :class:`GridModel`: any decoder with a 1-D or 2-D latent, integrated by quadrature on a grid
  (chapters 5 and 6).
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from course_code import arguments
from course_code.distributions import LOG_2PI, kl_normal_full, kl_standard_normal, log_normal, log_standard_normal


class LinearGaussian:
    """p(z) = N(0, I_d), p(x|z) = N(x; Wz + b, σ² I_D) with W of shape (D, d) (chapter 2)."""

    def __init__(self, W: Tensor, b: Tensor, logvar_x: float):
        arguments.tensor("W", W)
        arguments.tensor("b", b)
        arguments.number("logvar_x", logvar_x)
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"W must be (D, d) and b must be (D,); got W {tuple(W.shape)}, b {tuple(b.shape)}")
        self.W, self.b, self.logvar_x = W, b, float(logvar_x)
        self.x_dim, self.z_dim = W.shape
        self.var_x = math.exp(self.logvar_x)

    @classmethod
    def random(cls, x_dim: int = 2, z_dim: int = 2, noise_std: float = 0.5, seed: int = 0) -> "LinearGaussian":
        """A model with standard-normal W and b drawn from a seeded generator, in torch's default dtype."""
        arguments.integer("x_dim", x_dim)
        arguments.integer("z_dim", z_dim)
        arguments.number("noise_std", noise_std, positive=True)
        arguments.integer("seed", seed, minimum=0)
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(x_dim, z_dim, generator=g)
        b = torch.randn(x_dim, generator=g)
        return cls(W, b, 2 * math.log(noise_std))

    def _check_x(self, x: Tensor) -> None:
        arguments.tensor("x", x, 2, "(B, D)")
        if x.shape[1] != self.x_dim:
            raise ValueError(f"x has {x.shape[1]} features per datapoint (shape {tuple(x.shape)}), the model has D = {self.x_dim}")

    def precision(self) -> Tensor:
        """Λ = I + WᵀW/σ², the precision of the exact posterior (the same for every x)."""
        return torch.eye(self.z_dim, dtype=self.W.dtype) + self.W.T @ self.W / self.var_x

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The exact posterior p(z|x) = N(m(x), Σ): means of shape (B, d) and the shared covariance Σ = Λ⁻¹."""
        self._check_x(x)
        cov = torch.linalg.inv(self.precision())
        return (x - self.b) @ self.W @ cov / self.var_x, cov

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) = log N(x; b, WWᵀ + σ²I), per datapoint."""
        self._check_x(x)
        C = self.W @ self.W.T + self.var_x * torch.eye(self.x_dim, dtype=self.W.dtype)
        L = torch.linalg.cholesky(C)
        r = torch.linalg.solve_triangular(L, (x - self.b).T, upper=False)  # (D, B)
        logdet = 2 * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (self.x_dim * LOG_2PI + logdet + (r**2).sum(0))

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) for z of shape (K, B, d): shape (K, B)."""
        return log_normal(x, z @ self.W.T + self.b, self.logvar_x)

    def best_diagonal_q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The diagonal Gaussian closest to p(z|x) in KL(q ‖ p): mean m(x), variances 1/Λ_jj (chapter 2)."""
        mean, _ = self.posterior(x)
        logvar = -torch.log(torch.diagonal(self.precision()))
        return mean, logvar.expand_as(mean)

    def _expected_log_lik(self, x: Tensor, mu: Tensor, trace: Tensor) -> Tensor:
        """E_q[log p(x|z)] for a q with mean μ, given tr(WᵀW Cov_q) (the only way q's covariance enters)."""
        residual = x - self.b - mu @ self.W.T
        return -0.5 * (self.x_dim * (LOG_2PI + self.logvar_x) + ((residual**2).sum(-1) + trace) / self.var_x)

    def elbo(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """The exact ELBO of q = N(μ, diag σ²): E_q[log p(x|z)] − KL(q ‖ p(z)) in closed form (eq. `eq-elbo-rec-kl`)."""
        trace = (torch.exp(logvar) * (self.W**2).sum(0)).sum(-1)  # tr(WᵀW diag σ²)
        return self._expected_log_lik(x, mu, trace) - kl_standard_normal(mu, logvar)

    def best_full_q(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The full-covariance Gaussian closest to p(z|x): the posterior itself, as its means (B, d) and Cholesky factors (B, d, d) (chapter 8)."""
        mean, cov = self.posterior(x)
        return mean, torch.linalg.cholesky(cov).expand(len(mean), self.z_dim, self.z_dim)

    def elbo_full(self, x: Tensor, mu: Tensor, scale_tril: Tensor) -> Tensor:
        """The exact ELBO of q = N(μ, LLᵀ) with L of shape (B, d, d) or (d, d), in closed form (chapter 8, eq. `eq-elbo-full`)."""
        self._check_x(x)
        trace = ((self.W @ scale_tril) ** 2).sum((-2, -1))  # tr(WᵀW LLᵀ) = ‖WL‖²_F
        return self._expected_log_lik(x, mu, trace) - kl_normal_full(mu, scale_tril)

    def kl_to_posterior(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(q ‖ p(z|x)) for q = N(μ, diag σ²), in closed form: the gap log p(x) − ELBO (chapter 2)."""
        mean, cov = self.posterior(x)
        precision = self.precision()
        diff = mean - mu
        return 0.5 * (
            (torch.diagonal(precision) * torch.exp(logvar)).sum(-1)
            + ((diff @ precision) * diff).sum(-1)
            - self.z_dim
            + torch.logdet(cov)
            - logvar.sum(-1)
        )

    def chi_square(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """χ²(p(z|x) ‖ q) = E_q[(p(z|x)/q(z))²] − 1 for q = N(μ, diag σ²), in closed form (chapter 7, eq. `eq-chi-square`).

        It is the relative variance of the importance weight p(x, z)/q(z) under q; it is infinite
        (``inf``) when 2Λ − diag(1/σ²) is not positive definite, that is when q's tails are too light.
        """
        mean, _ = self.posterior(x)
        precision = self.precision()
        q_precision = torch.diag_embed(torch.exp(-logvar))  # (B, d, d)
        a = 2 * precision - q_precision
        b = 2 * mean @ precision - mu * torch.exp(-logvar)  # (B, d)
        chol, info = torch.linalg.cholesky_ex(a)
        c = torch.logdet(precision) + 0.5 * logvar.sum(-1) - ((mean @ precision) * mean).sum(-1)
        c = c + 0.5 * (mu**2 * torch.exp(-logvar)).sum(-1)
        quadratic = (b * torch.cholesky_solve(b[..., None], chol)[..., 0]).sum(-1)
        log_second_moment = 0.5 * quadratic + c - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return torch.where(info == 0, torch.expm1(log_second_moment), torch.inf)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw n pairs (x, z) from the joint p(z) p(x|z)."""
        arguments.integer("n", n)
        z = torch.randn(n, self.z_dim, generator=generator, dtype=self.W.dtype)
        noise = torch.randn(n, self.x_dim, generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + math.sqrt(self.var_x) * noise, z


LogLik = Callable[[Tensor, Tensor], Tensor]


class GridModel:
    """Quadrature for a model p(z) p(x|z) with a 1-D or 2-D latent, given any ``log_lik(x, z)`` (chapters 5, 6).

    log p(x), the posterior and its mean, and the ELBO of a Gaussian q (differentiable in μ and
    log σ²) are all computed on one regular grid over [−limit, limit]^d.
    """

    def __init__(self, log_lik: LogLik, z_dim: int = 1, limit: float = 5.0, n_points: int | None = None):
        arguments.function("log_lik", log_lik)
        if isinstance(z_dim, bool) or z_dim not in (1, 2):
            raise ValueError(f"quadrature on a grid is for 1-D or 2-D latents, got z_dim={z_dim!r}")
        arguments.number("limit", limit, positive=True)
        n_points = (801 if z_dim == 1 else 121) if n_points is None else arguments.integer("n_points", n_points, minimum=2)
        self.log_lik, self.z_dim = log_lik, z_dim
        axis = torch.linspace(-limit, limit, n_points)
        self.log_cell = z_dim * math.log(2 * limit / (n_points - 1))
        self.grid = torch.cartesian_prod(*[axis] * z_dim).reshape(-1, z_dim)

    def _evaluate(self, x: Tensor, z: Tensor, chunk_elements: int = 2**22) -> Tensor:
        """log p(x|z) for points z of shape (G, B, d), G split into chunks to bound memory; shape (G, B)."""
        rows = max(1, chunk_elements // max(1, x.shape[0] * x.shape[-1]))
        return torch.cat([self.log_lik(x, chunk) for chunk in z.split(rows)])

    @torch.no_grad()
    def log_joint(self, x: Tensor) -> Tensor:
        """log p(x, z_g) on every grid point z_g: shape (G, B)."""
        arguments.tensor("x", x, 2, "(B, D)")
        grid = self.grid.to(x.dtype)
        z = grid[:, None, :].expand(len(grid), x.shape[0], self.z_dim)
        return self._evaluate(x, z) + log_standard_normal(grid)[:, None]

    def log_px(self, x: Tensor) -> Tensor:
        """log p(x) = log ∫ p(x|z) p(z) dz by quadrature on the grid, per datapoint."""
        return torch.logsumexp(self.log_joint(x), dim=0) + self.log_cell

    def posterior_weights(self, x: Tensor) -> Tensor:
        """p(z_g|x) × cell volume for every grid point: shape (B, G), rows sum to one."""
        return torch.softmax(self.log_joint(x), dim=0).T

    def posterior_mean(self, x: Tensor) -> Tensor:
        """E_{p(z|x)}[z] by quadrature: shape (B, d)."""
        return self.posterior_weights(x) @ self.grid.to(x.dtype)

    def elbo(self, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """The ELBO of q = N(μ, diag σ²) on the grid (see :func:`elbo_on_grid`), per datapoint."""
        return elbo_on_grid(self.log_joint(x) + self.log_cell, self.grid.to(x.dtype), mu, logvar)


def elbo_on_grid(log_joint: Tensor, grid: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The ELBO of q = N(μ, diag σ²) by quadrature on a grid, differentiable in (μ, log σ²), shape (B,) (chapter 5, eq. `eq-elbo-grid`).

    ``log_joint`` (G, B) holds log p(x, z_g) + log(cell volume) for the G points ``grid`` (G, d),
    so that log p(x) = logsumexp_g log_joint. q is discretized on the same grid (q̃_g ∝ q(z_g)),
    and log p(x) − ELBO = KL(q̃ ‖ p̃(z|x)) is then never negative, whatever the grid's spacing.
    """
    if log_joint.ndim != 2 or grid.ndim != 2 or log_joint.shape[0] != grid.shape[0] or mu.shape != (log_joint.shape[1], grid.shape[1]):
        raise ValueError(
            f"need log_joint (G, B), grid (G, d) and mu, logvar (B, d); got log_joint {tuple(log_joint.shape)}, "
            f"grid {tuple(grid.shape)}, mu {tuple(mu.shape)}"
        )
    return elbo_on_grid_log_q(log_joint, log_normal(grid[:, None, :].to(mu.dtype), mu, logvar))


def elbo_on_grid_log_q(log_joint: Tensor, log_q: Tensor) -> Tensor:
    """The ELBO on a grid of any q given by log q(z_g) (up to a constant) at the grid points, both (G, B); shape (B,) (chapter 8).

    q is discretized to q̃_g = q(z_g) / Σ_g' q(z_g'), as in :func:`elbo_on_grid`, so
    log p(x) − ELBO = KL(q̃ ‖ p̃(z|x)) ≥ 0 for a flow's q as for a Gaussian one.
    """
    if log_q.shape != log_joint.shape:
        raise ValueError(f"log_q must have the shape (G, B) of log_joint, {tuple(log_joint.shape)}; got {tuple(log_q.shape)}")
    log_q = torch.log_softmax(log_q, dim=0)
    return (log_q.exp() * (log_joint - log_q)).sum(0)


def bernoulli_log_lik_table(logits: Tensor, x: Tensor) -> Tensor:
    """log p(x_b | z_g) for a Bernoulli decoder with logits (G, D) at G latent points and data x (B, D): shape (G, B) (chapter 9).

    log p(x|z) = Σ_i x_i log σ(l_i) + (1 − x_i) log σ(−l_i) is linear in x, so the whole table is two
    matrix products: the decoder runs once per grid point, not once per (grid point, datapoint) pair.
    """
    arguments.tensor("logits", logits, 2, "(G, D)")
    arguments.tensor("x", x, 2, "(B, D)")
    if logits.shape[-1] != x.shape[-1]:
        raise ValueError(f"logits have {logits.shape[-1]} pixels and x has {x.shape[-1]}: they must match")
    return F.logsigmoid(logits) @ x.T + F.logsigmoid(-logits) @ (1 - x).T
