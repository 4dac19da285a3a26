"""Train the course's VAE from the command line, on the digits or on full-size MNIST.

    python -m course_code.train --dataset mnist --data-dir ~/data --epochs 50 --latent-dim 16

It trains ``models.VAE`` with :func:`course_code.training.fit`, prints the test ELBO and an
importance-sampled test log-likelihood log p(x) in nats (chapter 4, eq. `eq-log-px-is`), and
saves the model (``model.pt``, read it back with ``training.load``) and a PNG of
reconstructions and samples (``samples.png``) into ``--out``. Each epoch prints its ELBO, its
time and the samples per second; ``--threads`` sets torch's threads (default: ``$COURSE_THREADS``
if set, else every core) and ``--device cuda`` (or ``mps``) trains and evaluates on a GPU when
there is one.

Four options shape the training: ``--activation`` (the hidden layers' nonlinearity),
``--lr-schedule cosine`` (the learning rate decays from ``--lr`` to 0 over all the epochs),
``--warmup-epochs N`` (the KL weight rises linearly from 0 to 1 over the first N epochs,
``training.linear_warmup``) and ``--minutes M`` (stop after the epoch in which M minutes of
training have passed). ``--preset best`` is the recipe the course proposes for MNIST on a CPU,
chosen in short trials at equal wall time against the PyTorch examples' recipe (784-400-20, Adam
0.001, batch 128):

    python -m course_code.train --dataset mnist --data-dir ~/data --preset best

It sets ``PRESETS["best"]``: 784-512-512-32 with ELU units, batch 256, Adam 0.003 with a cosine
decay to 0, a KL warm-up over the first 2 epochs, and 317 epochs within 30 minutes: the number
``python -m course_code.reproduce recipe`` planned from the time of an epoch on the course's
2-core reference machine (5.7 s). Options given beside it override its values. Where 317 epochs
take longer than 30 minutes, the run stops before the learning rate reaches 0, so give
``--epochs`` what the machine trains in that time (the first epochs' times are printed).

The output folder is created and checked before anything else. Both outputs are written under
temporary names as soon as training ends and renamed into place together, so ``--out`` never
holds a model next to another run's figure. Ctrl-C during the evaluation keeps both; earlier, it
keeps neither. Errors are one line on stderr (exit code 2 for the arguments and the data, 1 when
training diverges or a file cannot be written, 130 after Ctrl-C).
"""

import argparse
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import course_code
from course_code import data, models, training
from course_code.reproduce import RECIPES

DEVICES = ("cpu", "cuda", "mps")
# The recipe of ``python -m course_code.reproduce recipe``, with the epochs its calibration planned for 30 minutes.
PRESETS = {"best": {**RECIPES["best"], "epochs": 317, "minutes": 30.0}}


