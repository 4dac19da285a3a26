"""A VAE with two stochastic layers, z₂ → z₁ → x, and its two kinds of inference network (chapter 10).

Generative model: p(z₂) = N(0, I), p_θ(z₁|z₂) = N(μ_θ(z₂), diag σ²_θ(z₂)), p_θ(x|z₁) a decoder of
chapter 4. Inference, either

- ``"bottom-up"``: q(z₁|x) q(z₂|z₁), each an encoder of chapter 4, sampled from the data upwards; or
- ``"top-down"`` (the Ladder VAE, Sønderby et al., 2016): a deterministic pass upwards gives
  q(z₂|x) and a data term (μ̂₁, σ̂₁²) for z₁; z₂ is sampled first and q(z₁|x, z₂) combines the data
  term with the generative model's own p_θ(z₁|z₂) by precision weighting (eq. `eq-precision-weighted`).

The ELBO is E_q[log p(x|z₁)] − KL₁ − KL₂ with one KL term per layer (eq. `eq-elbo-layers`).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from course_code import arguments, objectives
from course_code.distributions import kl_normal, kl_standard_normal, log_normal, log_standard_normal, reparameterize
from course_code.models import BernoulliDecoder, Encoder, GaussianDecoder, _check_input

INFERENCE = ("top-down", "bottom-up")
LIKELIHOODS = ("bernoulli", "gaussian")


def precision_weighted(mu_hat: Tensor, logvar_hat: Tensor, mu_p: Tensor, logvar_p: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, log σ²) of N(μ̂, σ̂²)·N(μ_p, σ_p²) normalized: σ⁻² = σ̂⁻² + σ_p⁻², μ = σ²(μ̂ σ̂⁻² + μ_p σ_p⁻²) (eq. `eq-precision-weighted`)."""
    precision_hat, precision_p = torch.exp(-logvar_hat), torch.exp(-logvar_p)
    logvar = -torch.logaddexp(-logvar_hat, -logvar_p)
    mu = (mu_hat * precision_hat + mu_p * precision_p) * torch.exp(logvar)
    return mu, logvar


class Layers(NamedTuple):
    """One pass of inference: K samples of each layer, shapes (K, B, d₁) and (K, B, d₂), and the Gaussians they came from.

    ``q1``, ``q2`` are (μ, log σ²) of q(z₁|·) and q(z₂|·); ``p1`` of p_θ(z₁|z₂) at the sampled z₂.
    """

    z1: Tensor
    z2: Tensor
    q1: tuple[Tensor, Tensor]
    q2: tuple[Tensor, Tensor]
    p1: tuple[Tensor, Tensor]


