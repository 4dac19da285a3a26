"""Throughput of the course's training loop against a plain DataLoader loop around the same model.

    python benchmarks/throughput.py [--repeats 5] [--threads N] [--dtype float32|float64]

Both loops train the default VAE (``models.VAE`` with its default widths) with Adam, batch size
128, the same loss and the same number of epochs, on two datasets: the embedded digits
(1,437 × 64) and a synthetic MNIST-sized tensor (60,000 × 784 random binary pixels). The two
loops run alternately, several times, and the medians in samples per second are printed with
their ratio. Wall-clock figures depend on the machine and on its load.
"""

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import course_code
from course_code import data, models, training

BATCH_SIZE = 128


def dataloader_fit(model: torch.nn.Module, x: torch.Tensor, epochs: int, seed: int = 0) -> None:
    """The textbook loop: a shuffled DataLoader over a TensorDataset, the same loss and optimizer as ``fit``."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(x), batch_size=BATCH_SIZE, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for (batch,) in loader:
            loss, _ = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def course_fit(model: torch.nn.Module, x: torch.Tensor, epochs: int, seed: int = 0) -> None:
    training.fit(model, x, epochs=epochs, batch_size=BATCH_SIZE, seed=seed, progress=False)


def samples_per_second(loop, x: torch.Tensor, epochs: int) -> tuple[float, float]:
    """Samples per second of wall time and per second of this process's CPU time."""
    torch.manual_seed(0)
    model = models.VAE(x_dim=x.shape[1])
    wall, cpu = time.perf_counter(), time.process_time()
    loop(model, x, epochs)
    return epochs * len(x) / (time.perf_counter() - wall), epochs * len(x) / (time.process_time() - cpu)


def compare(name: str, x: torch.Tensor, epochs: int, repeats: int) -> None:
    loops = {"course_code fit": course_fit, "DataLoader": dataloader_fit}
    rates = {label: [] for label in loops}
    for loop in loops.values():  # warm up both code paths once
        samples_per_second(loop, x[:1024], 1)
    for _ in range(repeats):  # alternate, so that a change in the machine's load hits both
        for label, loop in loops.items():
            rates[label].append(samples_per_second(loop, x, epochs))
    print(f"\n{name}: {len(x):,} × {x.shape[1]}, {epochs} epoch(s), batch {BATCH_SIZE}, median of {repeats} runs")
    print(f"  {'':<16} {'samples/s (wall)':>17} {'samples/s (CPU)':>16}   wall-clock runs")
    medians = {}
    for label, runs in rates.items():
        medians[label] = [statistics.median(r[i] for r in runs) for i in (0, 1)]
        spread = ", ".join(f"{r[0]:,.0f}" for r in runs)
        print(f"  {label:<16} {medians[label][0]:>17,.0f} {medians[label][1]:>16,.0f}   {spread}")
    wall, cpu = (medians["course_code fit"][i] / medians["DataLoader"][i] for i in (0, 1))
    print(f"  {'ratio':<16} {wall:>16.2f}× {cpu:>15.2f}×", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each loop per dataset (default 5)")
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--mnist-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: as course_code.setup)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32, as the CLI")
    args = parser.parse_args()
    course_code.setup(threads=args.threads, dtype=getattr(torch, args.dtype), quiet=True)
    print(
        f"course_code {course_code.__version__} · torch {torch.__version__} · {args.dtype} · "
        f"{torch.get_num_threads()} threads", flush=True,
    )
    compare("digits", data.load_digits().x_train, args.digits_epochs, args.repeats)
    synthetic = torch.bernoulli(torch.full((60_000, 784), 0.5), generator=torch.Generator().manual_seed(0))
    compare("synthetic MNIST-sized tensor", synthetic, args.mnist_epochs, args.repeats)


if __name__ == "__main__":
    main()
