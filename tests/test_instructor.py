"""The student edition and grading (course_code.instructor), on a small fixture chapter and on the book.

The fixture chapter, built below, covers every form of solution: code between markers (twice in
one cell, at two indentations), a solution code cell without markers, written answers in cells of
their own (one or several), never sharing a cell with the solution's directives. Grading runs on a
folder of tiny submissions: solved, wrong, untouched, broken, malformed, empty, dying, endless.

For the book's own notebooks, executing each student edition in full would double the time CI
spends on notebooks, so the proof is split:

- putting the reference solutions back into a student notebook gives back the book's notebook
  cell for cell, so the two differ only in solutions, and every code cell before the first stub is
  a book cell that nbval runs without error;
- every solution cell that calls a check was committed showing a "✔ … passed" line per check, and
  nbval (strict) re-executes it and demands the same output: the reference solutions pass;
- the first stub's cell is executed after the earlier cells it needs (those defining the names it
  reads, found from the code, and the setup cell), and must raise that stub's NotImplementedError
  and nothing else; if that slice does not, the test runs every cell before the stub to decide.
"""

import ast
import contextlib
import copy
import csv
import inspect
import io
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_code.instructor import __main__ as cli
from course_code.instructor import book, grading, student

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["ex-09-kl", "ex-09-double", "ex-09-why", "ex-09-scale"]

KL_SOLUTION = """\
def kl_to_prior(mu, logvar):
    # BEGIN SOLUTION
    variance = logvar.exp()
    return 0.5 * (mu**2 + variance - 1 - logvar).sum(-1)
    # END SOLUTION


checks.kl_standard_normal(kl_to_prior)"""

SCALE_SOLUTION = """\
def double(v):
    # BEGIN SOLUTION
    return 2 * v
    # END SOLUTION


def triple(v):
    if v is not None:
        # BEGIN SOLUTION
        return 3 * v
        # END SOLUTION


print(double(1), triple(1))"""


def _exercise(label: str, title: str) -> str:
    return f"```{{exercise}} {title}\n:label: {label}\n\nThe task of {label}.\n```"


def _start(label: str) -> str:
    return f"```{{solution-start}} {label}\n:class: dropdown\n```"


END = "```{solution-end}\n```"


