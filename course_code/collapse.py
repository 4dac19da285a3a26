"""Posterior collapse: aggressive inference-network training, and one helper that trains and diagnoses a VAE (chapter 6).

:func:`aggressive_fit` is Algorithm 1 of He et al. (2019): while the aggressive mode is on, the
encoder alone is trained on fresh minibatches until its loss stops improving, then the decoder
takes one step; the mode is switched off for good as soon as the mutual information I_q(x; z),
measured on a validation split after each epoch, stops rising (the test data take no part in any
decision). With ``aggressive=False`` it is the
standard VAE update, step for step the same as :func:`course_code.training.fit`, with the
diagnostics of the latent code recorded after every epoch.

:func:`run` trains one configuration of the remedies table (standard, KL annealing, β, free bits,
aggressive) and returns the diagnostics every run reports; :func:`table` prints mean ± standard
deviation over seeds.
"""

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from course_code import arguments, diagnostics, models, training
from course_code.distributions import log_standard_normal
from course_code.tractable import GridModel, elbo_on_grid

MI_SAMPLES = 20  # draws per datapoint in the mutual-information estimate of the diagnostics
Callback = Callable[[int, nn.Module], None]  # (epoch, model), called before training (epoch 0) and after each epoch


def encoder_steps(
    model: nn.Module,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    batch_size: int = 128,
    max_steps: int = 100,
    window: int = 10,
) -> int:
    """Update only the encoder, each step on a fresh random minibatch, until the loss stops improving (Algorithm 1, lines 5–9).

    The loss is averaged over consecutive windows of ``window`` steps; the loop stops when a window's
    average is no lower than the one before, or after ``max_steps`` steps. Returns the number of steps taken.
    """
    arguments.integer("max_steps", max_steps)
    arguments.integer("window", window)
    model.decoder.requires_grad_(False)  # the decoder is a constant here: no gradients, no updates
    try:
        previous, total = math.inf, 0.0
        for step in range(1, max_steps + 1):
            idx = torch.randperm(len(x), generator=generator)[:batch_size]
            loss, _ = model.loss(x[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            if step % window == 0:
                if total / window >= previous:
                    break
                previous, total = total / window, 0.0
    finally:
        model.decoder.requires_grad_(True)
    return step


@torch.no_grad()
def latent_diagnostics(model: nn.Module, x: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
    """The KL term, mutual information I_q(x; z) and active units of the encoder, all over the same ``x`` (chapter 6).

    The KL is E_x[KL(q(z|x) ‖ p(z))] in closed form; by ELBO surgery it bounds the mutual information
    from above, up to the Monte Carlo noise of the MI estimate (``MI_SAMPLES`` draws per datapoint),
    because both are taken on the same data.
    """
    mu, logvar = model.encode(x)
    return {
        "kl": diagnostics.kl_per_dim(mu, logvar).sum().item(),
        "mi": diagnostics.mutual_information(mu, logvar, generator, n_samples=MI_SAMPLES).item(),
        "au": float(diagnostics.active_units(mu)),
    }


def aggressive_fit(
    model: models.VAE,
    x: Tensor,
    x_val: Tensor,
    *,
    aggressive: bool = True,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    max_inner_steps: int = 100,
    window: int = 10,
    max_aggressive_epochs: int | None = None,
    seed: int = 0,
    track: bool = True,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> dict[str, list[float]]:
    """Train a VAE on the ELBO by He et al.'s Algorithm 1; return the per-epoch history (chapter 6).

    ``x_val`` is a validation split: the switch out of aggressive mode is decided on it, and the
    history holds, measured on it after every epoch, ``val_elbo`` and the latent diagnostics
    ``val_kl``, ``mi`` and ``au`` (all on the same data, so they can be compared; with ``track=False``
    only in the epochs whose MI decides the aggressive mode, so not at all without it), next to the
    averages over the training batches that :func:`course_code.training.fit` records (``elbo``,
    ``rec``, ``kl``, ``kl_weight``, ``time``); ``aggressive`` (1 or 0) says whether the epoch ran in
    aggressive mode and ``inner_steps`` the mean number of encoder steps per decoder step. ``callback(epoch,
    model)`` runs without gradients before training (epoch 0) and after every epoch; it must not
    draw from torch's global random generator. The same seed gives bit-for-bit the same run.
    ``max_aggressive_epochs`` bounds the time in aggressive mode: after that many aggressive epochs
    the mode ends even if the MI is still rising (a time budget; Algorithm 1 itself has none).
    """
    training.check_training_data(model, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    training.check_data("x_val", model, x_val)
    if len(x_val) < 2:
        raise ValueError(f"x_val needs at least two points (for MI and active units), got {len(x_val)}")
    arguments.integer("max_inner_steps", max_inner_steps)
    arguments.integer("window", window)
    if max_aggressive_epochs is not None:
        arguments.integer("max_aggressive_epochs", max_aggressive_epochs)
    if callback is not None:
        arguments.function("callback", callback)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mi_generator = torch.Generator().manual_seed(seed + 1)  # the MI estimate must not disturb training
    encoder_opt = torch.optim.Adam(model.encoder.parameters(), lr=lr)
    decoder_opt = torch.optim.Adam(model.decoder.parameters(), lr=lr)
    if callback is not None:
        with torch.no_grad():
            callback(0, model)
    history: dict[str, list[float]] = {}
    previous_mi, step, start = -math.inf, 0, time.perf_counter()
    name = "aggressive VAE" if aggressive else "VAE"
    for epoch in training.progress_bar(range(1, epochs + 1), epochs, name, training.show_progress(progress)):
        model.train()
        sums: dict[str, float] = {}
        inner = updates = 0
        was_aggressive = aggressive
        for idx in training.minibatches(len(x), batch_size, generator):
            if aggressive:
                inner += encoder_steps(
                    model, x, encoder_opt, generator, batch_size=batch_size, max_steps=max_inner_steps, window=window
                )
            loss, stats = model.loss(x[idx])
            training.check_finite(loss, epoch, step, lr)
            encoder_opt.zero_grad(set_to_none=True)
            decoder_opt.zero_grad(set_to_none=True)
            loss.backward()
            if not aggressive:  # basic VAE training: encoder and decoder step together
                encoder_opt.step()
            decoder_opt.step()
            training.add_stats(sums, stats, len(idx))
            step, updates = step + 1, updates + 1
        record = training.epoch_record(sums, len(x), 1.0, start, model, x_val)
        record["val_elbo"] = record.pop("test_elbo")
        if track or aggressive:  # its own generator: measuring does not change the training run
            latent = latent_diagnostics(model, x_val, mi_generator)
            record["val_kl"], record["mi"], record["au"] = latent["kl"], latent["mi"], latent["au"]
        record["aggressive"] = float(was_aggressive)
        record["inner_steps"] = inner / updates
        if aggressive and record["mi"] < previous_mi:  # MI stopped rising: back to basic training for good
            aggressive = False
        if aggressive and max_aggressive_epochs is not None and epoch >= max_aggressive_epochs:
            aggressive = False
        previous_mi = record.get("mi", previous_mi)
        for key, value in record.items():
            history.setdefault(key, []).append(value)
        if callback is not None:
            with torch.no_grad():
                callback(epoch, model)
    model.eval()
    return history


@torch.no_grad()
def posterior_means(model: models.VAE, x: Tensor, limit: float = 5.0, n_points: int = 201) -> tuple[Tensor, Tensor]:
    """(E_{p_θ(z|x)}[z] by quadrature, μ_φ(x)) for a VAE with a 1-D latent: its points in the posterior-mean space (chapter 6)."""
    if model.z_dim != 1:
        raise ValueError(f"the posterior-mean space needs a 1-D latent, the model has z_dim={model.z_dim}")
    grid = GridModel(model.log_likelihood, z_dim=1, limit=limit, n_points=n_points)
    return grid.posterior_mean(x)[:, 0], model.encode(x)[0][:, 0]


class GridFit(NamedTuple):
    """A decoder and per-datapoint Gaussian q trained together by :func:`fit_on_grid`, and their averaged scores (nats)."""

    decoder: nn.Module
    mu: Tensor
    logvar: Tensor
    elbo: float  # Σ_x w(x) ELBO(x)
    log_px: float  # Σ_x w(x) log p_θ(x)


def fit_on_grid(
    x: Tensor, weights: Tensor, *, hidden: int = 16, steps: int = 500, lr: float = 0.05, seed: int = 0,
    limit: float = 5.0, n_points: int = 201,
) -> GridFit:
    """Train a decoder that uses a 1-D code together with one Gaussian q per datapoint, on the exact grid ELBO (chapter 6).

    The decoder maps z through one tanh layer of ``hidden`` units to independent Bernoulli pixels;
    it and every (μ, log σ²) climb Σ_x w(x) ELBO(x) with Adam, the ELBO taken by quadrature
    (:func:`course_code.tractable.elbo_on_grid`), so no Monte Carlo noise enters. ``weights`` are the
    data probabilities w(x) of the rows of ``x``.
    """
    if x.ndim != 2 or weights.shape != (len(x),):
        raise ValueError(f"x must be (N, D) and weights (N,), got {tuple(x.shape)} and {tuple(weights.shape)}")
    torch.manual_seed(seed)
    decoder = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, x.shape[1])).to(x.dtype)
    grid = torch.linspace(-limit, limit, n_points, dtype=x.dtype)[:, None]  # (G, 1)
    log_prior_cell = log_standard_normal(grid) + math.log(2 * limit / (n_points - 1))  # (G,)

    def log_joint() -> Tensor:  # log p_θ(x, z_g) + log(cell): (G, N), differentiable in θ
        logits = decoder(grid)[:, None, :]  # (G, 1, D)
        return (x * logits - nn.functional.softplus(logits)).sum(-1) + log_prior_cell[:, None]

    mu = torch.zeros(len(x), 1, dtype=x.dtype, requires_grad=True)
    logvar = torch.zeros(len(x), 1, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([*decoder.parameters(), mu, logvar], lr=lr)
    for _ in range(steps):
        loss = -(weights * elbo_on_grid(log_joint(), grid, mu, logvar)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        joint = log_joint()
        elbo = (weights * elbo_on_grid(joint, grid, mu, logvar)).sum().item()
        log_px = (weights * torch.logsumexp(joint, dim=0)).sum().item()
    return GridFit(decoder.requires_grad_(False), mu.detach(), logvar.detach(), elbo, log_px)


@dataclass
class Run:
    """One trained configuration and its diagnostics on the test data (nats; ``time`` in seconds)."""

    model: nn.Module
    history: dict[str, list[float]]
    elbo: float
    nll: float
    kl: float
    mi: float
    au: float
    time: float
    snapshots: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


def run(
    x: Tensor,
    x_val: Tensor,
    x_test: Tensor,
    config: dict,
    *,
    epochs: int,
    beta: float | training.Schedule = 1.0,
    free_bits: float = 0.0,
    aggressive: bool = False,
    seed: int = 0,
    n_samples: int = 500,
    track: bool = True,
    snapshot_x: Tensor | None = None,
    snapshot_epochs: Sequence[int] = (),
    **options,
) -> Run:
    """Build ``models.VAE(**config)`` with ``seed``, train it on ``x``, and return its diagnostics on ``x_test`` (chapter 6).

    The plain ELBO (β = 1, no free bits) is trained by :func:`aggressive_fit`, with or without the
    aggressive mode, which decides on and tracks the validation split ``x_val``; β, KL annealing and
    free bits go through :func:`course_code.training.fit`. Either way the history's ``val_elbo`` is
    the ELBO on ``x_val`` after each epoch; ``x_test`` is used only for the final numbers. The NLL
    is the importance-sampled −log p(x) with K = ``n_samples``. ``track=False`` leaves out the latent
    diagnostics of every epoch (see :func:`aggressive_fit`) when only the final numbers are wanted.
    Given ``snapshot_x``, the points :func:`posterior_means` of those datapoints are recorded before
    training and after each epoch in ``snapshot_epochs`` (plain ELBO only). ``options`` go to the trainer.
    """
    plain_elbo = not callable(beta) and beta == 1.0 and free_bits == 0.0
    if (aggressive or snapshot_x is not None) and not plain_elbo:
        raise ValueError("aggressive training and snapshots use the plain ELBO: leave beta=1 and free_bits=0")
    torch.manual_seed(seed)
    model = models.VAE(**config)
    snapshots: dict[int, tuple[Tensor, Tensor]] = {}

    def snapshot(epoch: int, model: nn.Module) -> None:
        if epoch in snapshot_epochs:
            snapshots[epoch] = posterior_means(model, snapshot_x)

    if plain_elbo:
        callback = snapshot if snapshot_x is not None else None
        history = aggressive_fit(model, x, x_val, aggressive=aggressive, epochs=epochs, seed=seed, track=track,
                                 callback=callback, **options)
    else:
        history = training.fit(model, x, epochs=epochs, beta=beta, free_bits=free_bits, x_test=x_val, seed=seed, **options)
        history["val_elbo"] = history.pop("test_elbo")
    elbo = training.evaluate(model, x_test)["elbo"]
    latent = latent_diagnostics(model, x_test, torch.Generator().manual_seed(seed))
    nll = -model.log_px(x_test, n_samples=n_samples, generator=torch.Generator().manual_seed(seed)).mean().item()
    return Run(model, history, elbo, nll, latent["kl"], latent["mi"], latent["au"], history["time"][-1], snapshots)


COLUMNS = {"nll": "NLL", "kl": "KL", "mi": "MI", "au": "AU", "time": "time (s)"}


def summary(runs: Sequence[Run], key: str) -> tuple[float, float]:
    """Mean and sample standard deviation of one diagnostic over runs (for example over seeds)."""
    values = [getattr(r, key) for r in runs]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, Sequence[Run]], columns: Sequence[str] = ("nll", "kl", "mi", "au")) -> str:
    """A text table in the style of He et al. (2019), Tables 1–2: one row per configuration, mean (std) over runs."""
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}; choose from {list(COLUMNS)}")
    width = max(len(name) for name in results)
    lines = [f"{'':<{width}}" + "".join(f"{COLUMNS[c]:>14}" for c in columns)]
    for name, runs in results.items():
        cells = [f"{m:7.2f} ({s:4.2f})" for m, s in (summary(runs, c) for c in columns)]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>14}" for cell in cells))
    return "\n".join(lines)
