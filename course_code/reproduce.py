"""The course at full scale: named experiments on real MNIST, each recorded with its provenance.

    python -m course_code.reproduce seed002            # one experiment, its full budget
    python -m course_code.reproduce all --smoke        # every experiment, at a budget of seconds
    python -m course_code.reproduce --list

Each run writes ``results/NAME.json`` and ``results/NAME.png`` (``--out`` elsewhere; a smoke run
writes to ``_build/reproduce-smoke`` unless told otherwise), each under a temporary name renamed
into place. The JSON holds the numbers and how they were made: the exact command, seed, git
commit (and whether the tree had uncommitted changes), package versions, CPU model, thread
count, wall time, the load average before and after, and a hash of the source the experiment
depends on (:func:`source_hash`), so that a record older than the code can be recognised.
MNIST is read from ``--mnist DIR`` or ``$COURSE_MNIST`` (the four original ``.gz`` files).

Adding an experiment takes one function in this module::

    @experiment("name", "One line saying what it measures",
                full=dict(epochs=50, n_test=10_000), smoke=dict(epochs=1, n_test=100, n_train=2_000),
                reference={"log_px": -86.76, "source": "Burda et al. (2016), table 1"})
    def name(budget: dict, seed: int, mnist: Path | None) -> tuple[dict, Figure]:
        ...  # train with training.fit, score with score_on_test; return the numbers and a figure

The numbers must be JSON values (floats, lists, dicts). The smoke budget must finish within a
minute on real MNIST: ``tests/test_reproduce.py`` runs every registered experiment at it.
"""

import argparse
import ast
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import course_code
from course_code import data, models, training

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
RESULTS = ROOT / "results"
SMOKE_OUT = ROOT / "_build" / "reproduce-smoke"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Experiment:
    """A named experiment: ``run(budget, seed, mnist)`` returns its numbers and a figure."""

    name: str
    title: str
    run: Callable
    full: dict
    smoke: dict
    reference: dict  # the numbers it reproduces, and where they were published


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(name: str, title: str, *, full: dict, smoke: dict, reference: dict):
    """Register the decorated function as the experiment ``name`` with its full and smoke budgets."""

    def register(run: Callable) -> Callable:
        if name in EXPERIMENTS or name == "all":
            raise ValueError(f"an experiment named {name!r} is already registered; choose another name")
        EXPERIMENTS[name] = Experiment(name, title, run, dict(full), dict(smoke), dict(reference))
        return run

    return register


# ---- what an experiment's numbers depend on ----------------------------------------------------


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _imported_modules(path: Path) -> set[str]:
    """The ``course_code`` modules a source file imports (``from course_code import x``, ``course_code.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "course_code":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_code."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("course_code.")}
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()}


def dependencies(entry: Experiment) -> list[str]:
    """The sources an experiment's numbers depend on: its own function and the helpers of this module it
    calls (by name), and every ``course_code`` module they use, with the modules those import in turn."""
    functions: dict[str, Callable] = {}
    modules: set[str] = set()
    constants: set[str] = set()
    todo = [entry.run]
    while todo:
        function = todo.pop()
        if function.__qualname__ in functions:
            continue
        functions[function.__qualname__] = function
        for code in _code_objects(function.__code__):
            for name in code.co_names:
                value = function.__globals__.get(name)
                if isinstance(value, types.FunctionType) and value.__module__ == __name__:
                    todo.append(value)
                elif name.isupper() and isinstance(value, (list, tuple, dict, str, int, float)):
                    constants.add(name)
                elif isinstance(value, types.ModuleType) and value.__name__.startswith("course_code."):
                    modules.add(value.__name__.split(".")[1])
                elif value is None and name != "reproduce" and (PACKAGE / f"{name}.py").is_file():
                    modules.add(name)  # imported inside the function: from course_code import name
    pending = list(modules)
    while pending:
        for name in _imported_modules(PACKAGE / f"{pending.pop()}.py") - modules:
            modules.add(name)
            pending.append(name)
    names = functions.keys() | constants
    return sorted(f"course_code/{name}.py" for name in modules) + sorted(f"course_code/reproduce.py:{name}" for name in names)


def source_hash(entry: Experiment) -> str:
    """SHA-256 of the sources :func:`dependencies` lists (functions with their decorators, so budgets included;
    constants by their value)."""
    digest = hashlib.sha256()
    for label in dependencies(entry):
        path, _, name = label.partition(":")
        if not name:
            text = (ROOT / path).read_text()
        else:
            value = globals()[name]
            text = inspect.getsource(value) if callable(value) else repr(value)
        digest.update(f"{label}\0{text}\0".encode())
    return digest.hexdigest()


# ---- provenance and the record ------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The processor's name as the operating system reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(argv: list[str], seed: int, smoke: bool) -> dict:
    """Everything about the run except its numbers and timing: command, seed, commit, versions, CPU, threads."""
    import numpy as np

    status = _git("status", "--porcelain", "--", ".", ":(exclude)results")
    return {
        "command": shlex.join(["python", "-m", "course_code.reproduce", *argv]),
        "seed": seed,
        "budget": "smoke" if smoke else "full",
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "course_code": course_code.__version__,
        },
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
    }


# Every record holds these fields, of these types (tests/test_reproduce.py checks the committed ones).
SCHEMA = {
    "schema": int,
    "name": str,
    "title": str,
    "command": str,
    "seed": int,
    "budget": str,
    "budget_settings": dict,
    "git_commit": (str, type(None)),
    "git_dirty": (bool, type(None)),
    "versions": dict,
    "cpu": str,
    "cpu_count": int,
    "threads": int,
    "dtype": str,
    "started": str,
    "wall_time_s": float,
    "load_average_start": list,
    "load_average_end": list,
    "source_hash": str,
    "sources": list,
    "reference": dict,
    "results": dict,
    "figure": str,
}


def check_record(record: dict) -> dict:
    """Raise ValueError naming the first field of ``record`` that is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise ValueError(f"a result record must be a JSON object, got {type(record).__name__}")
    for key, kind in SCHEMA.items():
        if key not in record:
            raise ValueError(f"the record has no {key!r} field; re-run python -m course_code.reproduce {record.get('name', 'NAME')}")
        if isinstance(record[key], bool) and kind in (int, float):
            raise ValueError(f"field {key!r} must be {kind.__name__}, got a bool")
        if not isinstance(record[key], kind):
            raise ValueError(f"field {key!r} has type {type(record[key]).__name__}, expected {kind}")
    if record["budget"] not in ("full", "smoke"):
        raise ValueError(f"field 'budget' must be 'full' or 'smoke', got {record['budget']!r}")
    if not {"torch", "numpy", "course_code"} <= record["versions"].keys():
        raise ValueError("field 'versions' must name torch, numpy and course_code")
    for key in ("load_average_start", "load_average_end"):
        if len(record[key]) != 3 or not all(isinstance(v, (int, float)) for v in record[key]):
            raise ValueError(f"field {key!r} must hold the three load averages (1, 5, 15 minutes)")
    if record["wall_time_s"] <= 0 or record["threads"] < 1:
        raise ValueError("wall_time_s and threads must be positive")
    return record


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to a temporary file beside ``path``, then rename it into place."""
    tmp = training.temporary_name(path)
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_experiment(entry: Experiment, *, smoke: bool, seed: int, out: Path, argv: list[str], mnist: Path | None) -> dict:
    """Run one experiment at its full (or smoke) budget and write its figure and record into ``out``."""
    from course_code import plots

    budget = entry.smoke if smoke else entry.full
    record = {"schema": SCHEMA_VERSION, "name": entry.name, "title": entry.title}
    record |= provenance(argv, seed, smoke)
    record["budget_settings"] = budget
    record["source_hash"] = source_hash(entry)  # the code as it was when the run began
    record["sources"] = dependencies(entry)
    record["started"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["load_average_start"] = list(os.getloadavg())
    start = time.perf_counter()
    results, fig = entry.run(budget, seed, mnist)
    record["wall_time_s"] = round(time.perf_counter() - start, 1)
    record["load_average_end"] = list(os.getloadavg())
    record["reference"] = entry.reference
    record["results"] = results
    record["figure"] = f"{entry.name}.png"
    check_record(record)
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(out / record["figure"], plots.png(fig))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    write_atomic(out / f"{entry.name}.json", (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())
    return record


def read_results(folder: Path = RESULTS) -> dict[str, dict]:
    """Every recorded result in ``folder``, by experiment name, each checked against :data:`SCHEMA`."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(
            f"no results folder at {folder}: the recorded results live in the course's repository (results/); "
            "read them from a clone of it, or make them with python -m course_code.reproduce all"
        )
    return {path.stem: check_record(json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))}


