"""Priors p(z) for the VAE: the standard normal, a learnable mixture of Gaussians, the VampPrior (chapter 9).

Each prior is a module with ``log_prob(z)`` (summed over the last axis, shape ``z.shape[:-1]``) and
``sample(n, generator)`` (shape ``(n, d)``), and a ``config`` dict of the keyword arguments that
rebuild it, so it plugs into ``models.VAE(prior=...)`` and is saved and loaded with the model.
"""

import math

import torch
from torch import Tensor, nn

from course_code import arguments
from course_code.distributions import log_mixture_normal, log_standard_normal


def _sample_mixture(n: int, mu: Tensor, logvar: Tensor, log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """``n`` draws from Σ_k π_k N(μ_k, diag σ_k²): a component k ~ π, then z = μ_k + σ_k ⊙ ε."""
    n = arguments.integer("n", n)
    k = torch.multinomial(log_weights.softmax(-1), n, replacement=True, generator=generator)
    eps = torch.randn(n, mu.shape[-1], generator=generator, dtype=mu.dtype, device=mu.device)
    return mu[k] + torch.exp(0.5 * logvar[k]) * eps


class StandardNormal(nn.Module):
    """p(z) = N(0, I): the prior of chapters 1–8, as a pluggable part (the baseline of chapter 9)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.config = {"z_dim": arguments.integer("z_dim", z_dim)}
        self.register_buffer("mean", torch.zeros(z_dim), persistent=False)  # follows the model's dtype and device

    def log_prob(self, z: Tensor) -> Tensor:
        return log_standard_normal(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        n = arguments.integer("n", n)
        return torch.randn(n, len(self.mean), generator=generator, dtype=self.mean.dtype, device=self.mean.device)


class MixturePrior(nn.Module):
    """p_ψ(z) = Σ_k π_k N(z; μ_k, diag σ_k²) with learned weights, means and variances (eq. `eq-mixture-prior`).

    The means start as draws from N(0, I) (from torch's global generator, like every layer's weights)
    and the variances at 1, so the initial prior is a spread-out mixture of unit Gaussians.
    """

    def __init__(self, z_dim: int, n_components: int = 10):
        super().__init__()
        self.config = {"z_dim": arguments.integer("z_dim", z_dim), "n_components": arguments.integer("n_components", n_components)}
        self.mu = nn.Parameter(torch.randn(n_components, z_dim))
        self.logvar = nn.Parameter(torch.zeros(n_components, z_dim))
        self.logits = nn.Parameter(torch.zeros(n_components))

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """(μ, log σ², log π) of the K components, shapes (K, d), (K, d), (K,)."""
        return self.mu, self.logvar, self.logits.log_softmax(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        return log_mixture_normal(z, *self.components())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _sample_mixture(n, *self.components(), generator)


class VampPrior(nn.Module):
    """p(z) = (1/K) Σ_k q_φ(z | u_k): the encoder's posteriors at K learned pseudo-inputs u_k (Tomczak & Welling, 2018).

    The prior owns the pseudo-inputs only; it reaches the encoder through :meth:`attach`, which the
    VAE calls once. The encoder stays a submodule of the VAE alone (it is not registered twice), so
    the prior's gradient reaches both the pseudo-inputs and the encoder's weights. The pseudo-inputs
    start as uniform draws in [0, 1], the range of the pixels, and are not held there during training
    (Tomczak & Welling clip theirs with a hard tanh; here they are free parameters).
    """

    def __init__(self, x_dim: int, n_components: int = 10):
        super().__init__()
        self.config = {"x_dim": arguments.integer("x_dim", x_dim), "n_components": arguments.integer("n_components", n_components)}
        self.pseudo_inputs = nn.Parameter(torch.rand(n_components, x_dim))
        self._encoder: list[nn.Module] = []  # a list hides the encoder from nn.Module's registry of submodules

    def attach(self, vae: nn.Module) -> None:
        """Use ``vae.encoder`` for the components; called by ``models.VAE`` when the prior is plugged in."""
        x_dim = getattr(vae, "x_dim", None)
        if x_dim != self.config["x_dim"]:
            raise ValueError(f"the VampPrior's pseudo-inputs have x_dim={self.config['x_dim']} features but the VAE takes {x_dim}: "
                             "build VampPrior(x_dim=vae.x_dim, ...)")
        self._encoder[:] = [vae.encoder]

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """(μ, log σ², log π) of the K components: the encoder at the pseudo-inputs, equal weights 1/K."""
        if not self._encoder:
            raise RuntimeError("the VampPrior has no encoder yet: plug it into a VAE, models.VAE(prior=VampPrior(...))")
        mu, logvar = self._encoder[0](self.pseudo_inputs)
        k = len(self.pseudo_inputs)
        return mu, logvar, torch.full((k,), -math.log(k), dtype=mu.dtype, device=mu.device)

    def log_prob(self, z: Tensor) -> Tensor:
        return log_mixture_normal(z, *self.components())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return _sample_mixture(n, *self.components(), generator)
