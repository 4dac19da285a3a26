"""Training: one plain loop over in-memory tensors, KL-weight schedules, and saving/loading (chapter 4).

The whole dataset sits in one tensor; each epoch draws a random permutation and slices
minibatches from it, which on small data is much faster than a ``DataLoader``.
"""

import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from course_code import arguments, hierarchical, models
from course_code.data import check_probabilities
from course_code.distributions import NonFiniteError

Schedule = Callable[[int], float]  # step -> KL weight


def constant(weight: float = 1.0) -> Schedule:
    """A KL weight that never changes (β = ``weight``)."""
    arguments.number("weight", weight, non_negative=True)
    return lambda step: weight


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> Schedule:
    """KL annealing: the weight rises linearly from ``start`` to ``end`` over ``steps`` updates, then stays."""
    arguments.integer("steps", steps)
    arguments.number("start", start, non_negative=True)
    arguments.number("end", end, non_negative=True)
    return lambda step: start + (end - start) * min(step / steps, 1.0)


LR_SCHEDULES = ("constant", "cosine")


def cosine_lr(lr: float, total_steps: int) -> Callable[[int], float]:
    """Cosine decay of the learning rate, lr · (1 + cos(π t / T)) / 2 at step t of T: ``lr`` at the first step, 0 after the last."""
    arguments.number("lr", lr, positive=True)
    arguments.integer("total_steps", total_steps)
    return lambda step: lr * (1 + math.cos(math.pi * min(step / total_steps, 1.0))) / 2


def validation_split(x: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split the rows of ``x`` at random into (training, validation) parts, the second holding ``fraction`` of them.

    Every decision taken while training (early stopping, a switch of mode, the choice of a model)
    is taken on the validation part, so the test data stay untouched until the final numbers.
    """
    n_val = round(fraction * len(x))
    if not 0 < n_val < len(x):
        raise ValueError(f"fraction={fraction} of {len(x)} rows leaves one side empty; choose a fraction in (0, 1)")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[n_val:]], x[order[:n_val]]


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index tensors of a fresh random permutation of ``range(n)``, ``batch_size`` at a time."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def show_progress(progress: bool | None) -> bool:
    """Progress bars are on by default, off when ``COURSE_PROGRESS=0`` (set by the test and execution scripts)."""
    if progress is not None:
        return progress
    return os.environ.get("COURSE_PROGRESS", "1") != "0"


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar (notebook widget in Jupyter) when enabled, else the bare iterable."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr)


def check_finite(loss: Tensor, epoch: int, step: int, lr: float) -> None:
    """Stop training with a useful message as soon as the loss is NaN or infinite."""
    if not torch.isfinite(loss):
        raise _diverged(f"the loss became {loss.item()}", epoch, step, lr)


def _diverged(what: str, epoch: int, step: int, lr: float) -> FloatingPointError:
    return FloatingPointError(
        f"{what} at epoch {epoch}, step {step}. Try a smaller learning rate "
        f"(now {lr:g}), check the data for NaN values and the pixel range, or use logits instead of "
        "probabilities in the likelihood."
    )


def check_training_data(model: nn.Module, x: Tensor, *, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """Clear errors, before the first step, for what a training loop cannot work with (checked once, not every step)."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must be a torch.nn.Module with a loss(x, ...) method, such as models.VAE; got {type(model).__name__}")
    check_data("x", model, x)
    arguments.integer("epochs", epochs)
    arguments.integer("batch_size", batch_size)
    arguments.number("lr", lr, positive=True)
    arguments.integer("seed", seed, minimum=0)


def check_data(name: str, model: nn.Module, x: Tensor) -> None:
    """``x`` must be a non-empty (N, D) tensor in the dtype and width of ``model``.

    NaN values are left to the model, which checks each batch it is given: a pass over the whole
    dataset here would cost seconds at MNIST's size, before every call.
    """
    arguments.tensor(name, x)
    if x.ndim != 2:
        fix = f"for one datapoint use {name}[None]" if x.ndim < 2 else f"flatten each datapoint: {name}.reshape(len({name}), -1)"
        raise ValueError(f"{name} must have shape (N, D), one datapoint per row; got shape {tuple(x.shape)}: {fix}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): at least one datapoint is needed")
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None:
        arguments.matching_dtype(name, x, weight.dtype)
    x_dim = getattr(model, "x_dim", x.shape[1])
    if x.shape[1] != x_dim:
        raise ValueError(f"{name} has {x.shape[1]} features per datapoint (shape {tuple(x.shape)}), the model expects {x_dim}")


def add_stats(sums: dict[str, float], stats: dict[str, float], n: int) -> None:
    """Add a batch's statistics, weighted by its size ``n``, to running sums."""
    for key, value in stats.items():
        sums[key] = sums.get(key, 0.0) + value * n


def epoch_record(
    sums: dict[str, float], n: int, kl_weight: float, start: float, model: nn.Module, x_test: Tensor | None
) -> dict[str, float]:
    """One epoch's line of the history: averaged statistics, KL weight, elapsed time and, given ``x_test``, the test ELBO."""
    record = {key: total / n for key, total in sums.items()}
    record["kl_weight"] = kl_weight
    record["time"] = time.perf_counter() - start
    if x_test is not None:
        record["test_elbo"] = evaluate(model, x_test)["elbo"]
    return record


