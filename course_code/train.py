"""Train the course's VAE from the command line, on the digits or on full-size MNIST.

    python -m course_code.train --dataset mnist --data-dir ~/data --epochs 50 --latent-dim 16

It trains ``models.VAE`` with :func:`course_code.training.fit`, prints the test ELBO and an
importance-sampled test log-likelihood log p(x) in nats (chapter 4, eq. `eq-log-px-is`), and
saves the model (``model.pt``, read it back with ``training.load``) and a PNG of
reconstructions and samples (``samples.png``) into ``--out``.
"""

import argparse
import sys
from pathlib import Path

import torch

import course_code
from course_code import data, models, training


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m course_code.train", description="Train a VAE and report its test ELBO and log-likelihood."
    )
    parser.add_argument("--dataset", choices=data.DATASETS, default="digits", help="default: digits (built in)")
    parser.add_argument("--data-dir", type=Path, help="a local MNIST copy in torchvision's layout (<dir>/MNIST/raw/…)")
    parser.add_argument(
        "--binarize", choices=("threshold", "dynamic"), default="dynamic",
        help="threshold at 0.5, or draw fresh Bernoulli pixels every epoch (test set drawn once; default)",
    )
    parser.add_argument("--epochs", type=positive_int, default=50, help="passes over the training set (default 50)")
    parser.add_argument("--latent-dim", type=positive_int, default=2, help="size of z (default 2)")
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[256], help="hidden widths (default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the minibatches and the sampling (default 0)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<dataset>)")
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32",
        help="floating-point type (default float32, fast at MNIST scale; the notebooks use float64)",
    )
    parser.add_argument(
        "--iw-samples", type=positive_int, default=1000, help="importance samples per test image for log p(x) (default 1000)"
    )
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.dataset != "mnist":
        parser.error("--data-dir is for --dataset mnist")
    if args.out is None:
        args.out = Path("runs") / args.dataset
    return args


@torch.no_grad()
def mean_log_px(model: models.VAE, x: torch.Tensor, n_samples: int, seed: int, progress: bool) -> float:
    """The average importance-sampled log p(x) over ``x``, a hundred images at a time to bound memory."""
    generator = torch.Generator().manual_seed(seed)
    chunks = x.split(100)
    total = 0.0
    for chunk in training.progress_bar(chunks, len(chunks), "log p(x)", progress):
        total += model.log_px(chunk, n_samples=n_samples, generator=generator).sum().item()
    return total / len(x)


def save_figure(model: models.VAE, dataset: data.Dataset, path: Path, seed: int) -> None:
    """Test images above their reconstructions, and 100 samples from the model."""
    import matplotlib.pyplot as plt

    from course_code import plots

    generator = torch.Generator().manual_seed(seed)
    x = dataset.x_test[:10]
    pairs = torch.cat([x, model.reconstruct(x, generator=generator)])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 8), height_ratios=(1, 5))
    plots.image_grid(pairs, dataset.image_shape, nrow=10, title="Test images (top) and reconstructions", ax=top)
    plots.image_grid(model.sample(100, generator=generator), dataset.image_shape, nrow=10, title="Samples", ax=bottom)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    course_code.setup(args.seed, dtype=getattr(torch, args.dtype))
    try:
        dataset = data.load(args.dataset, binarize=args.binarize, mnist=args.data_dir)  # the course's fixed split
    except data.DataUnavailableError as error:
        first_line = str(error).splitlines()[0]
        print(
            f"error: {first_line} Pass --data-dir DIR for a local copy (DIR/MNIST/raw/ in torchvision's layout), "
            "or use --dataset digits.",
            file=sys.stderr,
        )
        return 2
    print(f"{dataset!r}")
    torch.manual_seed(args.seed)
    model = models.VAE(dataset.dim, args.latent_dim, args.hidden)
    progress = training.show_progress(None)
    training.fit(
        model, dataset.x_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        dynamic_binarization=args.binarize == "dynamic", seed=args.seed, progress=progress,
    )
    torch.manual_seed(args.seed)
    elbo = training.evaluate(model, dataset.x_test)["elbo"]
    log_px = mean_log_px(model, dataset.x_test, args.iw_samples, args.seed, progress)
    print(f"test ELBO     {elbo:9.2f} nats per image")
    print(f"test log p(x) {log_px:9.2f} nats per image (importance sampling, K = {args.iw_samples:,})")
    args.out.mkdir(parents=True, exist_ok=True)
    training.save(model, args.out / "model.pt")
    save_figure(model, dataset, args.out / "samples.png", args.seed)
    print(f"saved {args.out / 'model.pt'} and {args.out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
