"""Posterior collapse: aggressive inference-network training, and one helper that trains and diagnoses a VAE (chapter 6).

:func:`aggressive_fit` is Algorithm 1 of He et al. (2019): while the aggressive mode is on, the
encoder alone is trained on fresh minibatches until its loss stops improving, then the decoder
takes one step; the mode is switched off for good as soon as the mutual information I_q(x; z),
measured on held-out data after each epoch, stops rising. With ``aggressive=False`` it is the
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

import torch
from torch import Tensor, nn

from course_code import arguments, diagnostics, models, training
from course_code.tractable import GridModel

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
    """Mutual information I_q(x; z) and the number of active units of the encoder over ``x`` (chapter 6)."""
    mu, logvar = model.encode(x)
    return {
        "mi": diagnostics.mutual_information(mu, logvar, generator).item(),
        "au": float(diagnostics.active_units(mu)),
    }


def aggressive_fit(
    model: models.VAE,
    x: Tensor,
    x_test: Tensor,
    *,
    aggressive: bool = True,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    max_inner_steps: int = 100,
    window: int = 10,
    seed: int = 0,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> dict[str, list[float]]:
    """Train a VAE on the ELBO by He et al.'s Algorithm 1; return the per-epoch history (chapter 6).

    The history holds what :func:`course_code.training.fit` records (``elbo``, ``rec``, ``kl``,
    ``kl_weight``, ``time``, ``test_elbo``) and, measured on ``x_test``, the mutual information
    ``mi`` and active units ``au``; ``aggressive`` (1 or 0) says whether the epoch ran in aggressive
    mode and ``inner_steps`` the mean number of encoder steps per decoder step. ``callback(epoch,
    model)`` runs without gradients before training (epoch 0) and after every epoch; it must not
    draw from torch's global random generator. The same seed gives bit-for-bit the same run.
    """
    training.check_training_data(model, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    training.check_data("x_test", model, x_test)
    if len(x_test) < 2:
        raise ValueError(f"x_test needs at least two points (for MI and active units), got {len(x_test)}")
    arguments.integer("max_inner_steps", max_inner_steps)
    arguments.integer("window", window)
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
        record = training.epoch_record(sums, len(x), 1.0, start, model, x_test)
        latent = latent_diagnostics(model, x_test, mi_generator)
        record["mi"], record["au"] = latent["mi"], latent["au"]
        record["aggressive"] = float(was_aggressive)
        record["inner_steps"] = inner / updates
        if aggressive and record["mi"] < previous_mi:  # MI stopped rising: back to basic training for good
            aggressive = False
        previous_mi = record["mi"]
        for key, value in record.items():
            history.setdefault(key, []).append(value)
        if callback is not None:
            with torch.no_grad():
                callback(epoch, model)
    model.eval()
    return history


@torch.no_grad()
def posterior_means(model: models.VAE, x: Tensor, limit: float = 5.0, n_points: int = 401) -> tuple[Tensor, Tensor]:
    """(E_{p_θ(z|x)}[z] by quadrature, μ_φ(x)) for a VAE with a 1-D latent: its points in the posterior-mean space (chapter 6)."""
    if model.z_dim != 1:
        raise ValueError(f"the posterior-mean space needs a 1-D latent, the model has z_dim={model.z_dim}")
    grid = GridModel(model.log_likelihood, z_dim=1, limit=limit, n_points=n_points)
    return grid.posterior_mean(x)[:, 0], model.encode(x)[0][:, 0]


@dataclass
class Run:
    """One trained configuration and its diagnostics on the held-out data (nats; ``time`` in seconds)."""

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
    x_test: Tensor,
    config: dict,
    *,
    epochs: int,
    beta: float | training.Schedule = 1.0,
    free_bits: float = 0.0,
    aggressive: bool = False,
    seed: int = 0,
    n_samples: int = 500,
    snapshot_x: Tensor | None = None,
    snapshot_epochs: Sequence[int] = (),
    **options,
) -> Run:
    """Build ``models.VAE(**config)`` with ``seed``, train it, and return its diagnostics on ``x_test`` (chapter 6).

    The plain ELBO (β = 1, no free bits) is trained by :func:`aggressive_fit`, with or without the
    aggressive mode, which also tracks MI and active units; β, KL annealing and free bits go through
    :func:`course_code.training.fit`. The NLL is the importance-sampled −log p(x) with K = ``n_samples``.
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
        history = aggressive_fit(model, x, x_test, aggressive=aggressive, epochs=epochs, seed=seed, callback=callback, **options)
    else:
        history = training.fit(model, x, epochs=epochs, beta=beta, free_bits=free_bits, x_test=x_test, seed=seed, **options)
    stats = training.evaluate(model, x_test)
    latent = latent_diagnostics(model, x_test, torch.Generator().manual_seed(seed))
    nll = -model.log_px(x_test, n_samples=n_samples, generator=torch.Generator().manual_seed(seed)).mean().item()
    return Run(model, history, stats["elbo"], nll, stats["kl"], latent["mi"], latent["au"], history["time"][-1], snapshots)


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
    lines = [f"{'':<{width}}" + "".join(f"{COLUMNS[c]:>16}" for c in columns)]
    for name, runs in results.items():
        cells = [f"{m:7.2f} ({s:4.2f})" for m, s in (summary(runs, c) for c in columns)]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>16}" for cell in cells))
    return "\n".join(lines)
