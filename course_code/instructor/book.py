"""The book as the instructor tools read it: its notebooks, their exercises, solutions and checks.

A solution is gated (sphinx-exercise): a markdown cell holding only ``{solution-start} <label>``, the
solution's cells, and a markdown cell holding only ``{solution-end}``. Inside a solution, code between a
``# BEGIN SOLUTION`` and a ``# END SOLUTION`` line is the part a learner writes; a code cell without
these markers is the learner's as a whole; markdown is the learner's answer in words.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
_FENCE = r"^[ \t]*(?P<fence>`{3,}|:{3,})[ \t]*"
SOLUTION_START = re.compile(_FENCE + r"\{solution-start\}[ \t]*(?P<label>\S*)", re.MULTILINE)
SOLUTION_END = re.compile(_FENCE + r"\{solution-end\}", re.MULTILINE)
_EXERCISE_LABEL = re.compile(r"^[ \t]*:label:[ \t]*(\S+)", re.MULTILINE)
_CHECK_CALL = re.compile(r"\bchecks\.([A-Za-z_]\w*)\s*\(")
_CHECKED_FUNCTION = re.compile(r"\bchecks\.([A-Za-z_]\w*)\s*\(\s*([A-Za-z_]\w*)\s*\)")
_MARKER = re.compile(r"^[ \t]*# (BEGIN|END) SOLUTION[ \t]*$", re.MULTILINE)


class ExerciseFormatError(ValueError):
    """A notebook's exercises do not follow the course's format; the message names the notebook and cell."""


@dataclass(frozen=True)
class Solution:
    """A gated solution: its exercise label and the indices of its opening and closing cells."""

    label: str
    start: int
    end: int

    @property
    def inner(self) -> range:
        """Indices of the cells strictly between the opening and closing cells."""
        return range(self.start + 1, self.end)


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks the book's ``_toc.yml`` lists, in reading order."""
    if not (root / "_toc.yml").exists():
        raise FileNotFoundError(f"no _toc.yml in {root}: pass the course's folder with --root")
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts") or [toc]:  # a book in parts, or one list of chapters
        for chapter in part.get("chapters") or []:
            files.append(chapter["file"])
            files += [section["file"] for section in chapter.get("sections", [])]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def split_directive(source: str, pattern: re.Pattern) -> tuple[str, str, str] | None:
    """Split markdown around the first directive matching ``pattern``: (before, directive, after), or None."""
    match = pattern.search(source)
    if match is None:
        return None
    closing = re.compile(rf"^[ \t]*{re.escape(match['fence'])}{re.escape(match['fence'][0])}*[ \t]*$", re.MULTILINE)
    close = closing.search(source, match.end())
    stop = len(source) if close is None else close.end()
    if stop < len(source) and source[stop] == "\n":
        stop += 1
    return source[: match.start()], source[match.start():stop], source[stop:]


def solutions(nb: nbformat.NotebookNode, name: str = "notebook") -> list[Solution]:
    """Every gated solution of a notebook, checked for structure (each start closed, none nested)."""
    found, open_at, label = [], None, ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        start, end = SOLUTION_START.search(cell.source), SOLUTION_END.search(cell.source)
        if start and end:
            raise ExerciseFormatError(f"{name}, cell {index + 1}: put {{solution-start}} and {{solution-end}} in separate cells")
        for match, pattern, directive in ((start, SOLUTION_START, "solution-start"), (end, SOLUTION_END, "solution-end")):
            before, _, after = split_directive(cell.source, pattern) if match else ("", "", "")
            if before.strip() or after.strip():
                raise ExerciseFormatError(
                    f"{name}, cell {index + 1}: this cell holds text besides {{{directive}}}: move the text into a "
                    f"Markdown cell of its own next to it, so that a learner who replaces an answer keeps the directive")
        if start:
            if open_at is not None:
                raise ExerciseFormatError(f"{name}, cell {index + 1}: solution {start['label']!r} opens before solution {label!r} (cell {open_at + 1}) is closed")
            if not start["label"]:
                raise ExerciseFormatError(f"{name}, cell {index + 1}: {{solution-start}} needs the label of its exercise")
            open_at, label = index, start["label"]
        elif end:
            if open_at is None:
                raise ExerciseFormatError(f"{name}, cell {index + 1}: {{solution-end}} without a {{solution-start}} before it")
            found.append(Solution(label, open_at, index))
            open_at = None
    if open_at is not None:
        raise ExerciseFormatError(f"{name}, cell {open_at + 1}: solution {label!r} is never closed by {{solution-end}}")
    inside = {i for s in found for i in s.inner}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and _MARKER.search(cell.source) and index not in inside:
            raise ExerciseFormatError(f"{name}, cell {index + 1}: '{BEGIN}' markers outside a solution")
    return found


def marked_blocks(source: str, where: str = "cell") -> list[tuple[int, int, str]]:
    """The ``# BEGIN SOLUTION`` … ``# END SOLUTION`` blocks of a code cell: (start, stop, indentation) offsets."""
    blocks, begin = [], None
    for match in _MARKER.finditer(source):
        if match[1] == "BEGIN":
            if begin is not None:
                raise ExerciseFormatError(f"{where}: '{BEGIN}' before the previous block's '{END}'")
            begin = match
        else:
            if begin is None:
                raise ExerciseFormatError(f"{where}: '{END}' without '{BEGIN}' before it")
            indent = begin[0][: len(begin[0]) - len(begin[0].lstrip())]
            blocks.append((begin.start(), match.end(), indent))
            begin = None
    if begin is not None:
        raise ExerciseFormatError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return blocks


def exercise_labels(nb: nbformat.NotebookNode) -> set[str]:
    """Labels of the exercises and solutions a notebook contains (how a submission is matched to its chapter)."""
    labels = set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            labels.update(m[1] for m in _EXERCISE_LABEL.finditer(cell.source) if m[1].startswith("ex-"))
            labels.update(m["label"] for m in SOLUTION_START.finditer(cell.source) if m["label"])
    return labels


def check_calls(source: str) -> list[str]:
    """Names of the checks a piece of code calls (``checks.<name>(``), in order, without repeats.

    The mechanism's own helpers (``compare``, ``*_cases``, private names) are not checks.
    """
    names = (n for n in _CHECK_CALL.findall(source) if n != "compare" and not n.endswith("_cases") and not n.startswith("_"))
    return list(dict.fromkeys(names))


def solution_checks(nb: nbformat.NotebookNode, name: str = "notebook") -> list[str]:
    """The checks a notebook's solution cells call: the checks a submission of this chapter is graded on."""
    calls = []
    for solution in solutions(nb, name):
        for index in solution.inner:
            if nb.cells[index].cell_type == "code":
                calls += check_calls(nb.cells[index].source)
    return list(dict.fromkeys(calls))


def checked_functions(nb: nbformat.NotebookNode, name: str = "notebook") -> dict[str, str]:
    """For each check a notebook's solutions call as ``checks.<check>(<function>)``: the name of the function checked.

    This is the name the grader looks for in a submission, whether or not the submission still calls the check.
    """
    found = {}
    for solution in solutions(nb, name):
        for index in solution.inner:
            if nb.cells[index].cell_type == "code":
                for check, function in _CHECKED_FUNCTION.findall(nb.cells[index].source):
                    found.setdefault(check, function)
    return found