def option(convert, accept, wanted: str):
    """An argparse type: ``convert`` the text, keep the value if ``accept`` says so, else say it must be ``wanted``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = option(int, lambda value: value >= 1, "a positive integer")
seed_value = option(int, lambda value: 0 <= value < 2**32, "an integer from 0 to 2**32 - 1")  # what every generator accepts
learning_rate = option(float, lambda value: math.isfinite(value) and value > 0, "a positive number such as 0.001")
count = option(int, lambda value: value >= 0, "a whole number, 0 or more")
minutes = option(float, lambda value: math.isfinite(value) and value > 0, "a positive number of minutes such as 30")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def device_available(name: str) -> bool:
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m course_code.train", description="Train a VAE and report its test ELBO and log-likelihood."
    )
    parser.add_argument("--dataset", choices=data.DATASETS, default="digits", help="default: digits (built in)")
    parser.add_argument(
        "--data-dir", type=Path,
        help="a local MNIST copy: a folder with the four original .gz files, or torchvision's <dir>/MNIST/raw/",
    )
    parser.add_argument(
        "--binarize", choices=("threshold", "dynamic"), default="dynamic",
        help="threshold at 0.5, or draw fresh Bernoulli pixels every epoch (test set drawn once; default)",
    )
    parser.add_argument("--epochs", type=positive_int, default=50, help="passes over the training set (default 50)")
    parser.add_argument("--latent-dim", type=positive_int, default=2, help="size of z (default 2)")
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[256], help="hidden widths (default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    parser.add_argument("--lr", type=learning_rate, default=1e-3, help="Adam's learning rate (default 0.001)")
    parser.add_argument(
        "--activation", choices=tuple(models.ACTIVATIONS), default="relu", help="hidden layers' nonlinearity (default relu)"
    )
    parser.add_argument(
        "--lr-schedule", choices=training.LR_SCHEDULES, default="constant",
        help="constant, or cosine: decay from --lr to 0 over all the epochs, step by step (default constant)",
    )
    parser.add_argument(
        "--warmup-epochs", type=count, default=0, help="raise the KL weight linearly from 0 to 1 over this many epochs (default 0)"
    )
    parser.add_argument(
        "--minutes", type=minutes, default=None, help="stop after the epoch in which this much training time has passed"
    )
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default=None,
        help="best: the course's proposed CPU recipe for MNIST, "
        + ", ".join(f"--{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
                    for key, value in PRESETS["best"].items())
        + "; options given beside it override it",
    )
    parser.add_argument(
        "--seed", type=seed_value, default=0, help="seeds the weights, the minibatches and the sampling (default 0)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>)")
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32",
        help="floating-point type (default float32, fast at MNIST scale; the notebooks use float64)",
    )
    parser.add_argument(
        "--iw-samples", type=positive_int, default=1000, help="importance samples per test image for log p(x) (default 1000)"
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to train and evaluate (default cpu)")
    parser.add_argument(
        "--threads", type=positive_int, default=None,
        help=f"torch's CPU threads (default: $COURSE_THREADS if set, else all {os.cpu_count()} cores)",
    )
    preset = parser.parse_known_args(argv)[0].preset
    if preset is not None:
        parser.set_defaults(**PRESETS[preset])  # defaults only: an option given on the command line still wins
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.dataset != "mnist":
        parser.error("--data-dir is for --dataset mnist")
    if not device_available(args.device):
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no {args.device} device here; use --device cpu")
    if args.out is None:
        args.out = Path("runs") / args.dataset
    if args.threads is None:
        args.threads = int(os.environ.get("COURSE_THREADS") or os.cpu_count() or 1)
    return args


def prepare_output(out: Path) -> list[Path]:
    """Create ``out`` and check a file can be written in it, before any time is spent training; return the folders created."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder; choose another --out")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = training.temporary_name(out / "probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        remove_empty(created)
        raise OSError(f"--out {out} cannot be written to ({error.strerror or error}); choose another --out") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, innermost first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def epoch_printer(epochs: int, n: int):
    """An ``on_epoch`` callback for ``training.fit`` that prints each epoch's ELBO, seconds and samples per second."""
    previous = [0.0]  # the cumulative training time at the end of the previous epoch

    def report(epoch: int, record: dict) -> None:
        seconds = record["time"] - previous[0]
        previous[0] = record["time"]
        print(
            f"epoch {epoch:>{len(str(epochs))}}/{epochs}  ELBO {record['elbo']:9.2f}  "
            f"{seconds:7.2f} s  {n / seconds:10,.0f} samples/s",
            flush=True,
        )

    return report


def save_figure(model: models.VAE, dataset: data.Dataset, path: Path, seed: int) -> None:
    """Test images above their reconstructions, and 100 samples from the model, as a PNG."""
    import matplotlib.pyplot as plt

    from course_code import plots

    generator = torch.Generator().manual_seed(seed)
    x = dataset.x_test[:10]
    pairs = torch.cat([x, model.reconstruct(x, generator=generator)])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 8), height_ratios=(1, 5))
    plots.image_grid(pairs, dataset.image_shape, nrow=10, title="Test images (top) and reconstructions", ax=top)
    plots.image_grid(model.sample(100, generator=generator), dataset.image_shape, nrow=10, title="Samples", ax=bottom)
    try:
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


