"""Execute the book's notebooks top to bottom, in place or only to time them.

    python scripts/notebooks.py execute [NOTEBOOK ...]   # write fresh outputs into the files
    python scripts/notebooks.py time    [NOTEBOOK ...]   # print a table of execution times

With no notebook named, every ``book/*.ipynb`` is run, in order. Progress bars are switched
off (``COURSE_PROGRESS=0``) exactly as under nbval, so the stored outputs are what CI sees.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path, timeout: int = 900) -> tuple[nbformat.NotebookNode, float]:
    """Execute one notebook in its own directory; return it with its outputs and the seconds taken."""
    os.environ["COURSE_PROGRESS"] = "0"
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,  # no timestamps: diffs show only what changed
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["execute", "time"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    rows = []
    for path in paths:
        print(f"running {path} ...", file=sys.stderr, flush=True)
        nb, seconds = run(path)
        if args.action == "execute":
            nbformat.write(nb, path)
        rows.append((str(path), seconds))
    width = max(len(name) for name, _ in rows)
    print(f"{'notebook':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(f"{'total':<{width}}  {sum(s for _, s in rows):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