def stale(records: dict[str, dict]) -> list[str]:
    """The names of recorded results whose source hash differs from the code now here (or whose experiment is gone)."""
    return [name for name, record in records.items() if name not in EXPERIMENTS or record["source_hash"] != source_hash(EXPERIMENTS[name])]


# ---- what the experiments share ------------------------------------------------------------------


def load_mnist(mnist: Path | None, binarize: str | None, seed: int) -> data.Dataset:
    """Real MNIST from ``mnist`` or ``$COURSE_MNIST`` (never downloaded here: a result must say which files it read)."""
    return data.load("mnist", binarize=binarize, mnist=mnist, seed=seed)


def train_vae(x: torch.Tensor, z_dim: int, hidden: list[int], *, epochs: int, lr: float, dynamic: bool, seed: int):
    """A fresh ``models.VAE`` (Bernoulli decoder) trained by ``training.fit`` with batch 128; returns (model, history)."""
    torch.manual_seed(seed)
    model = models.VAE(x.shape[1], z_dim, hidden)
    history = training.fit(model, x, epochs=epochs, batch_size=128, lr=lr, dynamic_binarization=dynamic, seed=seed, progress=False)
    return model, history


def score_on_test(model: models.VAE, x_test: torch.Tensor, n_test: int, n_samples: int, seed: int) -> dict:
    """Test ELBO over all of ``x_test``; importance-sampled log p(x) over its first ``n_test`` rows, with its standard error."""
    torch.manual_seed(seed)
    elbo = training.evaluate(model, x_test)["elbo"]
    start = time.perf_counter()
    log_px = training.log_px(model, x_test[:n_test], n_samples=n_samples, seed=seed)
    seconds = time.perf_counter() - start
    return {
        "test_elbo": round(elbo, 3),
        "log_px": round(log_px.mean().item(), 3),
        "log_px_se": round(log_px.std().item() / math.sqrt(len(log_px)), 3),
        "n_test": len(log_px),
        "iw_samples": n_samples,
        "log_px_images_per_s": round(len(log_px) / seconds, 1),
    }


def subset(x: torch.Tensor, n: int | None) -> torch.Tensor:
    return x if n is None else x[:n]


# ---- the experiments -----------------------------------------------------------------------------

SEED_002_LOSSES = [147.484892, 122.673746, 119.444152, 118.063614, 117.056634]  # the seed's printed averages


@experiment(
    "seed002",
    "Seed 002's recipe on real MNIST: 784-200-10, Bernoulli decoder, Adam (0.01), batch 128, 5 epochs",
    full=dict(n_train=None, epochs=5, n_test=1_000, iw_samples=1_000),
    smoke=dict(n_train=3_000, epochs=1, n_test=100, iw_samples=100),
    reference={"epoch_loss": SEED_002_LOSSES, "source": "seed 002 (PyTorch tutorial, grey-level MNIST, average loss per epoch)"},
)
def seed002(budget: dict, seed: int, mnist: Path | None):
    """The seed's run on grey levels (per-epoch average loss), then the same model on binarized digits (log p(x))."""
    grey = load_mnist(mnist, None, seed)
    model, grey_history = train_vae(subset(grey.x_train, budget["n_train"]), 10, [200], epochs=budget["epochs"], lr=0.01, dynamic=False, seed=seed)
    grey_test_elbo = training.evaluate(model, grey.x_test)["elbo"]
    binary = load_mnist(mnist, "dynamic", seed)
    model, binary_history = train_vae(subset(binary.x_train, budget["n_train"]), 10, [200], epochs=budget["epochs"], lr=0.01, dynamic=True, seed=seed)
    scores = score_on_test(model, binary.x_test, budget["n_test"], budget["iw_samples"], seed)
    results = {
        "grey_epoch_loss": [round(-e, 3) for e in grey_history["elbo"]],
        "grey_epoch_time_s": [round(t, 1) for t in grey_history["time"]],
        "grey_test_loss": round(-grey_test_elbo, 3),
        "binary_epoch_loss": [round(-e, 3) for e in binary_history["elbo"]],
        "binary_epoch_time_s": [round(t, 1) for t in binary_history["time"]],
        "binary": scores,
    }
    return results, seed002_figure(results)


def seed002_figure(results: dict):
    """The seed's per-epoch losses against the course's, grey and binarized (drawn from a record's results)."""
    import matplotlib.pyplot as plt  # colours C0, C2, C7 are plots.COLORS' ELBO, log p(x) and data

    fig, ax = plt.subplots()
    epochs = range(1, len(results["grey_epoch_loss"]) + 1)
    ax.plot(range(1, 6), SEED_002_LOSSES, "o--", color="C7", label="seed 002 (grey)")
    ax.plot(epochs, results["grey_epoch_loss"], "o-", color="C0", label="course (grey)")
    ax.plot(epochs, results["binary_epoch_loss"], "s-", color="C2", label="course (binarized)")
    ax.set(xlabel="epoch", ylabel="training loss (nats)", title="Seed 002's recipe on MNIST")
    ax.legend()
    return fig


@experiment(
    "latent",
    "Latent size: ELBO and log p(x) of 784-200-z VAEs for z = 2, 5, 10, 20, 50 at one budget",
    full=dict(latents=[2, 5, 10, 20, 50], hidden=200, n_train=None, epochs=3, lr=1e-3, n_test=500, iw_samples=1_000),
    smoke=dict(latents=[2, 5, 10, 20, 50], hidden=100, n_train=2_000, epochs=1, lr=1e-3, n_test=50, iw_samples=50),
    reference={
        "claim": "more latent dimensions than needed do not make the bound worse: the KL term switches the spare ones off",
        "source": "Kingma & Welling (2014), figure 2 (MNIST, latent sizes 3 to 200)",
    },
)
def latent(budget: dict, seed: int, mnist: Path | None):
    """One VAE per latent size, same data, epochs and optimizer; test ELBO and log p(x) of each."""
    binary = load_mnist(mnist, "dynamic", seed)
    x_train = subset(binary.x_train, budget["n_train"])
    rows = []
    for z_dim in budget["latents"]:
        model, history = train_vae(x_train, z_dim, [budget["hidden"]], epochs=budget["epochs"], lr=budget["lr"], dynamic=True, seed=seed)
        scores = score_on_test(model, binary.x_test, budget["n_test"], budget["iw_samples"], seed)
        rows.append({"z_dim": z_dim, "train_elbo": round(history["elbo"][-1], 3), "train_time_s": round(history["time"][-1], 1), **scores})
    return {"by_latent": rows}, latent_figure(rows, budget["epochs"])


def latent_figure(rows: list[dict], epochs: int):
    """Test ELBO and log p(x) against the latent size (drawn from a record's results)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    z = [row["z_dim"] for row in rows]
    ax.plot(z, [row["test_elbo"] for row in rows], "o-", color="C0", label="test ELBO")
    ax.errorbar(z, [row["log_px"] for row in rows], yerr=[2 * row["log_px_se"] for row in rows], fmt="s-", color="C2", capsize=3, label="log p(x) ± 2 s.e.")
    ax.set_xscale("log")
    ax.set_xticks(z, [str(v) for v in z])
    ax.set(xlabel="latent size", ylabel="nats per image", title=f"Latent size at {epochs} epochs")
    ax.legend()
    return fig


# The two recipes the "recipe" experiment races, in the CLI's option names (``train.PRESETS["best"]`` is
# the first with a number of epochs). "standard" is the PyTorch examples' VAE: 784-400-20, Adam 0.001, batch 128.
RECIPES = {
    "best": dict(
        hidden=[512, 512], latent_dim=32, activation="elu", batch_size=256, lr=3e-3, lr_schedule="cosine", warmup_epochs=2
    ),
    "standard": dict(
        hidden=[400], latent_dim=20, activation="relu", batch_size=128, lr=1e-3, lr_schedule="constant", warmup_epochs=0
    ),
}


def recipe_model(recipe: dict, dim: int, seed: int) -> models.VAE:
    torch.manual_seed(seed)
    return models.VAE(dim, recipe["latent_dim"], recipe["hidden"], activation=recipe["activation"])


def recipe_fit(model: models.VAE, recipe: dict, x: torch.Tensor, *, epochs: int, seconds: float | None, seed: int, on_epoch=None):
    """``training.fit`` with a recipe's batch size, learning rate and schedule, and its KL warm-up, on dynamically binarized ``x``."""
    steps = recipe["warmup_epochs"] * math.ceil(len(x) / recipe["batch_size"])
    return training.fit(
        model, x, epochs=epochs, batch_size=recipe["batch_size"], lr=recipe["lr"], lr_schedule=recipe["lr_schedule"],
        beta=training.linear_warmup(steps) if steps else 1.0, max_seconds=seconds, dynamic_binarization=True,
        seed=seed, progress=False, on_epoch=on_epoch,
    )