@dataclass
class Outputs:
    """The run's files: each written under a temporary name, then all renamed into place together."""

    pending: dict[Path, Path] = field(default_factory=dict)  # temporary file -> final name
    saved: bool = False

    def publish(self) -> None:
        """Rename every temporary file to its final name, with Ctrl-C held back until all are in place."""
        blocking = hasattr(signal, "pthread_sigmask")
        if blocking:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for tmp, final in self.pending.items():
                os.replace(tmp, final)
            self.pending.clear()
            self.saved = True
        finally:
            if blocking:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def discard(self) -> None:
        for tmp in self.pending:
            tmp.unlink(missing_ok=True)
        self.pending.clear()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outputs = Outputs()
    created: list[Path] = []  # the folders this run created, removed again if it saves nothing
    code = 1
    try:
        created += prepare_output(args.out)
        code = run(args, outputs)
    except KeyboardInterrupt:
        code = 130
        if not outputs.saved and len(outputs.pending) == 2:  # training finished, both files written: keep them
            outputs.publish()
            print(f"interrupted during the evaluation; the trained model is saved in {args.out}", file=sys.stderr)
        elif outputs.saved:
            print(f"interrupted; the trained model is saved in {args.out}", file=sys.stderr)
        else:
            print("interrupted; nothing was saved", file=sys.stderr)
    except data.DataUnavailableError as error:
        code = 2
        first_line = str(error).splitlines()[0]
        print(
            f"error: {first_line} Pass --data-dir DIR for a local copy (DIR holding the four original .gz files, "
            "or DIR/MNIST/raw/ in torchvision's layout), or use --dataset digits.",
            file=sys.stderr,
        )
    except (FloatingPointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
    finally:
        outputs.discard()
        if not outputs.saved:
            remove_empty(created)
    return code


def run(args: argparse.Namespace, outputs: Outputs) -> int:
    """Load the data, train, write both outputs under temporary names, evaluate, then rename the outputs into place."""
    course_code.setup(args.seed, dtype=getattr(torch, args.dtype), threads=args.threads)
    dataset = data.load(args.dataset, binarize=args.binarize, mnist=args.data_dir)  # the course's fixed split
    print(f"{dataset!r}")
    torch.manual_seed(args.seed)
    model = models.VAE(dataset.dim, args.latent_dim, args.hidden, activation=args.activation)
    progress = training.show_progress(None)
    print(f"training on {args.device} with {torch.get_num_threads()} thread(s)")
    steps_per_epoch = math.ceil(len(dataset.x_train) / args.batch_size)
    beta = training.linear_warmup(args.warmup_epochs * steps_per_epoch) if args.warmup_epochs else 1.0
    history = training.fit(
        model, dataset.x_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=beta,
        lr_schedule=args.lr_schedule, max_seconds=None if args.minutes is None else 60 * args.minutes,
        dynamic_binarization=args.binarize == "dynamic", seed=args.seed, device=args.device, progress=progress,
        on_epoch=epoch_printer(args.epochs, len(dataset.x_train)),
    )
    seconds, epochs_done = history["time"][-1], len(history["elbo"])
    if "stopped_after_epoch" in history:
        print(f"stopped after epoch {epochs_done} of {args.epochs}: the {args.minutes:g} minutes of --minutes had passed")
    print(f"trained in {seconds:.1f} s: {epochs_done * len(dataset.x_train) / seconds:,.0f} samples/s on average")
    model.to("cpu")
    model_path, figure_path = args.out / "model.pt", args.out / "samples.png"
    model_tmp, figure_tmp = training.temporary_name(model_path), training.temporary_name(figure_path)
    training.save(model, model_tmp)  # before the long evaluation, so that Ctrl-C there keeps the model
    outputs.pending[model_tmp] = model_path
    try:
        save_figure(model, dataset, figure_tmp, args.seed)
    except BaseException:
        figure_tmp.unlink(missing_ok=True)
        raise
    outputs.pending[figure_tmp] = figure_path
    model.to(args.device)
    x_test = dataset.x_test.to(args.device)
    torch.manual_seed(args.seed)
    elbo = training.evaluate(model, x_test)["elbo"]
    start = time.perf_counter()
    log_px = training.log_px(model, x_test, args.iw_samples, args.seed, progress=progress).mean().item()
    seconds = time.perf_counter() - start
    outputs.publish()
    print(f"test ELBO     {elbo:9.2f} nats per image")
    print(f"test log p(x) {log_px:9.2f} nats per image (importance sampling, K = {args.iw_samples:,})")
    print(f"evaluated in {seconds:.1f} s: {len(x_test) / seconds:,.0f} test images/s at K = {args.iw_samples:,}")
    print(f"saved {model_path} and {figure_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
