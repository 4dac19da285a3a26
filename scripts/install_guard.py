"""Write the repository address from _config.yml into the install guard of every notebook.

    python scripts/install_guard.py [NOTEBOOK ...]   # default: every book/*.ipynb

The first code cell of a chapter installs course_code with ``%pip install "git+ADDRESS"`` when it
is missing (on Colab). Only that line of that cell changes: the other cells and every output stay
as they are, so no notebook needs to be executed again.
"""

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIP_LINE = re.compile(r'(%pip install [^\n]*")git\+[^"]*(")')


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def point_guard(path: Path, url: str) -> bool:
    """Make the notebook's install guard install from `url`; return whether the file changed."""
    nb = nbformat.read(path, as_version=4)
    first = next((cell for cell in nb.cells if cell.cell_type == "code"), None)
    if first is None or len(PIP_LINE.findall(first.source)) != 1:
        raise SystemExit(f"{path}: its first code cell has no single `%pip install \"git+...\"` line to point at {url}")
    source = PIP_LINE.sub(lambda m: f"{m.group(1)}git+{url}{m.group(2)}", first.source)
    if source == first.source:
        return False
    first.source = source
    nbformat.write(nb, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    url = repository_url()
    for path in args.notebooks or sorted((ROOT / "book").glob("*.ipynb")):
        print(f"{path}: {'now installs from ' + url if point_guard(path, url) else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
