"""Grading: run every submitted notebook in a sandbox, then call its graded functions and judge them here.

Each submission is executed top to bottom in a fresh kernel inside a sandbox (see
:mod:`course_code.instructor.sandbox`), in an empty working folder of its own; cells that raise do
not stop the run, so a learner who skipped one exercise is still graded on the others. A submission
is matched to its chapter by the exercise labels it contains (or by its file name) and graded on
that chapter's checks. For each check, the function the chapter's solution hands to it (``kl_normal``
in ``checks.kl_normal(kl_normal)``) is taken from the submission's kernel after the run and called
in a fresh sandboxed process on inputs drawn with a seed the submission cannot know, with the
reference implementation replaced by a tripwire; only the returned values come back, and the
grader compares them with the reference itself. Nothing the notebook prints or writes is read as a
verdict. Each check is pass, fail, or not attempted (no such function, or it still raises
``NotImplementedError``).

The status column says how the run went: ``ok``; ``errors`` (it ran to the end, some cells raised);
``timeout``; ``crashed`` (the kernel died or could not start); ``invalid`` (not a readable
notebook); ``empty`` (no code to run). A submission's problem never stops the others' grading.
"""

import base64
import contextlib
import csv
import io
import json
import logging
import math
import multiprocessing
import os
import secrets
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

from course_code.instructor import book, sandbox

# ``course_code.checks`` (and with it PyTorch, about 2.5 s of CPU to import) is imported only where the grader
# judges: the process that runs a notebook in the sandbox imports this module for :func:`execute` alone.

_QUIET = logging.getLogger("course_code.instructor.kernel")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass(frozen=True)
class Chapter:
    """A reference notebook as grading needs it: its name, exercise labels and checks."""

    name: str
    labels: frozenset[str]
    checks: tuple[str, ...]
    functions: tuple[tuple[str, str], ...] = ()  # (check, name of the function it is given)


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
        found.append(Chapter(path.stem, frozenset(book.exercise_labels(nb)), tuple(book.solution_checks(nb, path.name)),
                             tuple(book.checked_functions(nb, path.name).items())))
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


def execute(nb: nbformat.NotebookNode, workdir: Path, timeout: float, extract: str = "") -> tuple[str, str, str]:
    """Run every code cell in a fresh kernel within ``timeout`` seconds in all; return (status, message, printed).

    ``extract`` is code run in the same kernel after the notebook (unless it timed out or died);
    ``printed`` is what it printed.
    """
    env = {**os.environ, "COURSE_PROGRESS": "0"}
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, log=_QUIET,
                            resources={"metadata": {"path": str(workdir)}})
    errors, index, cell, printed = [], 0, None, ""
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
            if extract:
                nb.cells.append(nbformat.v4.new_code_cell(extract))
                client.timeout = 120
                client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
                printed = "".join(o.get("text", "") for o in nb.cells.pop().outputs if o.get("name") == "stdout")
    except CellTimeoutError:
        return "timeout", f"stopped at the time limit of {timeout:g} s, in {_cell(index, cell)}", ""
    except DeadKernelError:
        where = f" in {_cell(index, cell)}" if cell is not None else ""
        return "crashed", f"the kernel died{where} (out of memory or CPU time, or the code ended the process)", ""
    except Exception as error:  # the kernel could not start or talk: record it, grade the others
        return "crashed", f"could not run the notebook: {type(error).__name__}: {_first_line(str(error))}", ""
    if not errors:
        return "ok", "", printed
    index, cell, output = errors[0]
    more = f" ({len(errors)} cells raised errors)" if len(errors) > 1 else ""
    return "errors", f"{_cell(index, cell)} raised {output.ename}: {_first_line(output.evalue)}{more}", printed


class _Asked(Exception):
    """Stops a check the first time it asks a :class:`Submitted` function for its outcomes: its inputs are noted."""


class Submitted:
    """A learner's function as the grader holds it: bytes it never loads, called in a sandboxed process.

    Handed to a check in place of the function (``checks.kl_normal(Submitted(...))``), it answers the
    check's ``call_cases`` twice. The first time it notes the inputs and stops the check, so that
    :func:`run_checks` can call every graded function of a submission in one sandboxed process; the
    second time it returns what that process sent back, and the check compares it with its reference.
    """

    def __init__(self, blob: bytes):
        self.blob, self.job, self.outcomes = blob, None, None

    def __call__(self, *args, **kwargs):
        raise TypeError("a submitted function is called only through its check (call_cases)")

    def call_cases(self, cases, references, adapt, seconds) -> list[tuple]:
        if self.outcomes is None:
            self.job = {"function": self.blob, "cases": list(cases), "references": list(references), "adapt": adapt,
                        "seconds": seconds}
            raise _Asked
        return self.outcomes  # a missing outcome (the process was stopped) is judged "did not finish"