class HierarchicalVAE(nn.Module):
    """A two-layer VAE, p(z₂) p_θ(z₁|z₂) p_θ(x|z₁), with bottom-up or top-down (Ladder) inference (chapter 10).

    ``z_dims = (d₁, d₂)`` are the widths of the lower and the upper stochastic layer. Every network
    is an MLP with the hidden widths ``hidden``; with ``hidden=()`` every map is affine, which
    makes the model linear-Gaussian for ``likelihood="gaussian"``.
    """

    def __init__(
        self,
        x_dim: int = 64,
        z_dims: Sequence[int] = (8, 4),
        hidden: Sequence[int] = (128,),
        likelihood: str = "bernoulli",
        inference: str = "top-down",
        decoder_logvar: float | None = None,
    ):
        super().__init__()
        arguments.integer("x_dim", x_dim)
        z_dims = arguments.sizes("z_dims", z_dims)
        if len(z_dims) != 2:
            raise ValueError(f"z_dims holds the widths (d1, d2) of the two stochastic layers, got {z_dims}")
        hidden = arguments.sizes("hidden", hidden)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if inference not in INFERENCE:
            raise ValueError(f"unknown inference {inference!r}; choose one of {INFERENCE}")
        if decoder_logvar is not None and likelihood != "gaussian":
            raise ValueError(f"decoder_logvar fixes a Gaussian decoder's variance; likelihood={likelihood!r} has none")
        self.config = dict(x_dim=x_dim, z_dims=z_dims, hidden=hidden, likelihood=likelihood, inference=inference)
        if decoder_logvar is not None:
            self.config["decoder_logvar"] = float(decoder_logvar)
        self.x_dim, self.z_dims, self.inference = x_dim, z_dims, inference
        d1, d2 = z_dims
        # q(z₁|x) (bottom-up) or the data term (μ̂₁, σ̂₁²) and the shared pass upwards (top-down)
        self.encoder1 = Encoder(x_dim, d1, hidden)
        # q(z₂|z₁) (bottom-up) or q(z₂|x) from encoder1's last hidden layer (top-down)
        below = d1 if inference == "bottom-up" else (hidden[-1] if hidden else x_dim)
        self.encoder2 = Encoder(below, d2, hidden)
        self.prior1 = Encoder(d2, d1, hidden)  # p_θ(z₁|z₂): the same mean and log-variance heads
        if likelihood == "bernoulli":
            self.decoder = BernoulliDecoder(d1, x_dim, hidden)
        else:
            self.decoder = GaussianDecoder(d1, x_dim, hidden, logvar=decoder_logvar)

    def infer(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Layers:
        """K reparameterized draws of (z₁, z₂) from q(z₁, z₂|x), with the Gaussians of both layers.

        The noise of z₁ is drawn before that of z₂ in both orders of inference, so that with an upper
        layer that carries nothing the draws of z₁ are those of a one-layer VAE with the same seed.
        """
        _check_input(x, self.x_dim, self.encoder1.head.weight.dtype)
        k = arguments.integer("n_samples", n_samples)
        d1, d2 = self.z_dims
        eps1 = torch.randn(k, *x.shape[:-1], d1, generator=generator, dtype=x.dtype, device=x.device)
        eps2 = torch.randn(k, *x.shape[:-1], d2, generator=generator, dtype=x.dtype, device=x.device)
        h = self.encoder1.body(x)
        q1 = self.encoder1.head(h).chunk(2, dim=-1)
        if self.inference == "bottom-up":
            z1 = q1[0] + torch.exp(0.5 * q1[1]) * eps1
            q2 = self.encoder2(z1)
            z2 = q2[0] + torch.exp(0.5 * q2[1]) * eps2
            p1 = self.prior1(z2)
        else:
            q2 = self.encoder2(h)
            z2 = q2[0] + torch.exp(0.5 * q2[1]) * eps2
            p1 = self.prior1(z2)
            q1 = precision_weighted(*q1, *p1)
            z1 = q1[0] + torch.exp(0.5 * q1[1]) * eps1
        return Layers(z1, z2, q1, q2, p1)

    def kl_layers(self, layers: Layers, analytic: bool = True) -> Tensor:
        """The KL term of each layer, averaged over the K samples: shape (B, 2), columns KL₁ and KL₂ (eq. `eq-kl-layers`).

        KL₂ = E_q[log q(z₂|·) − log p(z₂)] and KL₁ = E_q[log q(z₁|·) − log p_θ(z₁|z₂)]. With
        ``analytic=True`` a layer's KL is taken in closed form given the samples it is conditioned
        on, where that is exact: both layers top-down, KL₂ only bottom-up (there z₂ is drawn given
        z₁, so KL₁ must be estimated from the samples). Otherwise both are estimated from the samples.
        """
        (mu1, logvar1), (mu2, logvar2), (mu_p1, logvar_p1) = layers.q1, layers.q2, layers.p1
        if analytic:
            kl2 = kl_standard_normal(mu2, logvar2)
        else:
            kl2 = log_normal(layers.z2, mu2, logvar2) - log_standard_normal(layers.z2)
        if analytic and self.inference == "top-down":
            kl1 = kl_normal(mu1, logvar1, mu_p1, logvar_p1)
        else:
            kl1 = log_normal(layers.z1, mu1, logvar1) - log_normal(layers.z1, mu_p1, logvar_p1)
        kl1, kl2 = (kl.expand(layers.z1.shape[:-1]).mean(0) for kl in (kl1, kl2))
        return torch.stack([kl1, kl2], dim=-1)

    def forward(
        self, x: Tensor, n_samples: int = 1, analytic_kl: bool = True, generator: torch.Generator | None = None
    ) -> objectives.ElboTerms:
        """The ELBO of each datapoint, E_q[log p(x|z₁)] − KL₁ − KL₂; ``kl_per_dim`` holds the per-layer KLs, (B, 2)."""
        layers = self.infer(x, n_samples, generator)
        rec = objectives.checked_log_lik(self.decoder.log_likelihood, x, layers.z1).mean(0)
        kl = self.kl_layers(layers, analytic_kl)
        return objectives.ElboTerms(rec - kl.sum(-1), rec, kl.sum(-1), kl)

    elbo = forward

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """−(rec − β Σ_l max(λ, KL_l)) averaged over the batch, λ = ``free_bits`` nats per layer (eq. `eq-free-bits-layers`)."""
        terms = self(x, n_samples)
        loss = objectives.weighted_loss(terms, beta, free_bits)  # its "dimensions" are the layers here
        kl1, kl2 = terms.kl_per_dim.mean(0).tolist()
        stats = {"elbo": terms.elbo.mean().item(), "rec": terms.rec.mean().item(), "kl": terms.kl.mean().item()}
        return loss, {**stats, "kl1": kl1, "kl2": kl2}

    def log_weights(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """log w_k = log p(x|z₁) + log p(z₁|z₂) + log p(z₂) − log q(z₁, z₂|x) for K draws from q, shape (K, B)."""
        layers = self.infer(x, n_samples, generator)
        log_p = log_normal(layers.z1, *layers.p1) + log_standard_normal(layers.z2)
        log_q = log_normal(layers.z1, *layers.q1) + log_normal(layers.z2, *layers.q2)
        return objectives.checked_log_lik(self.decoder.log_likelihood, x, layers.z1) + log_p - log_q

    def log_px(self, x: Tensor, n_samples: int = 1000, chunk_size: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """Importance-sampled estimate of log p_θ(x) with q(z₁, z₂|x) as the proposal (eq. `eq-log-px-is`)."""
        with torch.no_grad():
            return objectives.log_mean_exp_chunked(lambda k: self.log_weights(x, k, generator), n_samples, chunk_size)

    @torch.no_grad()
    def posterior_means(self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """E_q[z₁|x] and E_q[z₂|x], shapes (B, d₁) and (B, d₂): the layer means averaged over the samples they depend on.

        These are the inputs of ``diagnostics.active_units`` for each layer. Averaging the Gaussians'
        means rather than the draws removes most of the Monte Carlo noise (none for a layer whose
        mean does not depend on a sample).
        """
        layers = self.infer(x, n_samples, generator)
        return layers.q1[0].expand_as(layers.z1).mean(0), layers.q2[0].expand_as(layers.z2).mean(0)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` draws z₂ ~ N(0, I), z₁ ~ p_θ(z₁|z₂): pixel means."""
        n = arguments.integer("n", n)
        weight = self.decoder.net[0].weight
        z2 = torch.randn(n, self.z_dims[1], generator=generator, dtype=weight.dtype, device=weight.device)
        mu_p1, logvar_p1 = self.prior1(z2)
        z1 = reparameterize(mu_p1, logvar_p1, generator=generator)
        return self.decoder.mean(z1)


MODELS = {"HierarchicalVAE": HierarchicalVAE}


def linear_marginal(A: Tensor, a: Tensor, var1: Tensor, W: Tensor, b: Tensor, var_x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of x for z₂ ~ N(0, I), z₁|z₂ ~ N(A z₂ + a, diag var1), x|z₁ ~ N(W z₁ + b, diag var_x) (eq. `eq-linear-marginal`).

    Marginalising one layer at a time: z₁ ~ N(a, A Aᵀ + diag var1), then x ~ N(W a + b, W Cov(z₁) Wᵀ + diag var_x).
    """
    cov1 = A @ A.T + torch.diag(var1)
    return W @ a + b, W @ cov1 @ W.T + torch.diag(var_x)


@torch.no_grad()
def linear_parts(model: HierarchicalVAE) -> dict[str, Tensor]:
    """The arguments of :func:`linear_marginal` read off a linear-Gaussian ``model``.

    That is a model built with ``hidden=()`` and ``likelihood="gaussian"`` whose p_θ(z₁|z₂) has a
    variance that does not depend on z₂ (the log-variance rows of ``prior1.head.weight`` are zero).
    """
    if not isinstance(model, HierarchicalVAE):
        raise TypeError(f"model must be a HierarchicalVAE, got {type(model).__name__}")
    d1 = model.z_dims[0]
    head = model.prior1.head
    if model.config["hidden"] or model.config["likelihood"] != "gaussian" or head.weight[d1:].any():
        raise ValueError(
            "model is not linear-Gaussian: build it with hidden=() and likelihood='gaussian', and set "
            "model.prior1.head.weight[d1:] to zero so that the variance of z1 given z2 is constant"
        )
    layer = model.decoder.net[0]
    var_x = torch.exp(model.decoder.logvar.clamp(min=model.decoder.min_logvar))
    return dict(A=head.weight[:d1], a=head.bias[:d1], var1=torch.exp(head.bias[d1:]), W=layer.weight, b=layer.bias, var_x=var_x)
