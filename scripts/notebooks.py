"""Execute the book's notebooks top to bottom, in place or only to time them.

    python scripts/notebooks.py execute [NOTEBOOK ...]   # write fresh outputs into the files
    python scripts/notebooks.py time    [NOTEBOOK ...]   # print a table of execution times

With no notebook named, every ``book/*.ipynb`` is run, in order. Progress bars are switched
off (``COURSE_PROGRESS=0``) exactly as under nbval, so the stored outputs are what CI sees.
The table gives wall-clock seconds and CPU seconds (user + system, of the notebook's kernel): with
the course's one thread, the CPU seconds are close to what the wall clock shows on a quiet
machine, and they grow much less than the wall clock when other jobs share it.
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # processes this one started and has waited for
    return usage.ru_utime + usage.ru_stime


def run(path: Path, timeout: int = 900) -> tuple[nbformat.NotebookNode, float, float]:
    """Execute one notebook in its own directory; return it with its outputs, the wall and the CPU seconds taken."""
    os.environ["COURSE_PROGRESS"] = "0"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,  # no timestamps: diffs show only what changed
        resources={"metadata": {"path": str(path.parent)}},
    )
    start, cpu = time.perf_counter(), _children_cpu()
    client.execute()  # starts the kernel as a child of this process and waits for it at the end
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb, seconds, cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["execute", "time"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    rows = []
    for path in paths:
        print(f"running {path} ...", file=sys.stderr, flush=True)
        nb, seconds, cpu = run(path)
        if args.action == "execute":
            nbformat.write(nb, path)
        rows.append((str(path), seconds, cpu))
    width = max(len(name) for name, *_ in rows)
    print(f"{'notebook':<{width}}  seconds  CPU seconds")
    for name, seconds, cpu in rows:
        print(f"{name:<{width}}  {seconds:7.1f}  {cpu:11.1f}")
    print(f"{'total':<{width}}  {sum(r[1] for r in rows):7.1f}  {sum(r[2] for r in rows):11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
