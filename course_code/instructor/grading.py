"""Grading: run every submitted notebook with a time limit, collect its check verdicts, write a CSV.

Each submission is executed top to bottom in a fresh kernel, in a scratch directory, with
``COURSE_CHECKS_LOG`` pointing at a log of its own; cells that raise do not stop the run, so a
learner who skipped one exercise is still graded on the others. A submission is matched to its
chapter by the exercise labels it contains (or by its file name) and graded on that chapter's
checks: pass, fail, or missing (never run, or still raising ``NotImplementedError``).

The status column says how the run went: ``ok``; ``errors`` (it ran to the end, some cells raised);
``timeout``; ``crashed`` (the kernel died or could not start); ``invalid`` (not a readable
notebook); ``empty`` (no code to run). A submission's problem never stops the others' grading.
"""

import csv
import json
import logging
import math
import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4.nbbase import random_cell_id

from course_code.instructor import book

_QUIET = logging.getLogger("course_code.instructor.kernel")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class Chapter:
    """A reference notebook as grading needs it: its name, exercise labels and checks."""

    name: str
    labels: frozenset[str]
    checks: tuple[str, ...]


@dataclass
class Grade:
    """One submission's row of the grade sheet."""

    submission: str
    chapter: str = ""
    status: str = "ok"
    message: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(v == "pass" for v in self.verdicts.values())


def chapters(root: Path = book.ROOT) -> list[Chapter]:
    """The book's notebooks with the checks their solutions call."""
    found = []
    for path in book.toc_notebooks(root):
        nb = book.read(path)
        found.append(Chapter(path.stem, frozenset(book.exercise_labels(nb)), tuple(book.solution_checks(nb, path.name))))
    return found


def match_chapter(path: Path, nb: nbformat.NotebookNode | None, known: list[Chapter]) -> Chapter | None:
    """The chapter a submission belongs to: most exercise labels in common, else its name in the file name."""
    labels = book.exercise_labels(nb) if nb is not None else set()
    overlap, best = max(((len(labels & c.labels), c) for c in known), default=(0, None), key=lambda t: t[0])
    if overlap:
        return best
    by_name = [c for c in known if c.name in path.name]
    return max(by_name, key=lambda c: len(c.name), default=None)