def fixture_chapter() -> nbformat.NotebookNode:
    """A chapter in the course's format with four exercises of every kind, before executing."""
    cells = [
        new_markdown_cell("# 9. A fixture chapter"),
        new_code_cell("from course_code import checks\n\nx = 21"),
        new_markdown_cell("## Exercises"),
        new_markdown_cell(_exercise("ex-09-kl", "KL to the prior")),
        new_markdown_cell(_start("ex-09-kl")),
        new_markdown_cell("Expand the two log-densities and take expectations term by term."),
        new_code_cell(KL_SOLUTION),
        new_markdown_cell(END),
        new_markdown_cell(_exercise("ex-09-double", "Double x")),
        new_markdown_cell(_start("ex-09-double")),
        new_code_cell("print(2 * x)"),
        new_markdown_cell(END),
        new_markdown_cell(_exercise("ex-09-why", "Why")),
        new_markdown_cell(_start("ex-09-why")),
        new_markdown_cell("Because the KL divergence is never negative."),
        new_markdown_cell("And it is zero only when q equals the prior."),
        new_markdown_cell("Finally, it is convex."),
        new_markdown_cell(END),
        new_markdown_cell("Text after the last solution."),
        new_markdown_cell(_exercise("ex-09-scale", "Scale")),
        new_markdown_cell(_start("ex-09-scale")),
        new_code_cell(SCALE_SOLUTION),
        new_markdown_cell(END),
        new_markdown_cell("## References"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def run(nb, timeout: float = 1800) -> nbformat.NotebookNode:
    """Execute a notebook in a fresh kernel in the book's folder, letting cells raise; return it with outputs."""
    status, message, _ = grading.execute(nb, ROOT / "book", timeout)
    assert status in ("ok", "errors"), message
    return nb


def errors(nb) -> list[tuple[int, str, str]]:
    return [(i, o.ename, o.evalue) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]


def compiles(source: str) -> None:
    compile(TransformerManager().transform_cell(source), "<cell>", "exec")


def names(source: str) -> tuple[set[str], set[str]]:
    """The global names a cell defines and the names it reads (generously: any name it mentions)."""
    tree = ast.parse(TransformerManager().transform_cell(source))
    defined, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    return defined, read


def needed_cells(cells, stop: int) -> list[int]:
    """The first code cell, and every earlier code cell defining a name that cell ``stop`` needs, transitively."""
    code = [i for i in range(stop) if cells[i].cell_type == "code" and cells[i].source.strip()]
    needed, keep = names(cells[stop].source)[1], {code[0]} if code else set()
    for i in reversed(code):
        defined, read = names(cells[i].source)
        if defined & needed:
            keep.add(i)
            needed |= read
    return sorted(keep)


def stub_runs(notebooks: dict) -> dict:
    """Run each student notebook's first stub after the cells it needs, all in one kernel.

    Each notebook's cells follow a ``%reset -f``, so none sees another's names; sharing the kernel
    saves a kernel start and a torch import per notebook. Returns, per notebook, the errors
    (with indices counted from the notebook's first cell here) and the one error expected.
    """
    cells, segments = [], {}
    for name, nb in notebooks.items():
        index, label = student.first_stub(nb)
        cells.append(new_code_cell("%reset -f"))
        start = len(cells)
        cells += [copy.deepcopy(nb.cells[i]) for i in needed_cells(nb.cells, index) + [index]]
        segments[name] = (start, len(cells), label)
    found = errors(run(new_notebook(cells=cells)))
    return {name: ([(i - start, e, v) for i, e, v in found if start <= i < stop],
                   [(stop - start - 1, "NotImplementedError", f"exercise {label}")])
            for name, (start, stop, label) in segments.items()}


def run_to_first_stub(nb) -> tuple[list, list]:
    """The errors from running a student notebook up to and including its first stub, and the one error expected."""
    index, label = student.first_stub(nb)
    cut = nbformat.from_dict(dict(nb, cells=nb.cells[: index + 1]))
    return errors(run(cut)), [(index, "NotImplementedError", f"exercise {label}")]


# --- the student edition, on the fixture chapter -------------------------------------------------

def test_student_notebook_replaces_every_solution_by_a_stub():
    reference = fixture_chapter()
    edition = student.student_notebook(reference)
    cells = edition.notebook.cells
    text = "\n".join(c.source for c in cells)
    for secret in ("BEGIN SOLUTION", "variance", "2 * x", "never negative", "zero only", "convex", "2 * v", "3 * v"):
        assert secret not in text, f"the student edition still shows {secret!r}"
    assert cells[6].source == (
        "def kl_to_prior(mu, logvar):\n"
        "    # TODO (exercise ex-09-kl): replace this line and the next with your code.\n"
        '    raise NotImplementedError("exercise ex-09-kl")\n\n\n'
        "checks.kl_standard_normal(kl_to_prior)"
    )
    assert cells[10].source == ('# TODO (exercise ex-09-double): write your code for this exercise in this cell.\n'
                                'raise NotImplementedError("exercise ex-09-double")')
    assert '\n        raise NotImplementedError("exercise ex-09-scale")' in cells[21].source
    assert '\n    raise NotImplementedError("exercise ex-09-scale")' in cells[21].source
    assert cells[21].source.endswith("print(double(1), triple(1))")
    prompt = student.PROMPT.format
    assert cells[5].source == prompt(label="ex-09-kl")
    assert [c.source for c in cells[13:18]] == [_start("ex-09-why")] + [prompt(label="ex-09-why")] * 3 + [END]
    assert {label: [p.kind for p in pieces] for label, pieces in edition.pieces.items()} == {
        "ex-09-kl": ["text", "block"], "ex-09-double": ["cell"], "ex-09-why": ["text", "text", "text"],
        "ex-09-scale": ["block", "block"]}
    for cell in cells:
        if cell.cell_type == "code":
            compiles(cell.source)
    nbformat.validate(edition.notebook)


def test_student_notebook_clears_outputs_and_counts():
    nb = fixture_chapter()
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="42\n")]
        cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    for cell in student.student_notebook(nb).notebook.cells:
        assert "execution" not in cell.metadata
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_restoring_the_solutions_gives_back_the_reference():
    reference = fixture_chapter()
    edition = student.student_notebook(reference)
    assert sources(student.restore(edition.notebook, edition.pieces)) == sources(reference)


def test_restore_refuses_solutions_that_do_not_fit():
    edition = student.student_notebook(fixture_chapter())
    pieces = dict(edition.pieces, **{"ex-09-double": []})
    with pytest.raises(book.ExerciseFormatError, match="no cell solution left for exercise ex-09-double"):
        student.restore(edition.notebook, pieces)