def epochs_within(recipe: dict, x: torch.Tensor, seconds: float, seed: int) -> tuple[int, float]:
    """How many epochs of ``recipe`` fit in ``seconds`` here: three epochs of a throwaway model are timed, and
    the mean of the second and third (the first pays for warming up) sets the count. Returns (epochs, s/epoch)."""
    history = recipe_fit(recipe_model(recipe, x.shape[1], seed), recipe, x, epochs=3, seconds=None, seed=seed)
    per_epoch = (history["time"][2] - history["time"][0]) / 2
    return max(1, int(seconds / per_epoch)), per_epoch


def race(recipe: dict, x: torch.Tensor, *, seconds: float, epochs: int, marks: list[float], seed: int):
    """Train ``recipe`` for ``epochs`` or ``seconds`` of wall time, whichever ends first; keep a copy of the
    weights at the end of the first epoch past each of ``marks`` (seconds) and at the end. Returns the model,
    its history and the snapshots (epoch, seconds, weights)."""
    model = recipe_model(recipe, x.shape[1], seed)
    pending, snapshots = sorted(marks), []

    def keep(epoch: int, record: dict) -> None:
        if pending and record["time"] >= pending[0]:
            while pending and record["time"] >= pending[0]:
                pending.pop(0)
            snapshots.append((epoch, record["time"], {k: v.clone() for k, v in model.state_dict().items()}))

    history = recipe_fit(model, recipe, x, epochs=epochs, seconds=seconds, seed=seed, on_epoch=keep)
    if not snapshots or snapshots[-1][0] != len(history["elbo"]):
        snapshots.append((len(history["elbo"]), history["time"][-1], {k: v.clone() for k, v in model.state_dict().items()}))
    return model, history, snapshots


@experiment(
    "recipe",
    "The best recipe a CPU can train in 30 minutes against the standard recipe (784-400-20, Adam 0.001, batch 128), "
    "side by side: log p(x) against wall time",
    full=dict(minutes=30.0, marks_min=[1, 2, 5, 10, 15, 20, 25], n_train=None, n_curve=1_000, curve_k=500, n_test=10_000, iw_samples=5_000, chosen_on=1_000),
    smoke=dict(minutes=0.1, marks_min=[0.03, 0.06], n_train=2_000, n_curve=50, curve_k=20, n_test=100, iw_samples=50, chosen_on=50),
    reference={
        "target_log_px": -89.0, "target_margin_nats": 2.0,
        "burda_vae_log_px": -86.76,
        "source": "target: ≤ 89.0 nats in 30 minutes on 2 cores, ≥ 2 nats ahead of the standard recipe; Burda et al. (2016), "
        "table 1: a one-layer VAE (k = 1) after 3,280 epochs on a GPU",
    },
)
def recipe(budget: dict, seed: int, mnist: Path | None):
    """Each recipe trains for the same wall time, one after the other, on dynamically binarized MNIST; the
    best recipe's cosine schedule is planned to end with the time budget. Snapshots along the way are
    scored on the first ``n_curve`` test digits; the final models on ``n_test`` digits with K = ``iw_samples``,
    digit by digit, so that their difference has a paired standard error. The recipe was chosen in short
    trials scored on the first ``chosen_on`` test digits, so the scores are also given on the digits after them."""
    binary = load_mnist(mnist, "dynamic", seed)
    x_train, x_test = subset(binary.x_train, budget["n_train"]), binary.x_test
    seconds = 60 * budget["minutes"]
    marks = [60 * m for m in budget["marks_min"]]
    planned, per_epoch = epochs_within(RECIPES["best"], x_train, seconds, seed)
    print(f"recipe: best recipe takes {per_epoch:.2f} s per epoch here: planning {planned} epochs", flush=True)
    results, per_digit = {"planned_epochs_best": planned, "calibration_s_per_epoch": round(per_epoch, 3)}, {}
    for name, recipe_settings in RECIPES.items():
        epochs = planned if recipe_settings["lr_schedule"] == "cosine" else 1_000_000  # constant: until the time is up
        model, history, snapshots = race(recipe_settings, x_train, seconds=seconds, epochs=epochs, marks=marks, seed=seed)
        done = len(history["elbo"])
        print(f"recipe: {name} trained {done} epochs in {history['time'][-1]:.0f} s; scoring", flush=True)
        curve = []
        for epoch, elapsed, state in snapshots:
            model.load_state_dict(state)
            lp = training.log_px(model, x_test[: budget["n_curve"]], n_samples=budget["curve_k"], seed=seed)
            curve.append({"epoch": epoch, "minutes": round(elapsed / 60, 3), "log_px": round(lp.mean().item(), 3)})
        start = time.perf_counter()
        lp = training.log_px(model, x_test[: budget["n_test"]], n_samples=budget["iw_samples"], seed=seed)
        score_seconds = time.perf_counter() - start
        per_digit[name] = lp
        results[name] = {
            "settings": recipe_settings,
            "epochs": done,
            "train_time_s": round(history["time"][-1], 1),
            "samples_per_s": round(done * len(x_train) / history["time"][-1], 1),
            "train_elbo": [round(v, 3) for v in history["elbo"]],
            "test_elbo": round(training.evaluate(model, x_test)["elbo"], 3),
            "log_px": round(lp.mean().item(), 3),
            "log_px_se": round(lp.std().item() / math.sqrt(len(lp)), 3),
            "n_test": len(lp),
            "iw_samples": budget["iw_samples"],
            "score_time_s": round(score_seconds, 1),
            "curve": curve,
        }
        print(f"recipe: {name} log p(x) {results[name]['log_px']:.2f} ± {results[name]['log_px_se']:.2f} (scored in {score_seconds:.0f} s)", flush=True)
    difference = per_digit["best"] - per_digit["standard"]
    results["best_minus_standard"] = round(difference.mean().item(), 3)
    results["best_minus_standard_se"] = round(difference.std().item() / math.sqrt(len(difference)), 3)
    # The recipe was chosen in short trials scored on the first test digits: the digits after them judge it afresh.
    unseen = slice(budget["chosen_on"], None)
    results["unseen_digits"] = len(difference[unseen])
    for name, lp in per_digit.items():
        results[name]["log_px_unseen"] = round(lp[unseen].mean().item(), 3)
        results[name]["log_px_unseen_se"] = round(lp[unseen].std().item() / math.sqrt(len(lp[unseen])), 3)
    results["best_minus_standard_unseen"] = round(difference[unseen].mean().item(), 3)
    results["best_minus_standard_unseen_se"] = round(difference[unseen].std().item() / math.sqrt(len(difference[unseen])), 3)
    results["curve_digits"], results["curve_k"] = budget["n_curve"], budget["curve_k"]
    return results, recipe_figure(results)