def call_jobs(jobs: list[dict], folder: Path, limits: sandbox.Limits, sandboxed: bool) -> list[list[tuple]]:
    """The outcomes of every job (a function and a check's inputs), all called in one sandboxed process.

    Each job keeps its own tripwire and its time limit per input (see ``sandbox._call``). When that
    process stops before the end (out of memory, killed at the time limit, an unreadable line), each
    job it did not finish runs again alone in a process of its own, so one function cannot cost the
    others their verdicts.
    """
    outcomes = _call_jobs(jobs, folder, limits, sandboxed)
    for number in range(1, len(jobs)):  # the first job ran as it would have alone
        if not _finished(outcomes[number], jobs[number]):
            outcomes[number] = _call_jobs([jobs[number]], folder, limits, sandboxed)[0]
    return outcomes


def _finished(outcomes: list[tuple], job: dict) -> bool:
    return len(outcomes) == len(job["cases"]) or bool(outcomes) and outcomes[-1][0] != "returned"


def _call_jobs(jobs: list[dict], folder: Path, limits: sandbox.Limits, sandboxed: bool) -> list[list[tuple]]:
    import cloudpickle
    import torch

    request = cloudpickle.dumps({"jobs": jobs, "dtype": str(torch.get_default_dtype())[6:]})
    seconds = 30 + sum(job["seconds"] * len(job["cases"]) for job in jobs)
    result = sandbox.run(["call"], request, folder, seconds, limits, sandboxed)
    outcomes: list[list[tuple]] = [[] for _ in jobs]
    current = 0
    for line in result.stdout.splitlines():
        try:
            number, outcome = sandbox.decode_job_outcome(line)
            if number < current or number >= len(jobs) or _finished(outcomes[number], jobs[number]):
                raise ValueError("an outcome out of order")
        except (ValueError, TypeError):
            while current < len(jobs) and _finished(outcomes[current], jobs[current]):
                current += 1
            if current < len(jobs):
                outcomes[current].append(("raised", "an unreadable result",
                                          "what came back is not a value the check can read"))
            break
        current = number
        outcomes[number].append(outcome)
    return outcomes


def run_checks(chapter_checks: dict[str, str], functions: dict[str, str], folder: Path, limits: sandbox.Limits,
               sandboxed: bool) -> tuple[dict[str, str], list[str]]:
    """Call each check on the submitted function it grades; return the verdicts and the reasons for failures.

    Each check runs twice here: once to learn its inputs, then, after one sandboxed process has called
    every submitted function on its check's inputs, again to judge what came back.
    """
    from course_code import checks

    verdicts, reasons, asked = {}, [], {}

    def judge(check: str, function: Submitted) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                getattr(checks, check)(function)
            verdicts[check] = "pass"
        except _Asked:
            asked[check] = function
        except NotImplementedError:
            verdicts[check] = "not attempted"
        except checks.CheckFailed as failure:
            verdicts[check] = "fail"
            reasons.append(_first_line(str(failure), 300))
        except Exception as error:  # a value the check could not read
            verdicts[check] = "fail"
            reasons.append(f"{check}: could not be graded: {type(error).__name__}: {_first_line(str(error))}")

    for check, name in chapter_checks.items():
        blob = functions.get(name)
        if not isinstance(blob, str):
            verdicts[check] = "not attempted"
            continue
        try:
            function = Submitted(base64.b64decode(blob, validate=True))
        except ValueError as error:  # not base64: the sandbox's report was tampered with
            verdicts[check] = "fail"
            reasons.append(f"{check}: could not be graded: {type(error).__name__}: {_first_line(str(error))}")
            continue
        verdicts[check] = ""
        judge(check, function)
    if asked:
        try:
            called = call_jobs([f.job for f in asked.values()], folder, limits, sandboxed)
        except Exception as error:  # the process could not be started or given its request
            for check in asked:
                verdicts[check] = "fail"
                reasons.append(f"{check}: could not be graded: {type(error).__name__}: {_first_line(str(error))}")
            return verdicts, reasons
        for function, outcomes in zip(asked.values(), called):
            function.outcomes = outcomes
        for check, function in dict(asked).items():
            judge(check, function)
    return verdicts, reasons


