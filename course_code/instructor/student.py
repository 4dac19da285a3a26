"""The student edition: the book's notebooks with every solution replaced by a stub, and an HTML
build of the book without solutions.

In a student notebook, code between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` becomes a TODO
comment and ``raise NotImplementedError("exercise <label>")`` at the same indentation; a solution
code cell without markers becomes a stub cell, which keeps the cell's first line when that is a
comment saying what the cell computes; a solution's markdown becomes a prompt for the
learner's answer. Everything else is kept, with outputs cleared, except that the roles Jupyter
cannot render (``{eq}`` and ``{glue:text}``) become plain text in the Markdown outside solutions.
:func:`restore` puts a notebook's solutions back into its student version, which is how the tests
prove that nothing but solutions (and those roles) was touched.
"""

import copy
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from course_code.instructor import book
from course_code.instructor.book import ExerciseFormatError

TODO_BLOCK = "# TODO (exercise {label}): replace this line and the next with your code."
TODO_CELL = "# TODO (exercise {label}): write your code for this exercise in this cell."
RAISE = 'raise NotImplementedError("exercise {label}")'
PROMPT = "**Your answer** (exercise {label}): replace this line with your derivation or explanation."

_STUB = re.compile(
    r'^(?P<indent>[ \t]*)# TODO \(exercise (?P<label>[^)\s]+)\): (?P<what>[^\n]*)\n'
    r'(?P=indent)raise NotImplementedError\("exercise (?P=label)"\)[ \t]*$',
    re.MULTILINE,
)
_PROMPT = re.compile(r"^\*\*Your answer\*\* \(exercise (?P<label>[^)\s]+)\): replace this line with your derivation or explanation\.$", re.MULTILINE)


@dataclass
class Piece:
    """One part of a solution that the learner writes: its kind (block, cell or text) and the reference text."""

    kind: str
    text: str


@dataclass
class Edition:
    """A notebook's student version and the solution pieces its stubs replaced, by exercise label."""

    notebook: nbformat.NotebookNode
    pieces: dict[str, list[Piece]] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for pieces in self.pieces.values() for p in pieces)


def _stub(kind: str, label: str, indent: str = "") -> str:
    todo = TODO_BLOCK if kind == "block" else TODO_CELL
    return f"{indent}{todo.format(label=label)}\n{indent}{RAISE.format(label=label)}"


def _stub_code(source: str, label: str, pieces: list[Piece], where: str) -> str:
    """A solution code cell for the learner: each marked block, or else the whole cell, becomes a stub."""
    blocks = book.marked_blocks(source, where)
    if not blocks:
        first, _, rest = source.partition("\n")
        if first.startswith("# ") and rest.strip():  # the cell's first line says what it computes: keep it
            pieces.append(Piece("cell", rest))
            return first + "\n" + _stub("cell", label)
        pieces.append(Piece("cell", source))
        return _stub("cell", label)
    parts, position = [], 0
    for start, stop, indent in blocks:
        pieces.append(Piece("block", source[start:stop]))
        parts += [source[position:start], _stub("block", label, indent)]
        position = stop
    return "".join(parts) + source[position:]


_EQ_ROLE = re.compile(r"\{eq\}`([^`]+)`")
_GLUE_ROLE = re.compile(r"\{glue:text\}`([^`]+)`")
_EQ_LABEL = re.compile(r"\$\$[ \t]*\(([^)\s]+)\)")
_GLUE_CALL = re.compile(r"\bglue\(\s*[\"']([^\"']+)[\"']")


def equation_labels(notebooks: dict[str, nbformat.NotebookNode]) -> dict[str, str]:
    """Where each labelled equation ``$$ … $$ (label)`` is: label → name of the notebook defining it."""
    return {label: name for name, nb in notebooks.items() for cell in nb.cells if cell.cell_type == "markdown"
            for label in _EQ_LABEL.findall(cell.source)}


def _glued(nb: nbformat.NotebookNode) -> dict[str, tuple[int, str]]:
    """Every value a notebook glues: name → (index of the cell that glues it, its text as the book shows it)."""
    found = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for name in _GLUE_CALL.findall(cell.source):
            found[name] = (index, "")
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get("application/papermill.record/text/plain")
            if name and text is not None:
                text = text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
                found[name] = (index, text)
    return found


def plain_roles(nb: nbformat.NotebookNode, name: str, solutions: list, equations: dict[str, str] | None = None,
                render: bool = True) -> None:
    """Turn the ``{eq}`` and ``{glue:text}`` roles of the Markdown outside solutions into the text the book shows.

    An equation becomes its label in parentheses, as Jupyter shows it next to the equation (with the notebook
    that holds it, when another one does); a glued value becomes its text. Quoting a value that a solution
    computes is an error: the student edition would give the result away. With ``render`` false, only that is checked.
    """
    inside = {i for s in solutions for i in range(s.start, s.end + 1)}
    owner = {i: s.label for s in solutions for i in range(s.start, s.end + 1)}
    glued = _glued(nb)

    def equation(match: re.Match) -> str:
        where = (equations or {}).get(match[1], name)
        return f"({match[1]})" if where == name else f"({match[1]}) in {where}"

    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or index in inside:
            continue
        for glue in _GLUE_ROLE.findall(cell.source):
            if glue in glued and glued[glue][0] in owner:
                raise ExerciseFormatError(f"{name}, cell {index + 1}: the text quotes {{glue:text}}`{glue}`, a result of "
                                          f"exercise {owner[glued[glue][0]]}: it would be given away before the exercise")
        if not render:
            continue
        text = _EQ_ROLE.sub(equation, cell.source)
        cell.source = _GLUE_ROLE.sub(lambda m: glued[m[1]][1] if glued.get(m[1], (0, ""))[1] else m[0], text)