def recipe_figure(results: dict):
    """log p(x) along each recipe's run against wall time, the final scores, the target and Burda et al.'s VAE."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for name, color in (("best", "C2"), ("standard", "C0")):
        row = results[name]
        ax.plot([p["minutes"] for p in row["curve"]], [p["log_px"] for p in row["curve"]], "o-", color=color,
                label=f"{name} recipe ({results['curve_digits']:,} digits, K = {results['curve_k']})")
        ax.errorbar([row["curve"][-1]["minutes"]], [row["log_px"]], yerr=[2 * row["log_px_se"]], fmt="*", ms=12, color=color,
                    capsize=3, label=f"{name}: all {row['n_test']:,} digits, K = {row['iw_samples']:,}")
    ax.axhline(-89.0, color="C3", ls="--", lw=1, label="target (−89.0)")
    ax.axhline(-86.76, color="C7", ls=":", lw=1, label="Burda et al. (2016), 3,280 epochs")
    ax.set(xlabel="training wall time (minutes, 2 cores)", ylabel="test log p(x) (nats)", title="Two recipes, equal wall time")
    ax.legend(fontsize="small")
    return fig


# ---- Part II at full scale ------------------------------------------------------------------------


def score_model(model: models.VAE, x_test: torch.Tensor, n_test: int, n_samples: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Test ELBO and active units over all of ``x_test``; importance-sampled log p(x) digit by digit over its
    first ``n_test`` rows (K = ``n_samples``). Returns the scores and the per-digit log p(x), so that two
    models scored on the same digits have a paired standard error (:func:`paired_gain`)."""
    from course_code import diagnostics

    torch.manual_seed(seed)
    elbo = training.evaluate(model, x_test)["elbo"]
    with torch.no_grad():
        mu, _ = model.encode(x_test)
    start = time.perf_counter()
    lp = training.log_px(model, x_test[:n_test], n_samples=n_samples, seed=seed)
    seconds = time.perf_counter() - start
    scores = {
        "test_elbo": round(elbo, 3),
        "log_px": round(lp.mean().item(), 3),
        "log_px_se": round(lp.std().item() / math.sqrt(len(lp)), 3),
        "n_test": len(lp),
        "iw_samples": n_samples,
        "log_px_images_per_s": round(len(lp) / seconds, 1),
        "active_units": diagnostics.active_units(mu),
        "latent_dim": mu.shape[1],
    }
    return scores, lp


def paired_gain(lp: torch.Tensor, baseline: torch.Tensor) -> dict:
    """The mean per-digit gain in log p(x) over ``baseline`` on the same digits, with its standard error."""
    difference = lp - baseline
    return {"gain": round(difference.mean().item(), 3), "gain_se": round(difference.std().item() / math.sqrt(len(difference)), 3)}


def fit_printing(name: str, model: models.VAE, x: torch.Tensor, *, epochs: int, seed: int, **options) -> dict:
    """``training.fit`` on dynamically binarized ``x`` with batch 100 and Adam 0.001, printing a line per epoch
    (a full-scale arm trains for minutes, and a learner should see it move)."""

    def show(epoch: int, record: dict) -> None:
        print(f"{name}: epoch {epoch}/{epochs}, training bound {record['elbo']:.2f}, {record['time']:.0f} s", flush=True)

    return training.fit(model, x, epochs=epochs, batch_size=100, lr=1e-3, dynamic_binarization=True, seed=seed,
                        progress=False, on_epoch=show, **options)


@experiment(
    "iwae",
    "The ELBO against the IWAE bound with K = 5 and 50 (Burda et al.): 784-200-200-50 tanh, equal epochs",
    full=dict(ks=[1, 5, 50], hidden=[200, 200], z_dim=50, epochs=16, n_train=None, n_test=1_000, iw_samples=5_000),
    smoke=dict(ks=[1, 5], hidden=[50], z_dim=10, epochs=1, n_train=2_000, n_test=50, iw_samples=50),
    reference={
        "claim": "trained for the same number of epochs, the importance-weighted bound with more samples gives a better "
        "test log p(x) than the ELBO, and more active units",
        "source": "Burda et al. (2016), table 1 (MNIST, one stochastic layer: 784-200-200-50 tanh, 3,280 epochs)",
    },
)
def iwae(budget: dict, seed: int, mnist: Path | None):
    """One model per K on dynamically binarized MNIST: K = 1 trains the ELBO, K > 1 the IWAE bound with K
    samples; the same net, initial weights, data order and epochs. Each is scored on the same test digits,
    and its gain over the ELBO's model is paired digit by digit."""
    binary = load_mnist(mnist, "dynamic", seed)
    x_train = subset(binary.x_train, budget["n_train"])
    rows, per_digit = [], {}
    for k in budget["ks"]:
        torch.manual_seed(seed)
        model = models.VAE(x_train.shape[1], budget["z_dim"], budget["hidden"], activation="tanh", objective="elbo" if k == 1 else "iwae")
        history = fit_printing(f"iwae K = {k}", model, x_train, epochs=budget["epochs"], seed=seed, n_samples=k)
        scores, per_digit[k] = score_model(model, binary.x_test, budget["n_test"], budget["iw_samples"], seed)
        rows.append({"k": k, "objective": model.objective, "train_bound": round(history["elbo"][-1], 3),
                     "train_time_s": round(history["time"][-1], 1), **scores, **paired_gain(per_digit[k], per_digit[budget["ks"][0]])})
        print(f"iwae: K = {k}: log p(x) {scores['log_px']:.2f} ± {scores['log_px_se']:.2f}, "
              f"{scores['active_units']} active units", flush=True)
    return {"by_k": rows}, iwae_figure(rows, budget["epochs"])


def iwae_figure(rows: list[dict], epochs: int):
    """Test log p(x) and ELBO against K, and the active units (drawn from a record's results)."""
    import matplotlib.pyplot as plt

    fig, (ax, units) = plt.subplots(1, 2, figsize=(4.6, 3.2), width_ratios=[3, 2], layout="constrained")
    k = [row["k"] for row in rows]
    ax.plot(k, [row["test_elbo"] for row in rows], "o-", color="C0", label="test ELBO")
    ax.errorbar(k, [row["log_px"] for row in rows], yerr=[2 * row["log_px_se"] for row in rows], fmt="s-", color="C2",
                capsize=3, label="log p(x) ± 2 s.e.")
    ax.set_xscale("log")
    ax.set_xticks(k, [str(v) for v in k])
    ax.minorticks_off()
    ax.set(xlabel="K in the training bound", ylabel="nats per image", title=f"{epochs} epochs each")
    ax.legend(loc="lower right", fontsize="small")
    units.bar([str(v) for v in k], [row["active_units"] for row in rows], color="C1")
    units.axhline(rows[0]["latent_dim"], color="0.5", lw=1, ls="--")
    units.set(xlabel="K", ylabel="active units", title=f"of {rows[0]['latent_dim']}")
    return fig


@experiment(
    "vampprior",
    "A standard normal prior against the VampPrior (Tomczak & Welling): 784-300-300-40, equal epochs",
    full=dict(hidden=[300, 300], z_dim=40, pseudo_inputs=500, epochs=40, n_train=None, n_test=1_000, iw_samples=5_000),
    smoke=dict(hidden=[50], z_dim=10, pseudo_inputs=20, epochs=1, n_train=2_000, n_test=50, iw_samples=50),
    reference={
        "claim": "with the same encoder and decoder, the VampPrior gives a better test log p(x) than N(0, I), and more active units",
        "source": "Tomczak & Welling (2018), table 2 and section 4 (MNIST, one stochastic layer, 500 pseudo-inputs)",
    },
)
def vampprior(budget: dict, seed: int, mnist: Path | None):
    """The same VAE with p(z) = N(0, I) and with a VampPrior, on dynamically binarized MNIST: the same
    initial weights, data order and epochs. Both are scored on the same test digits, and the VampPrior's
    gain is paired digit by digit."""
    from course_code import priors

    binary = load_mnist(mnist, "dynamic", seed)
    x_train = subset(binary.x_train, budget["n_train"])
    rows, per_digit = [], {}
    for name in ("standard", "vampprior"):
        torch.manual_seed(seed + 1)  # the pseudo-inputs' own draw, so that the networks below start alike under both priors
        prior = priors.VampPrior(x_train.shape[1], budget["pseudo_inputs"]) if name == "vampprior" else None
        torch.manual_seed(seed)
        model = models.VAE(x_train.shape[1], budget["z_dim"], budget["hidden"], prior=prior)
        history = fit_printing(f"vampprior {name}", model, x_train, epochs=budget["epochs"], seed=seed)
        scores, per_digit[name] = score_model(model, binary.x_test, budget["n_test"], budget["iw_samples"], seed)
        rows.append({"prior": name, "train_elbo": round(history["elbo"][-1], 3), "train_time_s": round(history["time"][-1], 1),
                     **scores, **paired_gain(per_digit[name], per_digit["standard"])})
        print(f"vampprior: {name}: log p(x) {scores['log_px']:.2f} ± {scores['log_px_se']:.2f}, "
              f"{scores['active_units']} active units", flush=True)
    return {"by_prior": rows}, vampprior_figure(rows, budget["epochs"])


