"""The book's table of contents and its notebooks agree, and every notebook is committed executed."""

import ast
import functools
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters") or []:
            files.append(chapter["file"])
            files += [section["file"] for section in chapter.get("sections", [])]
    return files


def toc_notebooks() -> list[Path]:
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


def test_every_toc_entry_exists():
    missing = [f for f in toc_files() if not any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"


def test_every_notebook_is_in_the_toc():
    listed = {p.resolve() for p in toc_notebooks()}
    stray = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "book").rglob("*.ipynb"))
             if ".ipynb_checkpoints" not in p.parts and p.resolve() not in listed]
    assert not stray, f"notebooks missing from _toc.yml: {stray}"


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_committed_executed_in_order(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code, f"{path.name} has no code cells"
    counts = [c["execution_count"] for c in code]
    assert None not in counts, f"{path.name}: {counts.count(None)} code cells were never executed"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not one clean top-to-bottom run: {counts}"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name} was committed with an error output"


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_starts_with_setup(path):
    nb = json.loads(path.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    first = next(src for src in code if "course_code" in src)
    assert "course_code.setup(" in first, f"{path.name}: the first course_code cell must call course_code.setup()"


INSTALL_GUARD = """
try:
    import course_code
except ImportError:
    %pip install --quiet "git+{url}"
    import course_code
"""


def code_lines(source: str) -> list[str]:
    """The lines of a cell without comments and blank lines, each with its whitespace normalized."""
    lines = (line.split("#", 1)[0] for line in source.splitlines())
    return [" ".join(line.split()) for line in lines if line.strip()]


def first_code_cell(path: Path) -> str:
    nb = json.loads(path.read_text())
    return next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def install_guard() -> str:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return INSTALL_GUARD.format(url=url)


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_first_cell_installs_course_code_when_missing(path):
    """On Binder or Colab, opened from a launch button, a chapter installs course_code from the repository."""
    guard = code_lines(install_guard())
    first = code_lines(first_code_cell(path))
    assert first[:len(guard)] == guard, (
        f"{path.name}: the first code cell must begin with the guarded install of course_code from "
        f"_config.yml's repository.url (python scripts/install_guard.py writes it):\n{install_guard()}")


def test_install_guard_does_nothing_where_course_code_is_installed():
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(install_guard())
    assert "get_ipython().run_line_magic('pip'" in python, python

    def no_ipython():
        pytest.fail("the guard ran %pip although course_code is installed")

    namespace = {"get_ipython": no_ipython}
    exec(python, namespace)
    assert Path(namespace["course_code"].__file__).resolve().is_relative_to(ROOT), "not this repository's course_code"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(path: Path) -> set[str]:
    """The top-level modules a notebook's code cells import."""
    from IPython.core.inputtransformer2 import TransformerManager

    nb = json.loads(path.read_text())
    modules = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(TransformerManager().transform_cell("".join(cell["source"])))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


@functools.cache
def launch_modules() -> frozenset[str]:
    """What a notebook can import on Binder or Colab once its first cell installed course_code: the
    standard library, IPython (the kernel), course_code and everything its declared dependencies bring."""
    from importlib import metadata

    from packaging.requirements import Requirement

    distributions, todo = set(), ["course_code"]
    while todo:
        name = canonical(todo.pop())
        if name in distributions:
            continue
        distributions.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in map(Requirement, requirements):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    modules = set(sys.stdlib_module_names) | {"IPython", "course_code"}
    return frozenset(modules | {module for module, owners in metadata.packages_distributions().items()
                                if any(canonical(owner) in distributions for owner in owners)})


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_imports_only_what_installing_course_code_brings(path):
    """A notebook opened from a launch button has only what `pip install course_code` installed."""
    missing = sorted(imported_modules(path) - launch_modules())
    assert not missing, (f"{path.name} imports {missing}, which installing course_code does not bring: "
                         "add them to pyproject.toml's dependencies, or import them through course_code")