def grade_notebook(path: Path, name: str, known: list[Chapter], timeout: float, sandboxed: bool = True,
                   limits: sandbox.Limits = sandbox.Limits(), seed: int = 0) -> Grade:
    """Run one submission in a sandbox and grade it; any problem is recorded in the returned row.

    ``seed`` is added to the seeds of the checks' random inputs.
    """
    from course_code import checks

    row, start = Grade(name), time.monotonic()
    checks.case_seed = seed
    try:
        nb = read_submission(path)
    except ValueError as error:
        nb, row.status, row.message = None, "invalid", str(error)
    chapter = match_chapter(path, nb, known)
    row.chapter = chapter.name if chapter else ""
    functions = dict(f for c in known for f in c.functions)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code") if nb is not None else ""
    expected = chapter.checks if chapter else tuple(c for c in book.check_calls(code) if c in functions)
    row.verdicts = dict.fromkeys(expected, "not attempted")
    if row.status == "ok" and nb is None:
        row.status, row.message = "empty", "the file is empty"
    elif row.status == "ok" and not code.strip():
        row.status, row.message = "empty", "the notebook has no code to run"
    if row.status == "ok":
        wanted = {check: (dict(chapter.functions) if chapter else functions).get(check, check) for check in expected}
        with tempfile.TemporaryDirectory(prefix="grading-") as folder:
            nbformat.write(nb, Path(folder) / path.name)
            row.status, row.message, found = run_notebook(path.name, Path(folder), timeout, list(wanted.values()),
                                                         limits, sandboxed)
            row.verdicts, reasons = run_checks(wanted, found, Path(folder), limits, sandboxed)
        row.message = "; ".join([row.message] * bool(row.message) + [r for r in reasons if r not in row.message])
    if not sandboxed:
        row.message = "not sandboxed" + (f"; {row.message}" if row.message else "")
    row.seconds = time.monotonic() - start
    return row


def run_notebook(name: str, folder: Path, timeout: float, functions: list[str], limits: sandbox.Limits,
                 sandboxed: bool) -> tuple[str, str, dict]:
    """Execute the notebook ``folder/name`` in a sandbox; return its status, message and graded functions (cloudpickle, base64)."""
    request = json.dumps({"notebook": name, "timeout": timeout, "functions": functions}).encode()
    result = sandbox.run(["notebook"], request, folder, timeout + 60, limits, sandboxed)
    if result.timed_out:
        return "timeout", f"stopped at the time limit of {timeout:g} s", {}
    try:
        report = json.loads(result.stdout)
        status, message, found = str(report["status"]), str(report["message"]), dict(report["functions"])
    except (ValueError, KeyError, TypeError):
        why = "it printed too much" if result.too_much else f"exit code {result.returncode}"
        return "crashed", f"the sandbox ended without a report ({why}): out of memory, or the code ended the process", {}
    if status not in ("ok", "errors", "timeout", "crashed"):
        status, message = "crashed", "the sandbox's report is not one the grader writes"
    return status, message[:500], found


def submissions(folder: Path) -> list[Path]:
    """Every notebook under ``folder`` (sub-folders included, checkpoints excluded), sorted."""
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file())


def check_output(path: Path) -> None:
    """Fail now, before any notebook runs, when the grade sheet could not be written at ``path``."""
    if path.is_dir():
        raise FileNotFoundError(f"--output {path} is a folder: give the path of the CSV file to write")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"--output {path} is under {parent}, which is a file: give a path in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FileNotFoundError(f"--output {path}: the folder {parent} is not writable")


def write_csv(grades: list[Grade], checks: list[str], path: Path) -> None:
    """One row per submission: status, passed count, one column per check (blank: not this chapter's), message.

    The file is written whole or not at all: to a temporary file next to it, then renamed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(handle, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["submission", "chapter", "status", "passed", "checks", *checks, "seconds", "message"])
            for g in grades:
                writer.writerow([g.submission, g.chapter, g.status, g.passed, len(g.verdicts),
                                 *(g.verdicts.get(c, "") for c in checks), f"{g.seconds:.1f}", g.message])
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def grade(folder: Path, output: Path, timeout: float, root: Path = book.ROOT, jobs: int = 1, sandboxed: bool = True,
          limits: sandbox.Limits = sandbox.Limits()) -> list[Grade]:
    """Grade every notebook under ``folder`` against the book at ``root``, ``jobs`` at a time; write the CSV.

    Refuses to start (RuntimeError) when ``sandboxed`` and bubblewrap cannot make a sandbox here.
    """
    check_output(output)
    if sandboxed and (why := sandbox.missing()) is not None:
        raise RuntimeError(why)
    known = chapters(root)
    checks = list(dict.fromkeys(c for chapter in known for c in chapter.checks))
    paths = submissions(folder)
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) under {folder}")
    names = [str(path.relative_to(folder)) for path in paths]
    seed = secrets.randbelow(2**31)  # the checks' random inputs differ from the ones a learner can see
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(grade_notebook, path, name, known, timeout, sandboxed, limits, seed)
                   for path, name in zip(paths, names)]
        for future in as_completed(futures):
            row = future.result()
            print(f"{row.submission}: {row.status}, {row.passed}/{len(row.verdicts)} checks passed"
                  + (f" — {row.message}" if row.message else ""), flush=True)
    grades = [future.result() for future in futures]
    write_csv(grades, checks, output)
    return grades