def vampprior_figure(rows: list[dict], epochs: int):
    """Test ELBO and log p(x) of each prior, and their active units (drawn from a record's results)."""
    import matplotlib.pyplot as plt

    fig, (ax, units) = plt.subplots(1, 2, figsize=(4.6, 3.2), width_ratios=[3, 2], layout="constrained")
    names = [row["prior"] for row in rows]
    ax.plot(names, [row["test_elbo"] for row in rows], "o", ms=8, color="C0", label="test ELBO")
    ax.errorbar(names, [row["log_px"] for row in rows], yerr=[2 * row["log_px_se"] for row in rows], fmt="s", ms=8,
                color="C2", capsize=3, label="log p(x) ± 2 s.e.")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set(xlabel="prior", ylabel="nats per image", title=f"{epochs} epochs each")
    ax.legend(loc="lower right", fontsize="small")
    units.bar(names, [row["active_units"] for row in rows], color="C1")
    units.axhline(rows[0]["latent_dim"], color="0.5", lw=1, ls="--")
    units.set(xlabel="prior", ylabel="active units", title=f"of {rows[0]['latent_dim']}")
    return fig


# ---- Part III at full scale -----------------------------------------------------------------------


def train_vq(x: torch.Tensor, budget: dict, seed: int, restarts: bool):
    """A VQ-VAE trained on dynamically binarized ``x`` with Adam 0.001, batch 100; with ``restarts``, every code
    no training digit chooses is moved onto a random digit's encoder output after each of the first
    ``restart_epochs`` epochs (the epochs after them have none). Returns the model and its history."""
    from course_code import discrete

    torch.manual_seed(seed)
    vq = discrete.VQVAE(x.shape[1], n_latents=budget["n_latents"], code_dim=budget["code_dim"], n_codes=budget["n_codes"],
                        hidden=budget["hidden"])
    generator = torch.Generator().manual_seed(seed)
    name = f"vqvae seed {seed}, {'restarts' if restarts else 'no restarts'}"

    def after_epoch(epoch: int, record: dict) -> None:
        moved = discrete.restart_dead_codes(vq, x, generator) if restarts and epoch <= budget["restart_epochs"] else 0
        print(f"{name}: epoch {epoch}/{budget['epochs']}, reconstruction {record['rec']:.2f}, "
              f"{moved} codes restarted, {record['time']:.0f} s", flush=True)

    history = training.fit(vq, x, epochs=budget["epochs"], batch_size=100, lr=1e-3, dynamic_binarization=True, seed=seed,
                           progress=False, on_epoch=after_epoch)
    return vq.requires_grad_(False), history


def code_prior_bound(vq, x_train: torch.Tensor, x_val: torch.Tensor, x_test: torch.Tensor) -> dict:
    """Fit a prior over the codes of the training digits (independent positions or a Markov chain, smoothing
    0.1, 0.5 or 2, chosen by the validation digits' mean log p(c)); return the test bound
    log p(x | c) + log p(c) with c the digit's code (q is a point mass), and the chosen prior."""
    from course_code import discrete

    codes = {name: vq.codes(x) for name, x in (("train", x_train), ("val", x_val), ("test", x_test))}
    fitted = {(order, a): discrete.CodePrior(vq.n_latents, vq.n_codes, order, a).fit(codes["train"]) for order in (0, 1) for a in (0.1, 0.5, 2.0)}
    order, a = max(fitted, key=lambda key: fitted[key].log_prob(codes["val"]).mean().item())
    bound = vq.log_likelihood(x_test) + fitted[order, a].log_prob(codes["test"])
    return {"prior": "Markov" if order else "independent", "smoothing": a, "test_bound": round(bound.mean().item(), 3),
            "test_bound_se": round(bound.std().item() / math.sqrt(len(bound)), 3)}


@experiment(
    "vqvae",
    "A VQ-VAE on MNIST (van den Oord et al.): codebook use and reconstructions, with and without restarts of dead codes",
    full=dict(n_codes=512, n_latents=16, code_dim=8, hidden=[512], epochs=30, restart_epochs=20, seeds=2, n_val=10_000, n_train=None),
    smoke=dict(n_codes=32, n_latents=4, code_dim=4, hidden=[50], epochs=2, restart_epochs=1, seeds=1, n_val=1_000, n_train=2_000),
    reference={
        "claim": "a VQ-VAE reconstructs digits from a few discrete codes; codes that no datapoint chooses receive no "
        "gradient and stay unused, and moving them onto encoder outputs keeps the codebook in use (chapter 13)",
        "source": "van den Oord et al. (2017), sections 3 and 4; chapter 13's dead codes on 8 × 8 digits",
    },
)
def vqvae(budget: dict, seed: int, mnist: Path | None):
    """VQ-VAEs with and without restarts, ``seeds`` seeds each, on the training digits before the last
    ``n_val`` (dynamically binarized); the last ``n_val`` training digits choose the code prior. Codebook use is
    counted on the training digits, reconstruction log p(x | z_q) and the bound with the fitted prior on
    the test digits, binarized once."""
    from course_code import discrete

    binary = load_mnist(mnist, "dynamic", seed)
    x_train, x_val = subset(binary.x_train[: -budget["n_val"]], budget["n_train"]), binary.x_train[-budget["n_val"]:]
    x_val = torch.bernoulli(x_val, generator=torch.Generator().manual_seed(seed))
    rows, examples = [], {}
    for restarts in (False, True):
        for s in range(seed, seed + budget["seeds"]):
            vq, history = train_vq(x_train, budget, s, restarts)
            counts = discrete.code_usage(vq.codes(x_train), vq.n_codes)
            rec = vq.log_likelihood(binary.x_test)
            rows.append({"restarts": restarts, "seed": s, "dead_codes": int((counts == 0).sum()),
                         "perplexity": round(discrete.perplexity(counts).item(), 2),
                         "usage_sorted": sorted(counts.tolist(), reverse=True),
                         "test_reconstruction": round(rec.mean().item(), 3),
                         "test_reconstruction_se": round(rec.std().item() / math.sqrt(len(rec)), 3),
                         **code_prior_bound(vq, x_train, x_val, binary.x_test), "train_time_s": round(history["time"][-1], 1)})
            if s == seed:
                examples["restarts" if restarts else "no_restarts"] = vq.reconstruct(binary.x_test[:8]).tolist()
            print(f"vqvae: seed {s}, {'restarts' if restarts else 'no restarts'}: {rows[-1]['dead_codes']} dead codes of "
                  f"{vq.n_codes}, test log p(x | z_q) {rows[-1]['test_reconstruction']:.2f}", flush=True)
    examples["test_digits"] = binary.x_test[:8].tolist()
    bits = budget["n_latents"] * math.log2(budget["n_codes"])
    return {"runs": rows, "code_bits": round(bits, 3), "reconstructions": examples}, vqvae_figure(rows, examples, budget["n_codes"])