def student_notebook(nb: nbformat.NotebookNode, name: str = "notebook", keep_outputs: bool = False,
                     equations: dict[str, str] | None = None) -> Edition:
    """The student version of a notebook: solutions become stubs and prompts; outputs cleared, counts reset.

    With ``keep_outputs`` the cells outside solutions keep their outputs and the roles stay as they are
    (for the HTML edition, which renders them); ``equations`` says which notebook holds each equation label.
    """
    nb = copy.deepcopy(nb)
    edition = Edition(nb)
    solution_cells = set()
    found = book.solutions(nb, name)
    plain_roles(nb, name, found, equations, render=not keep_outputs)
    for solution in found:
        pieces = edition.pieces.setdefault(solution.label, [])
        solution_cells.update(range(solution.start, solution.end + 1))
        prompt = PROMPT.format(label=solution.label)
        for index in solution.inner:
            cell = nb.cells[index]
            if not cell.source.strip():
                continue
            if cell.cell_type != "code":
                pieces.append(Piece("text", cell.source))
                cell.source = prompt
                continue
            cell.source = _stub_code(cell.source, solution.label, pieces, f"{name}, cell {index + 1}")
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code" and (not keep_outputs or index in solution_cells):
            cell.outputs, cell.execution_count = [], None
    return edition


def restore(student: nbformat.NotebookNode, pieces: dict[str, list[Piece]]) -> nbformat.NotebookNode:
    """Put the solution pieces back in place of the stubs and prompts of a student notebook."""
    nb = copy.deepcopy(student)
    queues = {label: list(p) for label, p in pieces.items()}

    def take(label: str, kind: str) -> str:
        queue = queues.get(label)
        if not queue or queue[0].kind != kind:
            raise ExerciseFormatError(f"no {kind} solution left for exercise {label}")
        return queue.pop(0).text

    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = _STUB.sub(lambda m: take(m["label"], "block" if m["what"].startswith("replace") else "cell"), cell.source)
        else:
            cell.source = _PROMPT.sub(lambda m: take(m["label"], "text"), cell.source)
    left = {label: len(q) for label, q in queues.items() if q}
    if left:
        raise ExerciseFormatError(f"solutions without a stub to put them in: {left}")
    return nb


def first_stub(nb: nbformat.NotebookNode) -> tuple[int, str] | None:
    """Index and exercise label of the first code cell holding a stub, or None."""
    for index, cell in enumerate(nb.cells):
        match = _STUB.search(cell.source) if cell.cell_type == "code" else None
        if match:
            return index, match["label"]
    return None


def html_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The notebook as the student HTML shows it: outputs kept, solutions (and their stubs) removed from the page."""
    nb = student_notebook(nb, name, keep_outputs=True).notebook
    for solution in book.solutions(nb, name):
        for index in range(solution.start, solution.end + 1):
            nb.cells[index].metadata.setdefault("tags", []).append("remove-cell")
    return nb


def write_notebooks(root: Path, out: Path) -> list[tuple[Path, Edition]]:
    """Write the student version of every notebook of the book into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    written, notebooks = [], {path.name: book.read(path) for path in book.toc_notebooks(root)}
    equations = equation_labels(notebooks)
    for path in book.toc_notebooks(root):
        edition = student_notebook(notebooks[path.name], path.name, equations=equations)
        target = out / path.name
        nbformat.write(edition.notebook, target)
        written.append((target, edition))
    return written


def _student_config(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["title"] = f"{config.get('title', 'The book')} (student edition)"
    config.pop("launch_buttons", None)  # they would open the notebooks with solutions
    # Gated solutions are already gone from the notebooks; this hides any plain {solution} directive.
    # (On gated solutions hide_solutions alone is not enough: sphinx-exercise 1.2 then fails on the
    # orphaned {solution-end}, and the cells between the two directives would stay on the page.)
    config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    return config


def stage_html_sources(root: Path, staging: Path) -> None:
    """Copy the book's sources to ``staging`` with solutions removed from every notebook and hidden by sphinx-exercise."""
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(root / "book", staging / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for name in ("_toc.yml", "references.bib"):
        if (root / name).exists():
            shutil.copy2(root / name, staging / name)
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    (staging / "_config.yml").write_text(yaml.safe_dump(_student_config(config), allow_unicode=True, sort_keys=False), encoding="utf-8")
    for path in book.toc_notebooks(root):
        target = staging / path.relative_to(root)
        nbformat.write(html_notebook(book.read(path), path.name), target)


def build_html(root: Path, out: Path) -> Path:
    """Build the book without solutions into ``out``; return the path of its front page."""
    with tempfile.TemporaryDirectory(prefix="student-html-") as scratch:
        staging = Path(scratch) / "book"
        stage_html_sources(root, staging)
        command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(staging), "--builder", "html"]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError("the student HTML build failed:\n" + "\n".join((run.stdout + run.stderr).splitlines()[-30:]))
        if out.exists():
            shutil.rmtree(out)
        shutil.move(staging / "_build" / "html", out)
    return out / "index.html"