def fit(
    model: nn.Module,
    x: Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    beta: float | Schedule = 1.0,
    free_bits: float = 0.0,
    n_samples: int = 1,
    x_test: Tensor | None = None,
    dynamic_binarization: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    lr_schedule: str = "constant",
    max_seconds: float | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` on the rows of ``x`` with Adam; return the per-epoch history.

    ``beta`` is a KL weight or a schedule (a function of the update step). With
    ``dynamic_binarization`` each epoch trains on a fresh Bernoulli draw of the grey levels.
    The history holds, per epoch, the batch averages of the model's statistics (for a VAE:
    ``elbo``, ``rec``, ``kl``), the mean ``kl_weight``, the cumulative wall ``time`` in seconds
    and, given ``x_test``, ``test_elbo``; ``on_epoch(epoch, record)`` is called with each epoch's
    line as soon as it is complete. The same seed gives bit-for-bit the same run.

    ``lr_schedule="cosine"`` decays the learning rate at every step from ``lr`` to 0 over all
    ``epochs`` (:func:`cosine_lr`) and records each epoch's last ``lr`` in the history. With
    ``max_seconds`` training stops after the epoch in which that much wall time has passed, and the
    history's ``stopped_after_epoch`` holds that epoch (a cosine schedule then ends above 0: choose
    ``epochs`` from a measured throughput for it to end at 0).
    """
    check_training_data(model, x, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {LR_SCHEDULES}")
    if max_seconds is not None:
        arguments.number("max_seconds", max_seconds, positive=True)
    if x_test is not None:
        check_data("x_test", model, x_test)
    schedule = beta if callable(beta) else constant(arguments.number("beta", beta, non_negative=True))
    arguments.number("free_bits", free_bits, non_negative=True)
    arguments.integer("n_samples", n_samples)
    if dynamic_binarization:
        check_probabilities("x", x)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    x = x.to(device)
    x_test = None if x_test is None else x_test.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    lr_at = cosine_lr(lr, epochs * math.ceil(len(x) / batch_size)) if lr_schedule == "cosine" else None
    history: dict[str, list[float]] = {}
    step, start = 0, time.perf_counter()
    for epoch in progress_bar(range(1, epochs + 1), epochs, type(model).__name__, show_progress(progress)):
        model.train()
        x_epoch = torch.bernoulli(x, generator=generator) if dynamic_binarization else x  # x checked once, above
        sums: dict[str, float] = {}
        weights = 0.0
        for idx in minibatches(len(x), batch_size, generator):
            weight = schedule(step)
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
            try:
                loss, stats = model.loss(x_epoch[idx], beta=weight, free_bits=free_bits, n_samples=n_samples)
            except NonFiniteError as error:  # the network's outputs overflowed before a loss could be formed
                raise _diverged(f"training diverged ({error})", epoch, step, lr) from error
            check_finite(loss, epoch, step, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            add_stats(sums, stats, len(idx))
            weights += weight * len(idx)
            step += 1
        record = epoch_record(sums, len(x), weights / len(x), start, model, x_test)
        if lr_at is not None:
            record["lr"] = optimizer.param_groups[0]["lr"]
        for key, value in record.items():
            history.setdefault(key, []).append(value)
        if on_epoch is not None:
            on_epoch(epoch, record)
        if max_seconds is not None and record["time"] >= max_seconds and epoch < epochs:
            history["stopped_after_epoch"] = [epoch]
            break
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, batch_size: int = 1000) -> dict[str, float]:
    """The model's statistics averaged over ``x`` (for a VAE: ``elbo``, ``rec``, ``kl`` in nats), without gradients."""
    check_data("x", model, x)
    arguments.integer("batch_size", batch_size)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for chunk in x.split(batch_size):
        add_stats(sums, model.loss(chunk)[1], len(chunk))
    model.train(was_training)
    return {key: total / len(x) for key, total in sums.items()}


@torch.no_grad()
def log_px(
    model: nn.Module, x: Tensor, n_samples: int = 1000, seed: int = 0, batch_size: int = 100, progress: bool = False
) -> Tensor:
    """Importance-sampled log p(x) of every row of ``x`` (K = ``n_samples``), ``batch_size`` rows at a time to bound memory."""
    check_data("x", model, x)
    arguments.integer("batch_size", batch_size)
    generator = torch.Generator(device=x.device).manual_seed(arguments.integer("seed", seed, minimum=0))
    chunks = x.split(batch_size)
    values = [model.log_px(chunk, n_samples=n_samples, generator=generator) for chunk in progress_bar(chunks, len(chunks), "log p(x)", progress)]
    return torch.cat(values)


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the model's class, configuration and weights; written to a temporary file, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"class": type(model).__name__, "config": model.config, "state": model.state_dict()}
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as f:  # an ordinary new file: its mode follows the umask, like any other
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (``.name.XXXXXXXX.tmp``), to write to before renaming into place."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save`, in the floating-point type it was saved in."""
    checkpoint = torch.load(Path(path), map_location=device, weights_only=True)
    cls = {**models.MODELS, **hierarchical.MODELS}.get(checkpoint.get("class"))
    if cls is None:
        raise ValueError(f"{path} holds an unknown model class {checkpoint.get('class')!r}")
    model = cls(**checkpoint["config"])
    floating = {t.dtype for t in checkpoint["state"].values() if t.is_floating_point()}
    if len(floating) == 1:
        model.to(floating.pop())
    model.load_state_dict(checkpoint["state"])
    return model.to(device).eval()