def vqvae_figure(rows: list[dict], examples: dict, n_codes: int):
    """Test digits and their reconstructions with and without restarts, and each run's sorted code usage."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(4.6, 4.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    labels = {"test_digits": "test digits", "no_restarts": "no restarts", "restarts": "restarts"}
    axes = top.subplots(3, 1)
    for ax, (key, label) in zip(axes, labels.items()):
        images = torch.tensor(examples[key]).reshape(-1, 28, 28)
        ax.imshow(torch.cat(list(images), dim=1).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    ax = bottom.subplots()
    for row in rows:
        usage = torch.tensor(row["usage_sorted"], dtype=torch.float64)
        ax.plot(range(1, n_codes + 1), (usage / usage.sum()).tolist(), color="C2" if row["restarts"] else "C3",
                ls="-" if row["seed"] == rows[0]["seed"] else "--")
    ax.plot([], [], color="C3", label="no restarts")
    ax.plot([], [], color="C2", label="restarts")
    ax.set_yscale("log")
    ax.set(xlabel="code, most used first", ylabel="share of uses", xlim=(1, n_codes))
    ax.legend(fontsize="small")
    return fig


# ---- Part I's inference questions at full scale -----------------------------------------------------


@experiment(
    "collapse",
    "Posterior collapse under an autoregressive decoder, standard against aggressive training (He et al.): 784-500-32, MADE decoder",
    full=dict(z_dim=32, hidden=[500], decoder_hidden=[500], epochs=20, max_aggressive_epochs=3, n_train=None, n_val=1_000,
              n_test=1_000, iw_samples=1_000),
    smoke=dict(z_dim=8, hidden=[50], decoder_hidden=[50], epochs=2, max_aggressive_epochs=1, n_train=2_000, n_val=500,
               n_test=50, iw_samples=50),
    reference={
        "claim": "with an autoregressive decoder, standard VAE training leaves the latent code nearly unused; training the "
        "encoder aggressively until the mutual information stops rising uses more of it (KL, MI, active units) at an "
        "equal or better log-likelihood",
        "source": "He et al. (2019), table 2 (Omniglot, PixelCNN decoder, 32-dimensional z, mean of 5 seeds): "
        "VAE NLL 89.41, KL 1.51, MI 1.43, AU 3.0; aggressive NLL 89.05, KL 2.51, MI 2.19, AU 5.6",
        "nll": {"standard": 89.41, "aggressive": 89.05},
        "kl": {"standard": 1.51, "aggressive": 2.51},
        "mi": {"standard": 1.43, "aggressive": 2.19},
        "au": {"standard": 3.0, "aggressive": 5.6},
    },
)
def lagging(budget: dict, seed: int, mnist: Path | None):
    """A VAE with the MADE decoder of chapter 6, trained by the standard update and by He et al.'s
    Algorithm 1 (``collapse.aggressive_fit``) from the same initial weights and data order. The training
    digits are binarized once (the algorithm trains on fixed data); the last ``n_val`` of them decide when
    the aggressive mode ends and are measured after every epoch; the test digits give the final numbers (the KL
    and the MI, whose estimate compares every pair of digits, on the first ``n_test`` of them)."""
    from course_code import collapse

    binary = load_mnist(mnist, "dynamic", seed)
    x_all = torch.bernoulli(binary.x_train, generator=torch.Generator().manual_seed(seed))
    x_train, x_val = subset(x_all[: -budget["n_val"]], budget["n_train"]), x_all[-budget["n_val"]:]
    rows, per_digit = [], {}
    for arm in ("standard", "aggressive"):
        torch.manual_seed(seed)
        model = models.VAE(x_train.shape[1], budget["z_dim"], budget["hidden"], likelihood="autoregressive",
                           decoder_hidden=budget["decoder_hidden"])
        start = time.perf_counter()

        def show(epoch: int, model: torch.nn.Module) -> None:
            if epoch:
                print(f"collapse {arm}: epoch {epoch}/{budget['epochs']}, {time.perf_counter() - start:.0f} s", flush=True)

        history = collapse.aggressive_fit(model, x_train, x_val, aggressive=arm == "aggressive", epochs=budget["epochs"],
                                          max_aggressive_epochs=budget["max_aggressive_epochs"], seed=seed, callback=show,
                                          progress=False)
        model.requires_grad_(False)
        scores, per_digit[arm] = score_model(model, binary.x_test, budget["n_test"], budget["iw_samples"], seed)
        latent = collapse.latent_diagnostics(model, binary.x_test[: budget["n_test"]], torch.Generator().manual_seed(seed))
        aggressive_epochs = int(sum(history["aggressive"]))
        rows.append({
            "arm": arm, **scores, **paired_gain(per_digit[arm], per_digit["standard"]),
            "nll": round(-scores["log_px"], 3), "kl": round(latent["kl"], 3), "mi": round(latent["mi"], 3),
            "aggressive_epochs": aggressive_epochs,
            "inner_steps": round(sum(history["inner_steps"][:aggressive_epochs]) / max(aggressive_epochs, 1), 1),
            "train_time_s": round(history["time"][-1], 1),
            "history": {key: [round(v, 3) for v in history[key]] for key in ("val_elbo", "val_kl", "mi", "au", "aggressive", "time")},
        })
        print(f"collapse: {arm}: NLL {rows[-1]['nll']:.2f}, KL {rows[-1]['kl']:.2f}, MI {rows[-1]['mi']:.2f}, "
              f"{scores['active_units']} active units, {aggressive_epochs} aggressive epochs", flush=True)
    return {"by_arm": rows}, collapse_figure(rows)


def collapse_figure(rows: list[dict]):
    """The KL on the validation digits after every epoch of each arm, the aggressive mode's epochs marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.0), layout="constrained")
    colors = {"standard": "C0", "aggressive": "C3"}
    for row in rows:
        kl, aggressive = row["history"]["val_kl"], row["history"]["aggressive"]
        epochs = range(1, len(kl) + 1)
        ax.plot(epochs, kl, "-", color=colors[row["arm"]], label=f"{row['arm']}: {row['active_units']} active units")
        marked = [(e, v) for e, v, a in zip(epochs, kl, aggressive) if a]
        if marked:
            ax.plot(*zip(*marked), "o", color=colors[row["arm"]], ms=5, label="aggressive mode")
    ax.set(xlabel="epoch", ylabel="KL on validation digits (nats)", title="What the code costs, epoch by epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right")
    return fig


def local_elbo(model: models.VAE, x: torch.Tensor, params: list[torch.Tensor], eps: torch.Tensor) -> torch.Tensor:
    """The ELBO of each row of ``x`` under the q that ``params`` = (μ, log σ²) or (μ, log σ², h) set, its mean over
    the standard-normal draws ``eps`` of shape (K, B, d): h is the flow's context (the encoder's last hidden layer)."""
    from course_code.distributions import log_normal

    mu, logvar = params[:2]
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = log_normal(z, mu, logvar)
    if model.flow is not None:
        z, log_det = model.flow(z, params[2].expand(len(eps), *params[2].shape))
        log_q = log_q - log_det
    return (model.log_likelihood(x, z) + model.log_prior(z) - log_q).mean(0)