def read_submission(path: Path) -> nbformat.NotebookNode | None:
    """Read a notebook (None for an empty file), raising ValueError with a short reason when it is not a valid one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the file: {error}") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a notebook: invalid JSON ({error.msg}, line {error.lineno}, column {error.colno})") from None
    if not isinstance(data, dict) or "nbformat" not in data:
        raise ValueError("not a notebook: the JSON has no 'nbformat' field")
    try:
        nb = nbformat.convert(nbformat.reader.reads(text), 4)
        for cell in nb.cells:  # some editors leave out the cell ids of format 4.5; they do not matter here
            cell.setdefault("id", random_cell_id())
        nbformat.validate(nb)
    except Exception as error:  # any malformation of the notebook's structure
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"not a valid notebook: {reason[:200]}") from None
    return nb


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _cell(index: int, cell) -> str:
    return f"cell {index + 1} ({_first_line(cell.source, 50)!r})"


def execute(nb: nbformat.NotebookNode, workdir: Path, log: Path, timeout: float) -> tuple[str, str]:
    """Run every code cell in a fresh kernel within ``timeout`` seconds in all; return (status, message)."""
    env = {**os.environ, "COURSE_CHECKS_LOG": str(log), "COURSE_PROGRESS": "0"}
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, log=_QUIET,
                            resources={"metadata": {"path": str(workdir)}})
    errors, index, cell = [], 0, None
    try:
        with client.setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):  # no kernel log lines
            deadline = time.monotonic() + timeout
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CellTimeoutError("time limit reached")
                client.timeout = max(1, math.ceil(remaining))
                client.execute_cell(cell, index)
                errors += [(index, cell, o) for o in cell.outputs if o.output_type == "error"]
    except CellTimeoutError:
        return "timeout", f"stopped at the time limit of {timeout:g} s, in {_cell(index, cell)}"
    except DeadKernelError:
        where = f" in {_cell(index, cell)}" if cell is not None else ""
        return "crashed", f"the kernel died{where} (out of memory, or the code ended the process)"
    except Exception as error:  # the kernel could not start or talk: record it, grade the others
        return "crashed", f"could not run the notebook: {type(error).__name__}: {_first_line(str(error))}"
    if not errors:
        return "ok", ""
    index, cell, output = errors[0]
    more = f" ({len(errors)} cells raised errors)" if len(errors) > 1 else ""
    return "errors", f"{_cell(index, cell)} raised {output.ename}: {_first_line(output.evalue)}{more}"


def read_verdicts(log: Path, expected: tuple[str, ...]) -> dict[str, str]:
    """pass, fail or missing for each expected check, from a checks log (fail wins over pass)."""
    seen: dict[str, set[str]] = {}
    if log.exists():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                seen.setdefault(str(entry["check"]), set()).add(str(entry["verdict"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line the notebook wrote itself, not a verdict
    verdicts = {}
    for check in expected:
        found = seen.get(check, set())
        verdicts[check] = "fail" if "fail" in found else "pass" if "pass" in found else "missing"
    return verdicts


def grade_notebook(path: Path, name: str, known: list[Chapter], timeout: float) -> Grade:
    """Execute one submission and grade it; any problem is recorded in the returned row."""
    row, start = Grade(name), time.monotonic()
    try:
        nb = read_submission(path)
    except ValueError as error:
        chapter = match_chapter(path, None, known)
        row.chapter, row.status, row.message = (chapter.name if chapter else ""), "invalid", str(error)
        row.verdicts = dict.fromkeys(chapter.checks if chapter else (), "missing")
        return row
    chapter = match_chapter(path, nb, known)
    if nb is None:
        row.chapter, row.status, row.message = (chapter.name if chapter else ""), "empty", "the file is empty"
        row.verdicts = dict.fromkeys(chapter.checks if chapter else (), "missing")
        return row
    all_checks = {c for ch in known for c in ch.checks}
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    expected = chapter.checks if chapter else tuple(c for c in book.check_calls(code) if c in all_checks)
    row.chapter = chapter.name if chapter else ""
    if not code.strip():
        row.status, row.message = "empty", "the notebook has no code to run"
        row.verdicts = dict.fromkeys(expected, "missing")
        return row
    with tempfile.TemporaryDirectory(prefix="grading-") as scratch:
        log = Path(scratch) / "checks.jsonl"
        row.status, row.message = execute(nb, Path(scratch), log, timeout)
        row.verdicts = read_verdicts(log, expected)
    row.seconds = time.monotonic() - start
    return row


def submissions(folder: Path) -> list[Path]:
    """Every notebook under ``folder`` (sub-folders included, checkpoints excluded), sorted."""
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file())


def write_csv(grades: list[Grade], checks: list[str], path: Path) -> None:
    """One row per submission: status, passed count, one column per check (blank: not this chapter's), message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "chapter", "status", "passed", "checks", *checks, "seconds", "message"])
        for g in grades:
            writer.writerow([g.submission, g.chapter, g.status, g.passed, len(g.verdicts),
                             *(g.verdicts.get(c, "") for c in checks), f"{g.seconds:.1f}", g.message])


def grade(folder: Path, output: Path, timeout: float, root: Path = book.ROOT, jobs: int = 1) -> list[Grade]:
    """Grade every notebook under ``folder`` against the book at ``root``, ``jobs`` at a time; write the CSV."""
    known = chapters(root)
    checks = list(dict.fromkeys(c for chapter in known for c in chapter.checks))
    paths = submissions(folder)
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) under {folder}")
    names = [str(path.relative_to(folder)) for path in paths]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(grade_notebook, path, name, known, timeout) for path, name in zip(paths, names)]
        for future in as_completed(futures):
            row = future.result()
            print(f"{row.submission}: {row.status}, {row.passed}/{len(row.verdicts)} checks passed"
                  + (f" — {row.message}" if row.message else ""), flush=True)
    grades = [future.result() for future in futures]
    write_csv(grades, checks, output)
    return grades
