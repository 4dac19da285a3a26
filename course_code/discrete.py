"""Discrete latent variables: Gumbel sampling, gradient estimators for a categorical latent, the VQ-VAE (chapter 13).

A categorical q(z) = Cat(softmax(θ)) over K categories is written as one-hot vectors e_k. The
estimators of ∇_θ E_q[f(z)] take a function ``f`` of points of the simplex, shape ``(n, K)`` to
``(n,)``, and return one gradient per draw, so that bias and variance can be measured against
the exact gradient, which a sum over the K categories gives (:func:`exact_expectation`).
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from course_code import arguments
from course_code.distributions import log_bernoulli
from course_code.models import mlp

ESTIMATORS = ("score", "gumbel_softmax", "straight_through")


def _check_logits(logits: Tensor, ndim: int | None = None) -> Tensor:
    arguments.tensor("logits", logits, ndim, "(K,)" if ndim == 1 else "")
    if logits.ndim == 0 or logits.shape[-1] < 2:
        raise ValueError(f"logits must hold at least 2 categories on its last axis, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise ValueError("logits must be finite floating-point numbers (use a large negative value, not -inf, for a rare category)")
    return logits


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Standard Gumbel draws g = −log(−log u), u ~ Uniform(0, 1) (eq. `eq-gumbel-max`)."""
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp(min=torch.finfo(dtype).tiny)
    return -torch.log(-torch.log(u))


def gumbel_max(logits: Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """``n_samples`` exact draws of the category k ~ softmax(logits): argmax_k (θ_k + g_k) (eq. `eq-gumbel-max`), shape ``(n, *logits.shape[:-1])``."""
    _check_logits(logits)
    g = gumbel_noise((arguments.integer("n_samples", n_samples), *logits.shape), generator, logits.dtype)
    return (logits + g).argmax(-1)


def gumbel_softmax(
    logits: Tensor, temperature: float, n_samples: int = 1, generator: torch.Generator | None = None, hard: bool = False
) -> Tensor:
    """Concrete / Gumbel-softmax draws softmax((θ + g)/τ) on the simplex (eq. `eq-gumbel-softmax`), shape ``(n, *logits.shape)``.

    With ``hard=True`` the value is the one-hot vector of the argmax and the gradient that of the soft draw
    (the straight-through Gumbel-softmax estimator, eq. `eq-straight-through`).
    """
    _check_logits(logits)
    temperature = arguments.number("temperature", temperature, positive=True)
    g = gumbel_noise((arguments.integer("n_samples", n_samples), *logits.shape), generator, logits.dtype)
    soft = torch.softmax((logits + g) / temperature, dim=-1)
    if not hard:
        return soft
    return straight_through(soft, F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype))


def straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """The value of ``quantized`` with the gradient of the identity in ``x``: x + sg[quantized − x] (eq. `eq-straight-through`)."""
    arguments.tensor("x", x)
    arguments.tensor("quantized", quantized)
    if x.shape != quantized.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but quantized has shape {tuple(quantized.shape)}; they must match")
    return x + (quantized - x).detach()


def one_hots(k: int, dtype: torch.dtype | None = None) -> Tensor:
    """The K one-hot vectors e_1, …, e_K, one per row: the points a categorical latent takes."""
    return torch.eye(arguments.integer("k", k, minimum=2), dtype=dtype or torch.get_default_dtype())


def exact_expectation(f, logits: Tensor) -> Tensor:
    """E_{Cat(softmax θ)}[f(z)] = Σ_k p_k f(e_k), by enumeration (eq. `eq-categorical-expectation`); autograd gives its exact gradient."""
    _check_logits(logits, 1)
    arguments.function("f", f)
    return (torch.softmax(logits, -1) * f(one_hots(len(logits), logits.dtype))).sum()


def exact_gradient(f, logits: Tensor) -> Tensor:
    """∇_θ E[f(z)] = p ⊙ (f(e) − Σ_k p_k f(e_k)) in closed form (eq. `eq-categorical-gradient`), shape ``(K,)``."""
    _check_logits(logits, 1)
    arguments.function("f", f)
    with torch.no_grad():
        p, values = torch.softmax(logits, -1), f(one_hots(len(logits), logits.dtype))
        return p * (values - (p * values).sum())