def inference_gaps(model: models.VAE, x: torch.Tensor, budget: dict, seed: int) -> dict[str, torch.Tensor]:
    """log p(x), L[q*] and L[q_φ] of every row of ``x`` (Cremer et al., 2018). q* is the best q of the model's own
    family found per digit: ``local_steps`` Adam steps on its parameters (with a flow, also the context h), started
    at the encoder's, each on the ELBO at ``local_draws`` new draws, with the learning rate falling linearly from
    ``local_lr`` to 0 so that the noisy climb settles. L[q*] and L[q_φ] are then taken at the same ``fresh_draws``
    draws, none of them seen by the climb. A climb can fall short of the best q, so the approximation gap it
    reports is an upper bound, and the amortization gap a lower bound."""
    model.requires_grad_(False)
    with torch.no_grad():
        h = model.encoder.body(x)
        amortized = [*model.encoder.head(h).chunk(2, dim=-1), h][: 3 if model.flow is not None else 2]
    shape = (budget["local_draws"], *amortized[0].shape)
    generator = torch.Generator().manual_seed(seed + 1)
    local = [p.clone().requires_grad_(True) for p in amortized]
    optimizer = torch.optim.Adam(local, lr=budget["local_lr"])
    for step in range(budget["local_steps"]):
        optimizer.param_groups[0]["lr"] = budget["local_lr"] * (1 - step / budget["local_steps"])
        loss = -local_elbo(model, x, local, torch.randn(shape, generator=generator, dtype=x.dtype)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    fresh = torch.randn(budget["fresh_draws"], *amortized[0].shape, generator=torch.Generator().manual_seed(seed + 2), dtype=x.dtype)
    with torch.no_grad():
        elbo_best, elbo_amortized = (
            torch.stack([local_elbo(model, x, params, chunk) * len(chunk) for chunk in fresh.split(100)]).sum(0) / len(fresh)
            for params in (local, amortized)
        )
    log_px = training.log_px(model, x, n_samples=budget["iw_samples"], seed=seed)
    return {"log_px": log_px, "elbo_best": elbo_best, "elbo_amortized": elbo_amortized}


@experiment(
    "gaps",
    "The approximation and amortization gaps of a diagonal-Gaussian and a flow posterior (Cremer et al.): 784-200-200-50 tanh",
    full=dict(hidden=[200, 200], z_dim=50, flow_steps=2, flow_hidden=[100], epochs=30, n_train=None, n_test=500,
              iw_samples=5_000, local_draws=16, local_steps=1_000, local_lr=0.05, fresh_draws=1_000),
    smoke=dict(hidden=[50], z_dim=10, flow_steps=2, flow_hidden=[20], epochs=1, n_train=2_000, n_test=20,
               iw_samples=50, local_draws=4, local_steps=5, local_lr=0.05, fresh_draws=200),
    reference={
        "claim": "the amortization gap is often the larger part of the inference gap, and a flow posterior reduces the "
        "approximation gap and can reduce the amortization gap as well",
        "source": "Cremer, Li & Duvenaud (2018), section 5 and table 2 (MNIST, a factorized Gaussian against a flow q)",
    },
)
def gaps(budget: dict, seed: int, mnist: Path | None):
    """A VAE with the encoder's diagonal Gaussian q and the same VAE with an IAF after it (chapter 8), trained alike
    on dynamically binarized MNIST; for each, on the first ``n_test`` test digits, log p(x), L[q*] and L[q_φ]
    (:func:`inference_gaps`) and the two gaps with standard errors over digits (``inference.gap_summary``)."""
    from course_code import flows, inference

    binary = load_mnist(mnist, "dynamic", seed)
    x_train, x_test = subset(binary.x_train, budget["n_train"]), binary.x_test[: budget["n_test"]]
    rows = []
    for family in ("diagonal", "flow"):
        torch.manual_seed(seed + 1)  # the flow's own draw, so that encoder and decoder start alike in both models
        flow = flows.IAF(budget["z_dim"], budget["flow_steps"], budget["hidden"][-1], budget["flow_hidden"]) if family == "flow" else None
        torch.manual_seed(seed)
        model = models.VAE(x_train.shape[1], budget["z_dim"], budget["hidden"], activation="tanh", flow=flow)
        history = fit_printing(f"gaps {family}", model, x_train, epochs=budget["epochs"], seed=seed)
        start = time.perf_counter()
        terms = inference_gaps(model, x_test, budget, seed)
        summary = inference.gap_summary(terms["log_px"], terms["elbo_best"], terms["elbo_amortized"])
        row = {"family": family, "train_elbo": round(history["elbo"][-1], 3), "train_time_s": round(history["time"][-1], 1),
               "gap_time_s": round(time.perf_counter() - start, 1), "n_test": len(x_test)}
        for key, values in terms.items():
            row[key] = round(values.mean().item(), 3)
            row[f"{key}_se"] = round(values.std().item() / math.sqrt(len(values)), 3)
        for i, key in enumerate(("approximation_gap", "amortization_gap", "inference_gap")):
            row[key], row[f"{key}_se"] = round(summary[i, 0].item(), 3), round(summary[i, 1].item(), 3)
        rows.append(row)
        print(f"gaps: {family}: log p(x) {row['log_px']:.2f}, approximation gap {row['approximation_gap']:.2f}, "
              f"amortization gap {row['amortization_gap']:.2f}", flush=True)
    return {"by_family": rows}, gaps_figure(rows)


def gaps_figure(rows: list[dict]):
    """Each family's inference gap split into its approximation and amortization parts (stacked bars)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.0), layout="constrained")
    names = [row["family"] for row in rows]
    approximation = [row["approximation_gap"] for row in rows]
    amortization = [row["amortization_gap"] for row in rows]
    ax.bar(names, approximation, 0.5, color="C0", label="approximation gap")
    ax.bar(names, amortization, 0.5, bottom=approximation, color="C1", label="amortization gap")
    ax.errorbar(names, [row["inference_gap"] for row in rows], yerr=[2 * row["inference_gap_se"] for row in rows],
                fmt="none", color="k", capsize=4)
    ax.set(xlabel="q of the trained model", ylabel="nats per image", title="log p(x) − L[q_φ], split in two")
    ax.legend(loc="lower center")  # at full size: 9 px or more at phone width
    return fig


# ---- Part III: labels -------------------------------------------------------------------------------


LABEL_ARMS = ("labels alone", "conditional VAE", "M1 features", "M1 + M2")


def bayes_predict(cvae, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """The class with the largest bound L(x | y) for each row of ``x``: a conditional VAE as a classifier by Bayes' rule
    with a uniform p(y) (chapter 12's exercise). A digit's ten bounds share their ``n_samples`` draws of z."""
    from course_code import semisupervised

    predictions = []
    with torch.no_grad():
        for chunk in x.split(1000):
            eps = torch.randn(n_samples, len(chunk), cvae.z_dim, generator=generator, dtype=chunk.dtype)
            bounds = [cvae.elbo(chunk, semisupervised.one_hot(torch.full((len(chunk),), c), cvae.n_classes, chunk.dtype), eps).elbo
                      for c in range(cvae.n_classes)]
            predictions.append(torch.stack(bounds).argmax(0))
    return torch.cat(predictions)


def conditional_fit(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, budget: dict, seed: int):
    """A conditional VAE trained on the labelled digits alone, checked by :func:`bayes_predict` (one draw) on the
    validation digits every ``cvae_check`` epochs and kept at its best check. Returns it and that accuracy and epoch."""
    import copy

    from course_code import semisupervised

    torch.manual_seed(seed)
    cvae = semisupervised.ConditionalVAE(x.shape[1], 10, budget["cvae_z"], budget["cvae_hidden"])
    best = {"accuracy": -1.0, "epoch": 0, "state": None}

    def check(epoch: int, record: dict) -> None:
        if epoch % budget["cvae_check"] == 0:
            accuracy = (bayes_predict(cvae, x_val, 1, torch.Generator().manual_seed(seed)) == y_val).double().mean().item()
            if accuracy > best["accuracy"]:
                best.update(accuracy=accuracy, epoch=epoch, state=copy.deepcopy(cvae.state_dict()))

    training.fit(cvae, semisupervised.rows(x, y), epochs=budget["cvae_epochs"], batch_size=100, lr=budget["classifier_lr"],
                 seed=seed, progress=False, on_epoch=check)
    cvae.load_state_dict(best["state"])
    return cvae.requires_grad_(False), best["accuracy"], best["epoch"]


@experiment(
    "labels",
    "Classifying MNIST from 100 labels (Kingma et al., 2014): the labels alone, a conditional VAE, M1's features, and M1 + M2",
    full=dict(per_class=10, n_val=10_000, n_train=None, m1_hidden=[500, 500], m1_z=50, m1_epochs=20, classifier_hidden=[500],
              classifier_epochs=300, classifier_lr=3e-3, cvae_z=2, cvae_hidden=[500], cvae_epochs=200, cvae_check=10,
              cvae_samples=10, m2_hidden=[300], m2_z=50, m2_alpha=0.1, m2_repeats=500,
              m2_epochs=30, seeds=3),
    smoke=dict(per_class=2, n_val=500, n_train=2_000, m1_hidden=[50], m1_z=8, m1_epochs=1, classifier_hidden=[20],
               classifier_epochs=3, classifier_lr=3e-3, cvae_z=2, cvae_hidden=[20], cvae_epochs=4, cvae_check=2, cvae_samples=2, m2_hidden=[20], m2_z=4, m2_alpha=0.1, m2_repeats=5, m2_epochs=1,
               seeds=2),
    reference={
        "claim": "with 100 labelled MNIST digits and the rest unlabelled, a classifier inside M2 on the features of a VAE "
        "(M1 + M2) errs far less often than one trained on the labels alone",
        "source": "Kingma, Rezende, Mohamed & Welling (2014), table 1 (MNIST, 100 labels): test error 11.97% (± 1.71) for M2, "
        "3.33% (± 0.14) for M1 + M2",
        "error_percent": {"M2": 11.97, "M1 + M2": 3.33},
    },
)
def labels(budget: dict, seed: int, mnist: Path | None):
    """One VAE (M1, Kingma et al.'s first model) is trained on the training digits before the last ``n_val``, their
    labels unused; its encoder's means are the features. Then, for each of ``seeds`` draws of ``per_class``
    labelled digits per class (and of the initial weights): the classifier network on the labelled pixels alone, a
    conditional VAE on them used as a classifier by Bayes' rule (:func:`conditional_fit`), the classifier network on
    their features, and M2 on the features (a Gaussian decoder; the labelled rows repeated
    ``m2_repeats`` times among the unlabelled ones, so that a minibatch holds some). Every arm keeps the epoch of
    its best accuracy on the last ``n_val`` training digits, and is scored on the 10,000 test digits."""
    from course_code import semisupervised as ss

    binary = load_mnist(mnist, "dynamic", seed)
    flip = torch.Generator().manual_seed(seed)
    x_all = torch.bernoulli(binary.x_train, generator=flip)  # binarized once: the features are of fixed digits
    x_train, y_train = subset(x_all[: -budget["n_val"]], budget["n_train"]), binary.y_train[: -budget["n_val"]]
    y_train = y_train[: len(x_train)]
    x_val, y_val = x_all[-budget["n_val"]:], binary.y_train[-budget["n_val"]:]
    torch.manual_seed(seed)
    m1 = models.VAE(x_train.shape[1], budget["m1_z"], budget["m1_hidden"])
    m1_history = fit_printing("labels M1", m1, binary.x_train[: len(x_train)], epochs=budget["m1_epochs"], seed=seed)
    m1.requires_grad_(False)
    features = {name: m1.encode(x)[0] for name, x in (("train", x_train), ("val", x_val), ("test", binary.x_test))}
    runs = []
    for s in range(seed, seed + budget["seeds"]):
        chosen = ss.labelled_subset(y_train, budget["per_class"], seed=s)
        row = {"seed": s, "labelled": len(chosen)}
        for arm, dim, x_l, val, test in (("labels alone", x_train.shape[1], x_train, x_val, binary.x_test),
                                         ("M1 features", budget["m1_z"], features["train"], features["val"], features["test"])):
            torch.manual_seed(s)
            classifier = ss.Classifier(dim, 10, budget["classifier_hidden"])
            history = ss.fit_keeping_best(classifier, ss.rows(x_l[chosen], y_train[chosen]), val, y_val, batch_size=100,
                                          epochs=budget["classifier_epochs"], lr=budget["classifier_lr"], seed=s, progress=False)
            row[arm] = {"test_accuracy": round(ss.accuracy(classifier, test, binary.y_test), 4),
                        "val_accuracy": round(max(history["val_accuracy"]), 4), "best_epoch": history["best_epoch"][0]}
        cvae, accuracy, epoch = conditional_fit(x_train[chosen], y_train[chosen], x_val, y_val, budget, s)
        predicted = bayes_predict(cvae, binary.x_test, budget["cvae_samples"], torch.Generator().manual_seed(s))
        row["conditional VAE"] = {"test_accuracy": round((predicted == binary.y_test).double().mean().item(), 4),
                                  "val_accuracy": round(accuracy, 4), "best_epoch": epoch}
        torch.manual_seed(s)
        m2 = ss.M2(budget["m1_z"], 10, budget["m2_z"], budget["m2_hidden"], classifier_hidden=budget["classifier_hidden"],
                   likelihood="gaussian", alpha=budget["m2_alpha"])
        data = torch.cat([ss.rows(features["train"][chosen], y_train[chosen]).repeat(budget["m2_repeats"], 1),
                          ss.rows(features["train"])])
        print(f"labels: seed {s}: training M2 on {len(data):,} rows for {budget['m2_epochs']} epochs", flush=True)
        history = ss.fit_keeping_best(m2, data, features["val"], y_val, epochs=budget["m2_epochs"], batch_size=100, lr=1e-3,
                                      seed=s, progress=False)
        row["M1 + M2"] = {"test_accuracy": round(ss.accuracy(m2, features["test"], binary.y_test), 4),
                          "val_accuracy": round(max(history["val_accuracy"]), 4), "best_epoch": history["best_epoch"][0],
                          "val_curve": [round(v, 4) for v in history["val_accuracy"]], "train_time_s": round(history["time"][-1], 1)}
        runs.append(row)
        print(f"labels: seed {s}: test accuracy " + ", ".join(f"{arm} {row[arm]['test_accuracy']:.4f}"
                                                              for arm in LABEL_ARMS), flush=True)
    return {"runs": runs, "m1_train_elbo": round(m1_history["elbo"][-1], 3), "m1_train_time_s": round(m1_history["time"][-1], 1)}, labels_figure(runs)


def labels_figure(runs: list[dict]):
    """Test error of each arm and seed, and M1 + M2's validation accuracy after every epoch."""
    import matplotlib.pyplot as plt

    arms = LABEL_ARMS
    fig, (ax, curve) = plt.subplots(1, 2, figsize=(4.6, 3.2), width_ratios=[1, 1], layout="constrained")
    for i, arm in enumerate(arms):
        errors = [100 * (1 - run[arm]["test_accuracy"]) for run in runs]
        ax.plot([i] * len(errors), errors, "o", color=f"C{i}", ms=6)
    ax.set_xticks(range(len(arms)), ["alone", "CVAE", "M1", "M1+M2"])
    ax.set(ylabel="test error (%)", ylim=(0, None), title="100 labels")
    for run in runs:
        values = run["M1 + M2"]["val_curve"]
        curve.plot(range(1, len(values) + 1), [100 * (1 - v) for v in values], color="C2")
    curve.set(xlabel="M2 epoch", ylabel="validation error (%)", ylim=(0, None), title="M1 + M2")
    return fig


# ---- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    from course_code.train import OneLineParser, positive_int, seed_value

    parser = OneLineParser(prog="python -m course_code.reproduce", description="Run full-scale experiments on MNIST and record them.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"experiments to run: {', '.join(EXPERIMENTS)}, or all")
    parser.add_argument("--smoke", action="store_true", help="the smoke budget (seconds; for tests), written to _build/reproduce-smoke")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--out", type=Path, help="folder for NAME.json and NAME.png (default results/, or _build/reproduce-smoke with --smoke)")
    parser.add_argument("--seed", type=seed_value, default=0, help="default 0")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="torch's threads (default: all cores)")
    parser.add_argument("--mnist", type=Path, help="folder of the four original MNIST .gz files (default: $COURSE_MNIST)")
    args = parser.parse_args(argv)
    if args.list:
        return args
    if not args.names:
        parser.error(f"name an experiment: {', '.join(EXPERIMENTS)}, or all")
    unknown = [name for name in args.names if name != "all" and name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment {unknown[0]!r}; the experiments are {', '.join(EXPERIMENTS)} (or all)")
    if args.mnist is None and os.environ.get("COURSE_MNIST", "download") == "download":
        parser.error(
            "MNIST is needed: set COURSE_MNIST=/path/to/dir (a folder holding train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz) or pass --mnist DIR"
        )
    args.names = list(EXPERIMENTS) if "all" in args.names else list(dict.fromkeys(args.names))
    args.out = args.out or (SMOKE_OUT if args.smoke else RESULTS)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.list:
        for entry in EXPERIMENTS.values():
            print(f"{entry.name:<10} {entry.title}")
        return 0
    course_code.setup(args.seed, dtype=torch.float32, threads=args.threads, quiet=True)
    for name in args.names:
        print(f"{name}: {EXPERIMENTS[name].title} ({'smoke' if args.smoke else 'full'} budget, {torch.get_num_threads()} threads)", flush=True)
        try:
            record = run_experiment(EXPERIMENTS[name], smoke=args.smoke, seed=args.seed, out=args.out, argv=argv, mnist=args.mnist)
        except data.DataUnavailableError as error:
            print(f"error: {str(error).splitlines()[0]} Set COURSE_MNIST=/path/to/dir or pass --mnist DIR.", file=sys.stderr)
            return 2
        print(f"{name}: wrote {args.out / (name + '.json')} in {record['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
