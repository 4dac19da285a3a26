"""The networks of the course: encoders, decoders, the VAE, and the deterministic autoencoder.

Every model exposes ``loss(x, beta, free_bits, n_samples) -> (loss, stats)``, which is all
:func:`course_code.training.fit` needs. Models know nothing about training.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from course_code import arguments, objectives
from course_code.distributions import log_bernoulli, log_normal

LIKELIHOODS = ("bernoulli", "gaussian", "autoregressive")


def mlp(sizes: Sequence[int], final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


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

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256,)):
        super().__init__()
        self.body = mlp([x_dim, *hidden], final_activation=True)
        self.head = nn.Linear(hidden[-1] if hidden else x_dim, 2 * z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=-1)
        return mu, logvar


class BernoulliDecoder(nn.Module):
    """p_θ(x|z) = Π_i Bernoulli(x_i; sigmoid(f_θ(z)_i)), parameterized by logits (chapter 4)."""

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,)):
        super().__init__()
        self.net = mlp([z_dim, *hidden, x_dim])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        return log_bernoulli(x, self(z))

    def mean(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.sigmoid(self(z))


class GaussianDecoder(nn.Module):
    """p_θ(x|z) = N(x; f_θ(z), diag σ²) with σ² learned per pixel or fixed (``logvar`` a float) (chapter 4)."""

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,), logvar: float | None = None, min_logvar: float = -6.0):
        super().__init__()
        self.net = mlp([z_dim, *hidden, x_dim])
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


class AutoregressiveDecoder(nn.Module):
    """p_θ(x|z) = Π_i Bernoulli(x_i; sigmoid(f_θ(x_<i, z)_i)): a masked MLP over pixels, conditioned on z (chapter 6).

    Each pixel sees only the pixels before it (in raster order) and z, so the decoder can model
    the digits well even when it ignores z entirely: the setting of posterior collapse.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = (256,)):
        super().__init__()
        if not hidden:
            raise ValueError("decoder_hidden must hold at least one width: the autoregressive decoder needs a hidden layer")
        degrees = [torch.arange(1, x_dim + 1)]
        degrees += [torch.arange(h) % max(x_dim - 1, 1) + 1 for h in hidden]
        self.layers = nn.ModuleList(
            MaskedLinear(len(d_in), len(d_out), d_out[:, None] >= d_in[None, :])
            for d_in, d_out in zip(degrees[:-1], degrees[1:])
        )
        self.out = MaskedLinear(hidden[-1], x_dim, degrees[0][:, None] > degrees[-1][None, :])
        self.z_in = nn.Linear(z_dim, hidden[0])
        self.z_out = nn.Linear(z_dim, x_dim)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """Logits of every pixel given the pixels before it and z; ``x`` broadcasts against ``z``'s sample axis."""
        h = torch.relu(self.layers[0](x) + self.z_in(z))  # x's part once per datapoint, not once per sample of z
        for layer in self.layers[1:]:
            h = torch.relu(layer(h))
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


class VAE(nn.Module):
    """A variational autoencoder: encoder q_φ(z|x), prior N(0, I), decoder p_θ(x|z) (chapters 3–6).

    ``likelihood`` is ``"bernoulli"`` (binary or grey pixels in [0, 1]), ``"gaussian"`` (learned
    per-pixel variance, or the fixed log-variance ``decoder_logvar`` of every pixel) or
    ``"autoregressive"`` (a masked Bernoulli decoder that can ignore z).
    """

    def __init__(
        self,
        x_dim: int = 64,
        z_dim: int = 2,
        hidden: Sequence[int] = (256,),
        likelihood: str = "bernoulli",
        decoder_hidden: Sequence[int] | None = None,
        decoder_logvar: float | None = None,
    ):
        super().__init__()
        _check_sizes(x_dim=x_dim, z_dim=z_dim)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        hidden = arguments.sizes("hidden", hidden)
        decoder_hidden = hidden if decoder_hidden is None else arguments.sizes("decoder_hidden", decoder_hidden)
        if decoder_logvar is not None and likelihood != "gaussian":
            raise ValueError(f"decoder_logvar fixes a Gaussian decoder's variance; likelihood={likelihood!r} has none")
        self.config = dict(x_dim=x_dim, z_dim=z_dim, hidden=hidden, likelihood=likelihood, decoder_hidden=decoder_hidden)
        if decoder_logvar is not None:
            self.config["decoder_logvar"] = float(decoder_logvar)
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = Encoder(x_dim, z_dim, hidden)
        decoder_class = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder, "autoregressive": AutoregressiveDecoder}
        if decoder_logvar is None:
            self.decoder = decoder_class[likelihood](z_dim, x_dim, decoder_hidden)
        else:
            self.decoder = GaussianDecoder(z_dim, x_dim, decoder_hidden, logvar=decoder_logvar)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q_φ(z|x)."""
        _check_input(x, self.x_dim, self.encoder.head.weight.dtype)
        return self.encoder(x)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x|z), shape ``z.shape[:-1]``."""
        return self.decoder.log_likelihood(x, z)

    def forward(self, x: Tensor, n_samples: int = 1, analytic_kl: bool = True) -> objectives.ElboTerms:
        """The ELBO of each datapoint and its parts (eq. `eq-elbo-rec-kl`)."""
        mu, logvar = self.encode(x)
        return objectives.elbo(self.log_likelihood, x, mu, logvar, n_samples, analytic_kl)

    elbo = forward

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """Training loss −(rec − β·KL) averaged over the batch, and the batch means of ELBO, rec and KL."""
        terms = self(x, n_samples)
        loss = objectives.weighted_loss(terms, beta, free_bits)
        return loss, {"elbo": terms.elbo.mean().item(), "rec": terms.rec.mean().item(), "kl": terms.kl.mean().item()}

    def log_px(self, x: Tensor, n_samples: int = 1000, chunk_size: int = 500, generator: torch.Generator | None = None) -> Tensor:
        """Importance-sampled estimate of log p_θ(x) with K = ``n_samples`` (eq. `eq-log-px-is`)."""
        with torch.no_grad():
            mu, logvar = self.encode(x)
        return objectives.log_px_estimate(self.log_likelihood, x, mu, logvar, n_samples, chunk_size, generator)

    @torch.no_grad()
    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The image the decoder gives for z: pixel means (a pixel-by-pixel sample for the autoregressive decoder)."""
        return self.decoder.mean(z, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode ``n`` draws z ~ p(z) = N(0, I)."""
        weight = self.encoder.head.weight
        z = torch.randn(arguments.integer("n", n), self.z_dim, generator=generator, dtype=weight.dtype, device=weight.device)
        return self.decode(z, generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Decode the posterior mean μ_φ(x)."""
        return self.decode(self.encode(x)[0], generator)


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