@pytest.mark.parametrize("cells, message", [
    ([_start("ex-1")], "never closed"),
    ([END], "without a {solution-start}"),
    ([_start("ex-1"), _start("ex-2"), END, END], "opens before solution 'ex-1'"),
    (["```{solution-start}\n```", END], "needs the label"),
    ([new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION")], "markers outside a solution"),
    ([_start("ex-1"), new_code_cell("# BEGIN SOLUTION\nx = 1"), END], "never closed by '# END SOLUTION'"),
    ([_start("ex-1") + "\n\nMy answer.", END], "cell 1: this cell holds text besides {solution-start}"),
    ([_exercise("ex-1", "One") + "\n" + _start("ex-1"), END], "cell 1: this cell holds text besides {solution-start}"),
    ([_start("ex-1"), "My answer.\n" + END], "cell 2: this cell holds text besides {solution-end}"),
])
def test_malformed_exercises_are_reported(cells, message):
    nb = new_notebook(cells=[c if isinstance(c, dict) else new_markdown_cell(c) for c in cells])
    with pytest.raises(book.ExerciseFormatError, match=re.escape(message)):
        student.student_notebook(nb, "bad.ipynb")


def test_a_whole_cell_stub_keeps_the_line_that_says_what_to_compute():
    nb = fixture_chapter()
    nb.cells[10].source = "# print twice x\nprint(2 * x)"
    edition = student.student_notebook(nb)
    assert edition.notebook.cells[10].source == ("# print twice x\n# TODO (exercise ex-09-double): write your code for this "
                                                 'exercise in this cell.\nraise NotImplementedError("exercise ex-09-double")')
    assert sources(student.restore(edition.notebook, edition.pieces)) == sources(nb)


def test_roles_become_plain_text_outside_solutions():
    nb = fixture_chapter()
    nb.cells[1].outputs = []
    nb.cells.insert(2, new_markdown_cell("By {eq}`eq-kl`, {eq}`eq-far` and {glue:text}`n_digits` digits."))
    nb.cells.insert(2, new_code_cell("glue('n_digits', 64)"))
    nb.cells[2].outputs = [nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": "64"},
                                                  metadata={"scrapbook": {"name": "n_digits", "mime_prefix": ""}})]
    edition = student.student_notebook(nb, "09_fixture.ipynb", equations={"eq-kl": "09_fixture.ipynb", "eq-far": "02_elbo.ipynb"})
    assert edition.notebook.cells[3].source == "By (eq-kl), (eq-far) in 02_elbo.ipynb and 64 digits."
    assert student.html_notebook(nb, "09_fixture.ipynb").cells[3].source == nb.cells[3].source, "Sphinx renders them"


def test_quoting_an_exercise_result_before_the_exercise_is_refused():
    nb = fixture_chapter()
    nb.cells[6].source += "\nglue('kl_result', 1.5)"
    nb.cells.insert(2, new_markdown_cell("The KL of the exercise is {glue:text}`kl_result`."))
    with pytest.raises(book.ExerciseFormatError, match=r"cell 3: the text quotes \{glue:text\}`kl_result`, a result of "
                                                        r"exercise ex-09-kl"):
        student.student_notebook(nb, "09_fixture.ipynb")


def test_html_notebook_removes_solutions_but_keeps_exercises():
    nb = student.html_notebook(fixture_chapter())
    shown = [c.source for c in nb.cells if "remove-cell" not in c.metadata.get("tags", [])]
    text = "\n".join(shown)
    assert "solution" not in text.replace("last solution", "")
    assert "TODO" not in text and "Your answer" not in text
    for label in LABELS:
        assert f":label: {label}" in text
    assert "Text after the last solution." in text


def make_book(root: Path, chapters: dict[str, nbformat.NotebookNode]) -> Path:
    """A minimal book at ``root``: a front page and the given chapter notebooks."""
    (root / "book").mkdir(parents=True)
    (root / "book" / "intro.md").write_text("# A fixture book\n")
    for name, nb in chapters.items():
        nbformat.write(nb, root / "book" / f"{name}.ipynb")
    toc = {"format": "jb-book", "root": "book/intro", "chapters": [{"file": f"book/{n}"} for n in chapters]}
    (root / "_toc.yml").write_text(json.dumps(toc))
    (root / "_config.yml").write_text(json.dumps({
        "title": "Fixture", "only_build_toc_files": True, "execute": {"execute_notebooks": "off"},
        "exclude_patterns": ["_build"], "sphinx": {"extra_extensions": ["sphinx_exercise"]}}))
    return root


def test_student_command_writes_notebooks(tmp_path, capsys):
    root = make_book(tmp_path / "book", {"09_fixture": fixture_chapter()})
    out = tmp_path / "student"
    assert cli.main(["--root", str(root), "student", "--no-html", "--out", str(out)]) == 0
    written = nbformat.read(out / "09_fixture.ipynb", as_version=4)
    assert student.first_stub(written) == (6, "ex-09-kl")
    assert "4 exercises, 4 code stubs, 4 written answers" in capsys.readouterr().out


def test_student_command_reports_a_malformed_chapter(tmp_path, capsys):
    broken = new_notebook(cells=[new_markdown_cell(_start("ex-09-kl"))])
    root = make_book(tmp_path / "book", {"09_broken": broken})
    assert cli.main(["--root", str(root), "student", "--no-html", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error: 09_broken.ipynb, cell 1: solution 'ex-09-kl' is never closed" in err
    assert "Traceback" not in err


def test_student_html_hides_solutions(tmp_path):
    root = make_book(tmp_path / "book", {"09_fixture": fixture_chapter()})
    index = student.build_html(root, tmp_path / "html")
    page = (index.parent / "book" / "09_fixture.html").read_text()
    assert "The task of ex-09-kl" in page and "Text after the last solution." in page
    for secret in ("Solution to", "variance", "never negative", "NotImplementedError", "Your answer"):
        assert secret not in page


def test_a_stub_needs_the_cells_that_define_its_names():
    cells = [new_code_cell(c) for c in ("import math", "a = 1", "b = a + 1", "c = 5", "%time d = 2", "print(math.pi * b)")]
    assert needed_cells(cells, 5) == [0, 1, 2]


# --- the book's own notebooks --------------------------------------------------------------------

def has_solutions(path: Path) -> bool:
    try:
        return bool(book.solutions(book.read(path), path.name))
    except Exception:  # a malformed notebook: its tests below say what is wrong
        return True


BOOK = book.toc_notebooks(ROOT)
WITH_EXERCISES = [p for p in BOOK if has_solutions(p)]
EQUATIONS = student.equation_labels({p.name: book.read(p) for p in BOOK})


@pytest.mark.parametrize("path", BOOK, ids=lambda p: p.name)
def test_book_student_edition_differs_only_in_solutions(path):
    """Restored, the student notebook is the book's, but for the roles rendered as plain text outside solutions."""
    reference = book.read(path)
    edition = student.student_notebook(reference, path.name, equations=EQUATIONS)
    expected = copy.deepcopy(reference)
    student.plain_roles(expected, path.name, book.solutions(expected, path.name), EQUATIONS)
    assert sources(student.restore(edition.notebook, edition.pieces)) == sources(expected)
    shown = "\n".join(c.source for c in edition.notebook.cells if c.cell_type == "markdown")
    assert "{eq}`" not in shown and "{glue:text}`" not in shown, "Jupyter would show these roles as raw text"
    stub = student.first_stub(edition.notebook)
    before = edition.notebook.cells[: stub[0]] if stub else edition.notebook.cells
    changed = [i + 1 for i, c in enumerate(before) if c.cell_type == "code" and c.source != reference.cells[i].source]
    assert not changed, f"code cells before the first stub differ from the book (counted from 1): {changed}"
    for cell in edition.notebook.cells:
        assert "BEGIN SOLUTION" not in cell.source
        if cell.cell_type == "code":
            compiles(cell.source)


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_book_solutions_were_committed_passing_their_checks(path):
    nb = book.read(path)
    for solution in book.solutions(nb, path.name):
        for index in solution.inner:
            cell = nb.cells[index]
            calls = book.check_calls(cell.source) if cell.cell_type == "code" else []
            if not calls:
                continue
            tags = set(cell.metadata.get("tags", []))
            assert not tags & {"nbval-skip", "raises-exception", "skip-execution"}, f"cell {index + 1} escapes nbval"
            shown = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert shown.count("✔ ") >= len(calls), f"{path.name}, cell {index + 1}: {calls} not committed passing (execute it in place)"
            assert not [o for o in cell.outputs if o.output_type == "error"]


def student_editions() -> dict:
    editions = {}
    for path in WITH_EXERCISES:
        try:
            editions[path.name] = student.student_notebook(book.read(path), path.name).notebook
        except Exception:  # test_book_student_edition_differs_only_in_solutions says what is wrong
            continue
    return editions


@pytest.fixture(scope="module")
def book_stub_runs():
    return stub_runs(student_editions())


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_book_student_notebook_runs_to_its_first_stub(path, book_stub_runs):
    """The stub's cell, after the cells it needs, raises its NotImplementedError and nothing else.

    When that short run raises a NameError, or an error before the stub's cell (a cell left out may
    have mattered), every cell before the stub is run to decide.
    """
    assert path.name in book_stub_runs, f"{path.name}: no student edition (see the test above)"
    found, expected = book_stub_runs[path.name]
    if found and (found[0][1] == "NameError" or found[0][0] != expected[0][0]):
        found, expected = run_to_first_stub(student_editions()[path.name])
    assert found == expected, "the first error must be the first stub's NotImplementedError, in the stub's cell"


def function_from(source: str, name: str):
    """The function ``name`` that a cell defines, defined alone (the rest of the cell is not run)."""
    import math

    import torch

    import course_code
    from course_code import distributions, gradients, inference, objectives

    tree = ast.parse(TransformerManager().transform_cell(source))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(nodes) == 1, f"the cell defines {name} {len(nodes)} times"
    namespace = {"torch": torch, "math": math, "F": torch.nn.functional, "course_code": course_code,
                 "distributions": distributions, "gradients": gradients, "inference": inference, "objectives": objectives}
    exec(compile(ast.Module(nodes, type_ignores=[]), f"<{name}>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_book_coding_exercises_have_a_stub_and_a_check_that_only_the_solution_passes(path, capsys):
    """Every solution with code calls a check in its first code cell; in the student edition that cell holds the
    function's stub, which says what to return, then the check call; the check says "not attempted" to the stub
    and passes the book's solution."""
    from course_code import checks

    reference = book.read(path)
    edition = student.student_notebook(reference, path.name)
    for solution in book.solutions(reference, path.name):
        code = [i for i in solution.inner if reference.cells[i].cell_type == "code"]
        if not code:
            continue
        where = f"{path.name}, cell {code[0] + 1} (exercise {solution.label})"
        calls = re.findall(r"\bchecks\.(\w+)\(\s*(\w+)\s*\)", reference.cells[code[0]].source)
        assert calls, f"{where}: a coding exercise's first code cell calls its check, checks.<check>(<function>)"
        stub_source = edition.notebook.cells[code[0]].source
        for check, name in calls:
            stub = function_from(stub_source, name)
            header = stub_source[stub_source.index(f"def {name}("):stub_source.index("# TODO")]
            assert "# return" in header, f"{where}: the stub of {name} says what to return (a '# return …' line)"
            assert stub_source.index("NotImplementedError") < stub_source.index(f"checks.{check}("), where
            with pytest.raises(NotImplementedError, match=f"exercise {solution.label}"):
                getattr(checks, check)(stub)
            getattr(checks, check)(function_from(reference.cells[code[0]].source, name))
            assert capsys.readouterr().out.startswith(f"✔ {check}: passed"), where
        for index in code[1:]:
            first = edition.notebook.cells[index].source.splitlines()[0]
            assert first.startswith("# ") and "TODO" not in first, \
                f"{path.name}, cell {index + 1}: the cell's first line is a comment saying what it computes, kept in its stub"


def test_every_check_is_called_by_exactly_one_exercise():
    from course_code import checks

    called = [c for p in WITH_EXERCISES for c in book.solution_checks(book.read(p), p.name)]
    defined = {name for name, f in vars(checks).items() if inspect.isfunction(f) and f.__module__ == checks.__name__
               and not name.startswith("_") and name != "run_case" and list(inspect.signature(f).parameters)[:1] == ["fn"]}
    assert len(called) == len(set(called)), f"checks called by more than one exercise: {called}"
    assert defined - set(called) == set(), f"checks no exercise calls: {defined - set(called)}"


# --- grading -------------------------------------------------------------------------------------

def submission(cells) -> str:
    nb = new_notebook(cells=[new_code_cell(c) if isinstance(c, str) else c for c in cells])
    nb.metadata["kernelspec"] = {"name": "some-other-kernel", "display_name": "?", "language": "python"}
    return nbformat.writes(nb)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Grade a folder holding one submission of each kind, once for all the tests below."""
    tmp = tmp_path_factory.mktemp("grading")
    root = make_book(tmp / "course", {"09_fixture": fixture_chapter()})
    edition = student.student_notebook(fixture_chapter())
    solved = student.restore(edition.notebook, edition.pieces)
    wrong = copy.deepcopy(solved)
    wrong.cells[6].source = wrong.cells[6].source.replace("0.5 * (", "-0.5 * (")
    folder = tmp / "submissions"
    files = {
        "ada/09_fixture.ipynb": nbformat.writes(solved),
        "bob/09_fixture.ipynb": nbformat.writes(wrong),
        "cy/09_fixture.ipynb": nbformat.writes(edition.notebook),
        "dan/09_fixture.ipynb": submission(["x = (", "print('never reached')"]),
        "eve/09_fixture.ipynb": '{"cells": [}',
        "fay/09_fixture.ipynb": "",
        "gus/09_fixture.ipynb": json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": 3}),
        "hal/09_fixture.ipynb": submission([new_markdown_cell("I only wrote words.")]),
        "ivy/09_fixture.ipynb": submission(["import os\nos._exit(1)"]),
        "jo/.ipynb_checkpoints/09_fixture-checkpoint.ipynb": "not graded",
    }
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    output = tmp / "grades.csv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = cli.main(["--root", str(root), "grade", str(folder), "--output", str(output), "--timeout", "120", "--jobs", "3"])
    rows = {r["submission"].split("/")[0]: r for r in csv.DictReader(output.open())}
    return code, rows, printed.getvalue(), root


def test_grading_writes_one_row_per_submission(graded):
    code, rows, printed, _ = graded
    assert code == 0
    assert sorted(rows) == ["ada", "bob", "cy", "dan", "eve", "fay", "gus", "hal", "ivy"]
    assert list(rows["ada"]) == ["submission", "chapter", "status", "passed", "checks", "kl_standard_normal", "seconds", "message"]
    assert "Traceback" not in printed and "graded 9 submissions" in printed


def test_grading_records_pass_fail_and_not_attempted(graded):
    """ada put the reference solutions back, bob has a sign wrong, cy handed in the student notebook as it is."""
    _, rows, _, _ = graded
    summary = {k: (r["status"], r["kl_standard_normal"], r["passed"], r["checks"]) for k, r in rows.items() if k in "ada bob cy"}
    assert summary == {"ada": ("ok", "pass", "1", "1"), "bob": ("errors", "fail", "0", "1"),
                       "cy": ("errors", "not attempted", "0", "1")}
    assert rows["ada"]["message"] == "", "with the solutions back, every cell runs and every check passes"
    assert "CheckFailed: kl_standard_normal: it is the opposite of the expected value" in rows["bob"]["message"]
    assert rows["cy"]["message"].startswith("cell 7 ('def kl_to_prior(mu, logvar):') raised NotImplementedError: "
                                            "exercise ex-09-kl"), "the student notebook runs up to its first stub"
    assert rows["cy"]["message"].endswith("(3 cells raised errors)"), "grading goes on after a failing cell"
    assert all(r["chapter"] == "09_fixture" for r in rows.values())


def test_grading_survives_broken_malformed_and_empty_notebooks(graded):
    _, rows, _, _ = graded
    expected = {
        "dan": ("errors", "SyntaxError"),
        "eve": ("invalid", "not a notebook: invalid JSON"),
        "fay": ("empty", "the file is empty"),
        "gus": ("invalid", "not a valid notebook"),
        "hal": ("empty", "no code to run"),
        "ivy": ("crashed", "the kernel died in cell 1"),
    }
    for name, (status, message) in expected.items():
        assert rows[name]["status"] == status, (name, rows[name])
        assert message in rows[name]["message"], (name, rows[name]["message"])
        assert rows[name]["kl_standard_normal"] == "not attempted"


def test_grading_stops_an_endless_notebook(tmp_path, graded):
    *_, root = graded
    path = tmp_path / "09_fixture.ipynb"
    path.write_text(submission(["print('started')", "while True:\n    pass", "print('never')"]))
    start = time.monotonic()
    row = grading.grade_notebook(path, path.name, grading.chapters(root), timeout=3)
    assert time.monotonic() - start < 30
    assert (row.status, row.verdicts) == ("timeout", {"kl_standard_normal": "not attempted"})
    assert row.message == "stopped at the time limit of 3 s, in cell 2 ('while True:')"


def test_grade_command_reports_a_missing_folder(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder of submitted notebooks" in capsys.readouterr().err
