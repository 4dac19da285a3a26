"""The networks of the course: encoders, decoders, the VAE, and the deterministic autoencoder.

Every model exposes ``loss(x, beta, free_bits, n_samples) -> (loss, stats)``, which is all
:func:`course_code.training.fit` needs. Models know nothing about training.
"""

import importlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from course_code import arguments, objectives
from course_code.distributions import log_bernoulli, log_normal, log_standard_normal, reparameterize

LIKELIHOODS = ("bernoulli", "gaussian", "autoregressive")
ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


def mlp(sizes: Sequence[int], final_activation: bool = False, activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` (a name in ``ACTIVATIONS``) between them (and after the last if asked)."""
    make = activation_class(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(make())
    return nn.Sequential(*layers)


def activation_class(activation: str) -> type[nn.Module]:
    """The ``nn`` module class named by ``activation``, or a clear error naming the choices."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def _check_sizes(**sizes: int) -> None:
    for name, size in sizes.items():
        arguments.integer(name, size)


def _check_input(x: Tensor, x_dim: int, dtype: torch.dtype) -> None:
    arguments.tensor("x", x)
    arguments.matching_dtype("x", x, dtype)
    if x.ndim == 0:
        raise ValueError(f"x must be a batch of shape (B, {x_dim}), got a tensor with no dimensions")
    if x.shape[-1] != x_dim:
        raise ValueError(f"x has {x.shape[-1]} features per datapoint (shape {tuple(x.shape)}), the model expects {x_dim}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")


class Encoder(nn.Module):
    """Amortized q_φ(z|x) = N(μ_φ(x), diag σ²_φ(x)): an MLP with a mean head and a log-variance head (chapter 4)."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,), activation: str = "relu"):
        super().__init__()
        self.body = mlp([x_dim, *hidden], final_activation=True, activation=activation)
        self.head = nn.Linear(hidden[-1] if hidden else x_dim, 2 * z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class BernoulliDecoder(nn.Module):
    """p_θ(x|z) = Π_i Bernoulli(x_i; sigmoid(f_θ(z)_i)), parameterized by logits (chapter 4)."""

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,), activation: str = "relu"):
        super().__init__()
        self.net = mlp([z_dim, *hidden, x_dim], activation=activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        return log_bernoulli(x, self(z))

    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self(z))


class GaussianDecoder(nn.Module):
    """p_θ(x|z) = N(x; f_θ(z), diag σ²) with σ² learned per pixel or fixed (``logvar`` a float) (chapter 4)."""

    def __init__(
        self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,), logvar: float | None = None, min_logvar: float = -6.0,
        activation: str = "relu",
    ):
        super().__init__()
        self.net = mlp([z_dim, *hidden, x_dim], activation=activation)
        self.min_logvar = min_logvar
        if logvar is None:
            self.logvar = nn.Parameter(torch.zeros(x_dim))
        else:
            self.register_buffer("logvar", torch.full((x_dim,), float(logvar)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        return log_normal(x, self(z), self.logvar.clamp(min=self.min_logvar))

    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self(z)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al., 2015)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(n: int, hidden: Sequence[int]) -> list[Tensor]:
    """The 0/1 masks of a MADE over ``n`` ordered inputs (Germain et al., 2015): output i depends only on inputs 1, …, i − 1.

    Inputs get degrees 1, …, n, hidden units degrees cycling through 1, …, n − 1; a hidden unit sees
    the units of degree ≤ its own, an output of degree i those of degree < i. One mask per layer,
    shapes (hidden[0], n), …, (n, hidden[-1]): the autoregressive decoder (chapter 6) and the IAF (chapter 8).
    """
    degrees = [torch.arange(1, n + 1)] + [torch.arange(h) % max(n - 1, 1) + 1 for h in hidden]
    masks = [d_out[:, None] >= d_in[None, :] for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    return [*masks, degrees[0][:, None] > degrees[-1][None, :]]


class AutoregressiveDecoder(nn.Module):
    """p_θ(x|z) = Π_i Bernoulli(x_i; sigmoid(f_θ(x_<i, z)_i)): a masked MLP over pixels, conditioned on z (chapter 6).

    Each pixel sees only the pixels before it (in raster order) and z, so the decoder can model
    the digits well even when it ignores z entirely: the setting of posterior collapse.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,), activation: str = "relu"):
        super().__init__()
        self.activation = activation_class(activation)()
        if not hidden:
            raise ValueError("decoder_hidden must hold at least one width: the autoregressive decoder needs a hidden layer")
        *masks, out_mask = made_masks(x_dim, hidden)
        self.layers = nn.ModuleList(MaskedLinear(mask.shape[1], mask.shape[0], mask) for mask in masks)
        self.out = MaskedLinear(hidden[-1], x_dim, out_mask)
        self.z_in = nn.Linear(z_dim, hidden[0])
        self.z_out = nn.Linear(z_dim, x_dim)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Logits of every pixel given the pixels before it and z; ``x`` broadcasts against ``z``'s sample axis."""
        h = self.activation(self.layers[0](x) + self.z_in(z))  # x's part once per datapoint, not once per sample of z
        for layer in self.layers[1:]:
            h = self.activation(layer(h))
        return self.out(h) + self.z_out(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        return log_bernoulli(x, self(x, z))

    @torch.no_grad()
    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A sample drawn pixel by pixel (the mean image of this decoder has no closed form)."""
        x = torch.zeros(*z.shape[:-1], self.out.out_features, dtype=z.dtype, device=z.device)
        for i in range(x.shape[-1]):
            x[..., i] = torch.bernoulli(torch.sigmoid(self(x, z)[..., i]), generator=generator)
        return x


OBJECTIVES = ("elbo", "iwae")


def component_spec(name: str, component: nn.Module | dict | None) -> dict | None:
    """How a VAE's pluggable part (``prior`` or ``flow``) is written into its configuration.

    A part is an ``nn.Module`` of a ``course_code`` module whose ``config`` dict holds the keyword
    arguments that rebuild it; it is stored as ``{"class": "course_code.<module>.<Class>", "config": ...}``.
    """
    if component is None or isinstance(component, dict):
        return component
    cls = type(component)
    if not isinstance(component, nn.Module) or not cls.__module__.startswith("course_code."):
        raise TypeError(f"{name} must be None or a course_code module (nn.Module), got {cls.__name__}")
    config = getattr(component, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{name} ({cls.__name__}) needs a `config` dict of the keyword arguments that rebuild it")
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config}


def build_component(name: str, spec: nn.Module | dict | None) -> nn.Module | None:
    """The part a :func:`component_spec` describes (a module passed in is returned as it is)."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    path = spec.get("class", "") if isinstance(spec, dict) else ""
    module_name, _, class_name = path.rpartition(".")
    if not module_name.startswith("course_code."):
        raise ValueError(f"{name} names {path!r}; only classes of course_code modules can be rebuilt")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None:
        raise ValueError(f"{name} names {path!r}, which {module_name} does not define")
    return cls(**spec.get("config", {}))


class VAE(nn.Module):
    """A variational autoencoder: encoder q_φ(z|x), prior p(z), decoder p_θ(x|z) (chapters 3–10).

    ``likelihood`` is ``"bernoulli"`` (binary or grey pixels in [0, 1]), ``"gaussian"`` (learned
    per-pixel variance, or the fixed log-variance ``decoder_logvar`` of every pixel) or
    ``"autoregressive"`` (a masked Bernoulli decoder that can ignore z).

    Two parts are pluggable. ``prior`` (default N(0, I)) is a module with ``log_prob(z)`` (summed
    over the last axis) and ``sample(n, generator)``; if it has ``attach(vae)`` it is called once,
    so a prior built from the encoder (the VampPrior) can reach it. ``flow`` (default none) turns
    the encoder's Gaussian sample z₀ into z: ``flow(z0, h) -> (z, log_det)``, where ``h`` is the
    encoder's last hidden layer and ``log_det`` = log |det ∂z/∂z₀|, so log q(z|x) = log N(z₀) − log_det.
    With either part the KL term is estimated from the samples. ``objective`` is what
    :meth:`loss` maximises: the ELBO, or the importance-weighted bound with ``n_samples`` samples.
    ``activation`` (a name in ``ACTIVATIONS``, default ``"relu"``) is the nonlinearity of every hidden layer.
    """

    def __init__(
        self,
        x_dim: int = 64,
        z_dim: int = 2,
        hidden: Sequence[int] = (256,),
        likelihood: str = "bernoulli",
        decoder_hidden: Sequence[int] | None = None,
        decoder_logvar: float | None = None,
        prior: nn.Module | dict | None = None,
        flow: nn.Module | dict | None = None,
        objective: str = "elbo",
        activation: str = "relu",
    ):
        super().__init__()
        _check_sizes(x_dim=x_dim, z_dim=z_dim)
        activation_class(activation)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        hidden = arguments.sizes("hidden", hidden)
        decoder_hidden = hidden if decoder_hidden is None else arguments.sizes("decoder_hidden", decoder_hidden)
        if decoder_logvar is not None and likelihood != "gaussian":
            raise ValueError(f"decoder_logvar fixes a Gaussian decoder's variance; likelihood={likelihood!r} has none")
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=hidden, likelihood=likelihood, decoder_hidden=decoder_hidden)
        if decoder_logvar is not None:
            self.config["decoder_logvar"] = float(decoder_logvar)
        for name, part in (("prior", prior), ("flow", flow)):
            if part is not None:
                self.config[name] = component_spec(name, part)
        if objective != "elbo":
            self.config["objective"] = objective
        if activation != "relu":  # only then, so models saved before the option load unchanged
            self.config["activation"] = activation
        self.x_dim, self.z_dim, self.objective = x_dim, z_dim, objective
        self.encoder = Encoder(x_dim, z_dim, hidden, activation)
        decoder_class = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder, "autoregressive": AutoregressiveDecoder}
        if decoder_logvar is None:
            self.decoder = decoder_class[likelihood](z_dim, x_dim, decoder_hidden, activation=activation)
        else:
            self.decoder = GaussianDecoder(z_dim, x_dim, decoder_hidden, logvar=decoder_logvar, activation=activation)
        self.prior = build_component("prior", prior)
        self.flow = build_component("flow", flow)
        if self.prior is not None and hasattr(self.prior, "attach"):
            self.prior.attach(self)

    @property
    def standard(self) -> bool:
        """Whether q is the encoder's diagonal Gaussian and p(z) = N(0, I) (the KL then has a closed form)."""
        return self.prior is None and self.flow is None

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q_φ(z|x) (with a flow: of the Gaussian z₀ the flow starts from)."""
        _check_input(x, self.x_dim, self.encoder.head.weight.dtype)
        return self.encoder(x)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x|z), shape ``z.shape[:-1]``."""
        return self.decoder.log_likelihood(x, z)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z), summed over the latent dimensions, shape ``z.shape[:-1]``."""
        return log_standard_normal(z) if self.prior is None else self.prior.log_prob(z)

    def posterior_sample(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """K reparameterized draws z ~ q_φ(z|x), shape ``(K, B, d)``, and log q_φ(z|x) of each, shape ``(K, B)``."""
        _check_input(x, self.x_dim, self.encoder.head.weight.dtype)
        h = self.encoder.body(x)
        mu, logvar = self.encoder.head(h).chunk(2, dim=-1)
        z = reparameterize(mu, logvar, arguments.integer("n_samples", n_samples), generator)
        log_q = log_normal(z, mu, logvar)
        if self.flow is not None:
            z, log_det = self.flow(z, h.expand(z.shape[0], *h.shape))
            log_q = log_q - log_det
        return z, log_q

    def log_weights(self, x: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x) for K draws z_k ~ q(z|x), shape ``(K, B)``."""
        z, log_q = self.posterior_sample(x, n_samples, generator)
        return objectives.checked_log_lik(self.log_likelihood, x, z) + self.log_prior(z) - log_q

    def forward(self, x: Tensor, n_samples: int = 1, analytic_kl: bool = True) -> objectives.ElboTerms:
        """The ELBO of each datapoint and its parts (eq. `eq-elbo-rec-kl`).

        The KL is in closed form for the standard model (unless ``analytic_kl=False``); with a prior
        or a flow it is E_q[log q(z|x) − log p(z)], estimated from the same K samples.
        """
        if self.standard:
            mu, logvar = self.encode(x)
            return objectives.elbo(self.log_likelihood, x, mu, logvar, n_samples, analytic_kl)
        z, log_q = self.posterior_sample(x, n_samples)
        rec = objectives.checked_log_lik(self.log_likelihood, x, z).mean(0)
        kl = (log_q - self.log_prior(z)).mean(0)
        return objectives.ElboTerms(rec - kl, rec, kl, None)

    elbo = forward

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """Training loss and the batch means of its statistics.

        For ``objective="elbo"``: −(rec − β·KL) averaged over the batch, with stats ELBO, rec and KL.
        For ``objective="iwae"``: −log (1/K) Σ_k w_k with K = ``n_samples`` (eq. `eq-iwae`), averaged over
        the batch, with stats the bound and the ELBO estimated from the same K samples (the mean of
        log w_k); β and free bits do not apply to it and must stay at 1 and 0.
        """
        if self.objective == "iwae":
            if beta != 1.0 or free_bits != 0.0:
                raise ValueError(f"the IWAE objective has no KL weight or free bits; got beta={beta}, free_bits={free_bits}")
            log_w = self.log_weights(x, n_samples)
            bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
            return -bound.mean(), {"iwae": bound.mean().item(), "elbo": log_w.mean().item()}
        terms = self(x, n_samples)
        loss = objectives.weighted_loss(terms, beta, free_bits)
        return loss, {"elbo": terms.elbo.mean().item(), "rec": terms.rec.mean().item(), "kl": terms.kl.mean().item()}

    def log_px(self, x: Tensor, n_samples: int = 1000, chunk_size: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """Importance-sampled estimate of log p_θ(x) with K = ``n_samples`` (eq. `eq-log-px-is`)."""
        with torch.no_grad():
            if self.standard:
                mu, logvar = self.encode(x)
                return objectives.log_px_estimate(self.log_likelihood, x, mu, logvar, n_samples, chunk_size, generator)
            return objectives.log_mean_exp_chunked(lambda k: self.log_weights(x, k, generator), n_samples, chunk_size)

    @torch.no_grad()
    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The image the decoder gives for z: pixel means (a pixel-by-pixel sample for the autoregressive decoder)."""
        return self.decoder.mean(z, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` draws z ~ p(z)."""
        n = arguments.integer("n", n)
        if self.prior is not None:
            return self.decode(self.prior.sample(n, generator), generator)
        weight = self.encoder.head.weight
        z = torch.randn(n, self.z_dim, generator=generator, dtype=weight.dtype, device=weight.device)
        return self.decode(z, generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Decode the posterior mean μ_φ(x) (with a flow: the flow applied to μ_φ(x))."""
        if self.flow is None:
            return self.decode(self.encode(x)[0], generator)
        _check_input(x, self.x_dim, self.encoder.head.weight.dtype)
        h = self.encoder.body(x)
        mu = self.encoder.head(h).chunk(2, dim=-1)[0]
        return self.decode(self.flow(mu[None], h[None])[0][0], generator)


class Autoencoder(nn.Module):
    """A deterministic autoencoder trained on squared error: the starting point of chapter 1."""

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden: Sequence[int] = (256,)):
        super().__init__()
        _check_sizes(x_dim=x_dim, z_dim=z_dim)
        hidden = arguments.sizes("hidden", hidden)
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=hidden)
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = mlp([x_dim, *hidden, z_dim])
        self.decoder = mlp([z_dim, *hidden[::-1], x_dim])

    def encode(self, x: Tensor) -> Tensor:
        _check_input(x, self.x_dim, self.encoder[0].weight.dtype)
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """Squared reconstruction error Σ_i (x_i − x̂_i)², averaged over the batch (eq. `eq-ae-mse`)."""
        sq_error = ((self(x) - x) ** 2).sum(-1).mean()
        return sq_error, {"sq_error": sq_error.item()}


MODELS = {cls.__name__: cls for cls in (VAE, Autoencoder)}