def score_function_variance(f, logits: Tensor, baseline: float = 0.0) -> Tensor:
    """Per-coordinate variance of the score-function estimate (f(z) − b)(z − p), by enumeration over z, shape ``(K,)``."""
    _check_logits(logits, 1)
    arguments.function("f", f)
    with torch.no_grad():
        p = torch.softmax(logits, -1)
        e = one_hots(len(logits), logits.dtype)
        estimates = (f(e) - baseline)[:, None] * (e - p)  # row k: the estimate when z = e_k
        mean = (p[:, None] * estimates).sum(0)
        return (p[:, None] * estimates**2).sum(0) - mean**2


def gradient_estimates(
    f,
    logits: Tensor,
    estimator: str,
    n_samples: int,
    temperature: float = 1.0,
    baseline: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n_samples`` independent estimates of ∇_θ E_{Cat(softmax θ)}[f(z)], one per row, shape ``(n, K)`` (chapter 13).

    ``"score"``: (f(z) − b) ∇_θ log p(z) with z ~ Cat, f never differentiated (eq. `eq-categorical-score`).
    ``"gumbel_softmax"``: ∇_θ f(y) through y = softmax((θ + g)/τ) (eq. `eq-gumbel-softmax`).
    ``"straight_through"``: f at the one-hot argmax, differentiated as if it were at y (eq. `eq-straight-through`).
    Each row has its own copy of θ, so one backward pass gives every draw's gradient.
    """
    _check_logits(logits, 1)
    arguments.function("f", f)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    n = arguments.integer("n_samples", n_samples)
    baseline = arguments.number("baseline", baseline)
    theta = logits.detach().expand(n, len(logits)).clone().requires_grad_(True)
    with torch.enable_grad():
        if estimator == "score":
            k = gumbel_max(logits.detach(), n, generator)
            z = F.one_hot(k, len(logits)).to(theta.dtype)
            with torch.no_grad():
                weight = f(z) - baseline
            surrogate = (weight * torch.log_softmax(theta, -1).gather(1, k[:, None])[:, 0]).sum()
        else:
            g = gumbel_noise((n, len(logits)), generator, theta.dtype)
            y = torch.softmax((theta + g) / arguments.number("temperature", temperature, positive=True), dim=-1)
            if estimator == "straight_through":
                y = straight_through(y, F.one_hot(y.argmax(-1), len(logits)).to(y.dtype))
            surrogate = f(y).sum()
        (grad,) = torch.autograd.grad(surrogate, theta)
    return grad


def bias_and_variance(samples: Tensor, exact: Tensor) -> dict[str, float]:
    """Bias ‖mean − exact‖, total variance Σ_j Var_j, and the Monte Carlo error of the bias √(Σ_j Var_j / n), of gradient ``samples`` (n, K)."""
    arguments.tensor("samples", samples, 2, "(n, K)")
    if samples.shape[1:] != exact.shape:
        raise ValueError(f"samples has shape {tuple(samples.shape)} but exact has shape {tuple(exact.shape)}; want (n, K) and (K,)")
    variance = samples.var(0).sum().item()
    return {"bias": (samples.mean(0) - exact).norm().item(), "variance": variance, "noise": math.sqrt(variance / len(samples))}


# --- Vector quantization (VQ-VAE, van den Oord et al., 2017) ---


def quantize(z_e: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook vector of every z_e (…, D) in squared Euclidean distance (eq. `eq-vq-nearest`): (indices (…), z_q (…, D))."""
    arguments.tensor("z_e", z_e)
    arguments.tensor("codebook", codebook, 2, "(K, D)")
    if z_e.ndim == 0 or z_e.shape[-1] != codebook.shape[1]:
        raise ValueError(f"z_e's last axis ({tuple(z_e.shape)}) must have the codebook's width D = {codebook.shape[1]}")
    flat = z_e.reshape(-1, codebook.shape[1])
    distances = (flat**2).sum(-1, keepdim=True) - 2 * flat @ codebook.T + (codebook**2).sum(-1)
    indices = distances.argmin(-1).reshape(z_e.shape[:-1])
    return indices, codebook[indices]


def vq_losses(z_e: Tensor, z_q: Tensor) -> tuple[Tensor, Tensor]:
    """Codebook loss ‖sg[z_e] − z_q‖² and commitment loss ‖z_e − sg[z_q]‖², summed over every axis but the first (eq. `eq-vq-loss`)."""
    arguments.tensor("z_e", z_e)
    arguments.tensor("z_q", z_q)
    if z_e.shape != z_q.shape or z_e.ndim < 2:
        raise ValueError(f"z_e {tuple(z_e.shape)} and z_q {tuple(z_q.shape)} must have the same shape (B, …, D)")
    dims = tuple(range(1, z_e.ndim))
    return ((z_e.detach() - z_q) ** 2).sum(dims), ((z_e - z_q.detach()) ** 2).sum(dims)


def code_usage(indices: Tensor, n_codes: int) -> Tensor:
    """How often each of the ``n_codes`` codebook vectors is chosen in ``indices``: counts, shape ``(K,)``."""
    arguments.tensor("indices", indices)
    return torch.bincount(indices.reshape(-1), minlength=arguments.integer("n_codes", n_codes))


def perplexity(counts: Tensor) -> Tensor:
    """exp of the entropy of the usage frequencies: the number of equally used codes that would give the same entropy."""
    arguments.tensor("counts", counts, 1, "(K,)")
    p = counts / counts.sum()
    return torch.exp(-torch.xlogy(p, p).sum())


@torch.no_grad()
def restart_dead_codes(model: "VQVAE", x: Tensor, generator: torch.Generator | None = None) -> int:
    """Move every codebook vector that no row of ``x`` chooses onto an encoder output z_e of a random row; return how many moved."""
    z_e = model.encode(x).reshape(-1, model.code_dim)
    dead = (code_usage(quantize(z_e, model.codebook)[0], model.n_codes) == 0).nonzero()[:, 0]
    model.codebook[dead] = z_e[torch.randint(len(z_e), (len(dead),), generator=generator)]
    return len(dead)


class VQVAE(nn.Module):
    """A VQ-VAE on flat images: an MLP encoder to ``n_latents`` vectors of width ``code_dim``, each replaced by its
    nearest of ``n_codes`` codebook vectors, and a Bernoulli MLP decoder (van den Oord et al., 2017; eq. `eq-vq-loss`).

    The codebook starts uniform in [−1/K, 1/K] (torch's global generator, like the layers' weights).
    """

    def __init__(self, x_dim: int = 64, n_latents: int = 4, code_dim: int = 2, n_codes: int = 16,
                 hidden: tuple[int, ...] = (128,), commitment: float = 0.25):
        super().__init__()
        for name, value in (("x_dim", x_dim), ("n_latents", n_latents), ("code_dim", code_dim)):
            arguments.integer(name, value)
        arguments.integer("n_codes", n_codes, minimum=2)
        hidden = arguments.sizes("hidden", hidden)
        commitment = arguments.number("commitment", commitment, non_negative=True)
        self.config = dict(x_dim=x_dim, n_latents=n_latents, code_dim=code_dim, n_codes=n_codes, hidden=hidden,
                           commitment=commitment)
        self.x_dim, self.n_latents, self.code_dim, self.n_codes, self.commitment = x_dim, n_latents, code_dim, n_codes, commitment
        self.encoder = mlp([x_dim, *hidden, n_latents * code_dim])
        self.decoder = mlp([n_latents * code_dim, *hidden[::-1], x_dim])
        self.codebook = nn.Parameter(torch.empty(n_codes, code_dim).uniform_(-1 / n_codes, 1 / n_codes))

    def encode(self, x: Tensor) -> Tensor:
        """The encoder's continuous outputs z_e(x), shape ``(B, n_latents, code_dim)``."""
        arguments.tensor("x", x, 2, "(B, D)")
        arguments.matching_dtype("x", x, self.codebook.dtype)
        if x.shape[1] != self.x_dim:
            raise ValueError(f"x has {x.shape[1]} features per datapoint, the model expects {self.x_dim}")
        return self.encoder(x).reshape(len(x), self.n_latents, self.code_dim)

    def codes(self, x: Tensor) -> Tensor:
        """The code of every datapoint: the index of the nearest codebook vector at each position, shape ``(B, n_latents)``."""
        with torch.no_grad():
            return quantize(self.encode(x), self.codebook)[0]

    def decoder_logits(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q.reshape(len(z_q), -1))

    def loss(self, x: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """−log p(x | z_q) + ‖sg[z_e] − z_q‖² + commitment·‖z_e − sg[z_q]‖², batch mean (eq. `eq-vq-loss`).

        The decoder sees z_q; the gradient reaches the encoder by the straight-through copy. q is
        deterministic, so ``beta``, ``free_bits`` and ``n_samples`` (the VAE's options) must stay at 1, 0 and 1.
        """
        if beta != 1.0 or free_bits != 0.0 or n_samples != 1:
            raise ValueError(f"the VQ-VAE has no KL weight, free bits or samples; got beta={beta}, free_bits={free_bits}, "
                             f"n_samples={n_samples}")
        z_e = self.encode(x)
        z_q = quantize(z_e, self.codebook)[1]
        rec = log_bernoulli(x, self.decoder_logits(straight_through(z_e, z_q)))
        codebook_loss, commitment_loss = vq_losses(z_e, z_q)
        loss = (-rec + codebook_loss + self.commitment * commitment_loss).mean()
        return loss, {"rec": rec.mean().item(), "codebook": codebook_loss.mean().item(), "commitment": commitment_loss.mean().item()}

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Pixel means for codes of shape ``(B, n_latents)``."""
        arguments.tensor("codes", codes, 2, "(B, n_latents)")
        return torch.sigmoid(self.decoder_logits(self.codebook[codes]))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        """log p(x | z_q(x)) of every datapoint, shape ``(B,)``."""
        return log_bernoulli(x, self.decoder_logits(quantize(self.encode(x), self.codebook)[1]))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_codes(self.codes(x))


class CodePrior(nn.Module):
    """A prior over codes c = (c_1, …, c_m) fitted after training by counting (eq. `eq-code-prior`).

    ``order=0``: independent positions, p(c) = Π_j p_j(c_j); ``order=1``: a Markov chain over positions,
    p(c) = p_1(c_1) Π_j p_j(c_j | c_{j−1}). Counts get ``smoothing`` added before normalizing.
    """

    def __init__(self, n_latents: int, n_codes: int, order: int = 1, smoothing: float = 0.5):
        super().__init__()
        if order not in (0, 1):
            raise ValueError(f"order must be 0 (independent positions) or 1 (a Markov chain), got {order!r}")
        self.config = dict(n_latents=arguments.integer("n_latents", n_latents), n_codes=arguments.integer("n_codes", n_codes, 2),
                           order=order, smoothing=arguments.number("smoothing", smoothing, positive=True))
        self.n_latents, self.n_codes, self.order, self.smoothing = n_latents, n_codes, order, smoothing
        self.register_buffer("log_first", torch.full((n_codes,), -math.log(n_codes)))
        self.register_buffer("log_next", torch.full((max(n_latents - 1, 0), n_codes, n_codes), -math.log(n_codes)))

    def _check_codes(self, codes: Tensor) -> Tensor:
        arguments.tensor("codes", codes, 2, "(N, n_latents)")
        if codes.shape[1] != self.n_latents or codes.dtype != torch.long:
            raise ValueError(f"codes must be integer indices of shape (N, {self.n_latents}), got {codes.dtype} {tuple(codes.shape)}")
        if len(codes) and (codes.min() < 0 or codes.max() >= self.n_codes):
            raise ValueError(f"codes must lie in 0, …, {self.n_codes - 1}")
        return codes

    @torch.no_grad()
    def fit(self, codes: Tensor) -> "CodePrior":
        """Set the tables to the smoothed frequencies of the training ``codes`` (N, m); returns the prior."""
        self._check_codes(codes)
        k, a = self.n_codes, self.smoothing
        dtype = self.log_first.dtype
        if self.order == 0:
            counts = torch.stack([torch.bincount(c, minlength=k) for c in codes.T]).to(dtype) + a  # (m, K)
            table = counts.log() - counts.sum(-1, keepdim=True).log()
            self.log_first.copy_(table[0])
            self.log_next.copy_(table[1:, None, :].expand_as(self.log_next))  # the same row whatever came before
            return self
        first = torch.bincount(codes[:, 0], minlength=k).to(dtype) + a
        self.log_first.copy_(first.log() - first.sum().log())
        for j in range(self.n_latents - 1):
            pairs = torch.bincount(codes[:, j] * k + codes[:, j + 1], minlength=k * k).reshape(k, k).to(dtype) + a
            self.log_next[j].copy_(pairs.log() - pairs.sum(-1, keepdim=True).log())
        return self

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p(c) of every row of ``codes``, shape ``(N,)``."""
        self._check_codes(codes)
        total = self.log_first[codes[:, 0]]
        for j in range(self.n_latents - 1):
            total = total + self.log_next[j, codes[:, j], codes[:, j + 1]]
        return total

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` codes drawn position by position, shape ``(n, n_latents)``."""
        n = arguments.integer("n", n)
        codes = [torch.multinomial(self.log_first.exp(), n, replacement=True, generator=generator)]
        for j in range(self.n_latents - 1):
            codes.append(torch.multinomial(self.log_next[j, codes[-1]].exp(), 1, generator=generator)[:, 0])
        return torch.stack(codes, 1)
