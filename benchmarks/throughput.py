"""How fast the course trains and evaluates the MNIST-size VAE, against a DataLoader loop and against the CPU's limit.

    python benchmarks/throughput.py [--repeats 3] [--n-train 60000] [--threads N] [--dtype float32|float64]

On ``models.VAE(784, 20, [400])`` (the PyTorch examples' architecture) with Adam and batch 128,
on a synthetic MNIST-sized tensor of random binary pixels (throughput does not depend on the
pixel values), it prints, side by side in one run:

1. ``training.fit`` against the textbook ``DataLoader`` loop with the same model, loss and optimizer,
   the two run alternately ``--repeats`` times (medians, samples per second, and their ratio);
2. the floating-point limit of this CPU for that model: the same matrix products a training step
   needs (forward, and backward to the weights and to every hidden layer), timed alone with
   ``torch.mm`` on preallocated tensors, as samples per second and GFLOP/s, and how close each loop
   comes to it;
3. the importance-sampling evaluation, ``training.log_px`` at K = 1,000: test images per second,
   and the process's peak memory before and after (it scores 100 images at a time, 500 samples
   per chunk).

Wall-clock figures depend on the machine and on its load; the CPU-time columns are fairer on a
shared machine.
"""

import argparse
import resource
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import course_code
from course_code import models, training

BATCH_SIZE = 128
X_DIM, HIDDEN, Z_DIM = 784, 400, 20


def new_model() -> models.VAE:
    torch.manual_seed(0)
    return models.VAE(X_DIM, Z_DIM, [HIDDEN])


def dataloader_fit(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """One epoch of the textbook loop: a shuffled DataLoader over a TensorDataset, the same loss and optimizer as ``fit``."""
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(x), batch_size=BATCH_SIZE, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for (batch,) in loader:
        loss, _ = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def course_fit(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    training.fit(model, x, epochs=1, batch_size=BATCH_SIZE, seed=seed, progress=False)


def timed(work) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_shapes(batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product in one training step of the MNIST-size VAE (bias adds and activations left out).

    Each linear layer (n_in → n_out) costs a forward product (batch × n_in) @ (n_in × n_out), a
    weight gradient (n_out × batch) @ (batch × n_in) and, except the first layer (whose input is the
    data), an input gradient (batch × n_out) @ (n_out × n_in).
    """
    layers = [(X_DIM, HIDDEN), (HIDDEN, 2 * Z_DIM), (Z_DIM, HIDDEN), (HIDDEN, X_DIM)]
    shapes = []
    for i, (n_in, n_out) in enumerate(layers):
        shapes += [(batch, n_in, n_out), (n_out, batch, n_in)]
        if i > 0:
            shapes.append((batch, n_out, n_in))
    return shapes


def matmul_limit(batch: int, steps: int) -> tuple[float, float, float]:
    """Wall-clock and CPU seconds per training step spent in its matrix products alone (over ``steps`` steps), and their GFLOP."""
    pairs = [(torch.rand(m, k), torch.rand(k, n), torch.empty(m, n)) for m, k, n in matmul_shapes(batch)]
    flops = sum(2 * m * k * n for m, k, n in matmul_shapes(batch))

    def step():
        for a, b, out in pairs:
            torch.mm(a, b, out=out)

    for _ in range(5):
        step()
    wall, cpu = timed(lambda: [step() for _ in range(steps)])
    return wall / steps, cpu / steps, flops / 1e9


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs of each loop, alternated (default 3)")
    parser.add_argument("--n-train", type=int, default=60_000, help="rows of the synthetic training set (default 60,000)")
    parser.add_argument("--n-test", type=int, default=1_000, help="test images scored at K = 1,000 (default 1,000)")
    parser.add_argument("--steps", type=int, default=200, help="training steps' worth of matrix products timed (default 200)")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: as course_code.setup)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32, as the CLI")
    args = parser.parse_args()
    course_code.setup(threads=args.threads, dtype=getattr(torch, args.dtype), quiet=True)
    print(
        f"course_code {course_code.__version__} · torch {torch.__version__} · {args.dtype} · "
        f"{torch.get_num_threads()} thread(s) · VAE {X_DIM}-{HIDDEN}-{Z_DIM}, batch {BATCH_SIZE}", flush=True,
    )
    x = torch.bernoulli(torch.full((args.n_train, X_DIM), 0.5), generator=torch.Generator().manual_seed(0))

    loops = {"course_code fit": course_fit, "DataLoader": dataloader_fit}
    for loop in loops.values():  # warm up both code paths once
        loop(new_model(), x[:1024])
    runs = {label: [] for label in loops}
    for _ in range(args.repeats):  # alternate, so that a change in the machine's load hits both
        for label, loop in loops.items():
            runs[label].append(timed(lambda: loop(new_model(), x)))
    rate = {label: [len(x) / statistics.median(r[i] for r in times) for i in (0, 1)] for label, times in runs.items()}

    wall, cpu, gflop = matmul_limit(BATCH_SIZE, steps=args.steps)
    limit = [BATCH_SIZE / wall, BATCH_SIZE / cpu]
    print(f"\n1. training, {len(x):,} samples per epoch, median of {args.repeats} epochs each (alternated)")
    print(f"  {'':<22} {'samples/s (wall)':>17} {'samples/s (CPU)':>16}   wall-clock epochs (s)")
    for label, (wall_rate, cpu_rate) in rate.items():
        spread = ", ".join(f"{r[0]:.1f}" for r in runs[label])
        print(f"  {label:<22} {wall_rate:>17,.0f} {cpu_rate:>16,.0f}   {spread}")
    ratio = [rate["course_code fit"][i] / rate["DataLoader"][i] for i in (0, 1)]
    print(f"  {'fit / DataLoader':<22} {ratio[0]:>16.2f}× {ratio[1]:>15.2f}×")
    steps = len(matmul_shapes(BATCH_SIZE))
    print(f"\n2. the CPU's limit: the {steps} matrix products of one step alone ({gflop:.3f} GFLOP), over {args.steps} steps")
    print(f"  {'matrix products only':<22} {limit[0]:>17,.0f} {limit[1]:>16,.0f}   ({gflop / wall:.1f} GFLOP/s wall, {gflop / cpu:.1f} per CPU second)")
    slower = [limit[i] / rate["course_code fit"][i] for i in (0, 1)]
    print(f"  {'limit / fit':<22} {slower[0]:>16.2f}× {slower[1]:>15.2f}×")

    x_test = x[: args.n_test]
    model = new_model()
    before = peak_memory_mb()
    wall, cpu = timed(lambda: training.log_px(model, x_test, n_samples=1000))
    print(f"\n3. importance sampling, K = 1,000, {len(x_test):,} images (100 at a time, 500 samples per chunk)")
    print(f"  {len(x_test) / wall:,.1f} test images/s (wall), {len(x_test) / cpu:,.1f} per CPU second; "
          f"peak memory {before:,.0f} MB before, {peak_memory_mb():,.0f} MB after", flush=True)


if __name__ == "__main__":
    main()
