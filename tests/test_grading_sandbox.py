"""The grader against submissions that try to get a better grade than they earn, one per attack.

Every hostile submission below is graded in one batch, in the same folder as two honest ones, by
the command an instructor runs. Each payload is bounded: it sleeps at most a few seconds, asks for
at most 2 GiB of memory without touching it, writes at most 256 MiB, starts at most 200 processes
that end by themselves, and aims only at paths under the test's temporary folder (the course's own
book is read, never written). The tests check that grades, the other submissions, the books and the
grade sheet come out unchanged, and that each row says what happened.
"""

import contextlib
import csv
import hashlib
import io
import os
import subprocess
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
import torch

from course_code import checks
from course_code.instructor import __main__ as cli
from course_code.instructor import grading, sandbox, student
from test_instructor import ROOT, fixture_chapter, make_book, submission

SURVIVOR_SECONDS = 3  # how long the detached process waits before it tries to forge a row
SURVIVOR_SLEEP = "7.25"  # the argument of the `sleep` a survivor runs, to find it among the processes


def require_sandbox() -> None:
    """Skip where bubblewrap is missing or cannot work; under CI, where .ci/run installs it, fail."""
    why = sandbox.missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def fingerprint(*folders: Path) -> dict[str, str]:
    """A hash of every file under the folders, and of the course's own notebooks."""
    files = [p for f in folders for p in sorted(f.rglob("*")) if p.is_file()] + sorted((ROOT / "book").glob("*.ipynb"))
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def payload(code: str, **paths) -> str:
    return textwrap.dedent(code).format(**{k: repr(str(v)) for k, v in paths.items()})


def hostile(tmp: Path) -> dict[str, list[str]]:
    """The submissions, by name: each a list of code cells (paths are the test's own)."""
    csv_path, folder, course, scratch = tmp / "grades.csv", tmp / "submissions", tmp / "course", tmp / "scratch"
    return {
        # 1. verdict lines appended to the log the checks used to write, and to every plausible place
        "forger": [payload("""\
            import json, os
            line = json.dumps({{"check": "kl_standard_normal", "name": "kl_standard_normal", "verdict": "pass", "passed": True}})
            for log in (os.environ.get("COURSE_CHECKS_LOG"), "checks.jsonl", "../checks.jsonl"):
                try:
                    with open(log, "a") as f:
                        f.write(line + "\\n")
                except (TypeError, OSError):
                    pass
            print("forged")""")],
        # 2. the reference implementation, handed over directly, called inside, or used for a table of answers
        "handover": ["from course_code import checks, distributions\nkl_to_prior = distributions.kl_standard_normal"],
        "caller": ["from course_code import distributions\n\ndef kl_to_prior(mu, logvar):\n"
                   "    return distributions.kl_standard_normal(mu, logvar)"],
        "table": ["from course_code import checks, distributions\n"
                  "answers = [(c, distributions.kl_standard_normal(**c)) for c in checks.gaussian_cases()]\n\n"
                  "def kl_to_prior(mu, logvar):\n"
                  "    return next(a for c, a in answers if c['mu'].shape == mu.shape and (c['mu'] == mu).all())"],
        # 3. find the grader's arguments, read the neighbours and the books, overwrite a neighbour
        "snoop": [payload("""\
            import glob, os
            seen = []
            for cmdline in glob.glob("/proc/*/cmdline"):
                try:
                    seen += [a for a in open(cmdline, "rb").read().decode().split("\\0") if a.startswith("/")]
                except OSError:
                    pass
            print("grader arguments seen:", [a for a in seen if "submissions" in a or "course" in a])
            print("book readable:", os.path.exists({book}), os.path.exists({course_book}))
            open({neighbour}, "w").write("{{}}")""", book=ROOT / "book" / "02_elbo.ipynb",
                          course_book=course / "book" / "09_fixture.ipynb", neighbour=folder / "zz-honest" / "09_fixture.ipynb")],
        # 4. a grandchild detached with fork + setsid + fork, which outlives the kernel
        "survivor": [payload("""\
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", {sleep}])
                if os.fork() == 0:
                    time.sleep({seconds})
                    try:
                        with open({csv}, "a") as f:
                            f.write("survivor/09_fixture.ipynb,09_fixture,ok,1,1,pass,0.0,\\n")
                        open({marker}, "w").write("alive")
                    finally:
                        os._exit(0)
                os._exit(0)
            print("detached")""", sleep=SURVIVOR_SLEEP, seconds=SURVIVOR_SECONDS, csv=csv_path, marker=scratch / "survived")],
        # 5. no limits: memory (reserved, never touched), a big file, many processes
        "memory": ["import torch\nhoard = torch.empty(2**28, dtype=torch.float64)  # 2 GiB\nprint('allocated')"],
        "disk": ["block = b'x' * 2**20\nwith open('big.bin', 'wb') as f:\n    for _ in range(256):\n        f.write(block)"],
        "processes": ["import subprocess\nchildren = [subprocess.Popen(['sleep', '5']) for _ in range(200)]"],
        # 6. writing next to the working folder, in the temporary folder and among the submissions
        "outside": [payload("""\
            import os
            written = []
            for target in ("../grades.csv", "../../grades.csv", os.path.join(os.environ.get("TMPDIR", "/tmp"), "..", "grades.csv"),
                           {scratch_csv}, {folder_csv}):
                try:
                    open(target, "w").write("forged")
                    written.append(target)
                except OSError:
                    pass
            print("written:", written)""", scratch_csv=scratch / "grades.csv", folder_csv=folder / "grades.csv"),
                    "open('../grades.csv', 'w').write('forged')"],
        # a graded function that never returns
        "endless": ["def kl_to_prior(mu, logvar):\n    while True:\n        pass"],
        # the function is right, but the check's call was deleted
        "uncalled": ["def kl_to_prior(mu, logvar):\n    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)"],
    }


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Grade the hostile submissions and two honest ones in one batch; return what the tests compare."""
    require_sandbox()
    tmp = tmp_path_factory.mktemp("attacks")
    root = make_book(tmp / "course", {"09_fixture": fixture_chapter()})
    edition = student.student_notebook(fixture_chapter())
    solved = student.restore(edition.notebook, edition.pieces)
    wrong = student.restore(edition.notebook, edition.pieces)
    wrong.cells[6].source = wrong.cells[6].source.replace("0.5 * (", "-0.5 * (")
    folder, scratch, output = tmp / "submissions", tmp / "scratch", tmp / "grades.csv"
    folder.mkdir(), scratch.mkdir()
    files = {"zz-honest": nbformat.writes(solved), "zz-wrong": nbformat.writes(wrong)}
    files.update({name: submission(["from course_code import checks", *cells]) for name, cells in hostile(tmp).items()})
    for name, text in files.items():  # each in a folder of its own, named as the chapter
        (folder / name).mkdir()
        (folder / name / "09_fixture.ipynb").write_text(text)
    before = fingerprint(folder, root)
    printed, start = io.StringIO(), time.monotonic()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)  # where the grader makes each submission's folder
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            code = cli.main(["--root", str(root), "grade", str(folder), "--output", str(output), "--timeout", "120", "--jobs", "3"])
    finally:
        os.environ.pop("TMPDIR") if saved is None else os.environ.update(TMPDIR=saved)
    seconds = time.monotonic() - start
    sheet = output.read_bytes()
    time.sleep(SURVIVOR_SECONDS + 1)  # a survivor would have written by now
    rows = {r["submission"].split("/")[0]: r for r in csv.DictReader(io.StringIO(sheet.decode()))}
    return {"code": code, "rows": rows, "printed": printed.getvalue(), "before": before, "seconds": seconds,
            "after": fingerprint(folder, root), "sheet": sheet, "sheet_later": output.read_bytes(),
            "scratch": sorted(p.name for p in scratch.iterdir()), "tmp": tmp}


def test_honest_submissions_are_graded_as_before(attacked):
    rows = attacked["rows"]
    assert attacked["code"] == 0 and "Traceback" not in attacked["printed"]
    assert (rows["zz-honest"]["status"], rows["zz-honest"]["kl_standard_normal"], rows["zz-honest"]["message"]) == ("ok", "pass", "")
    assert (rows["zz-wrong"]["status"], rows["zz-wrong"]["kl_standard_normal"]) == ("errors", "fail")
    assert "kl_standard_normal: it is the opposite of the expected value" in rows["zz-wrong"]["message"]


def test_nothing_outside_the_sandbox_changed(attacked):
    assert attacked["after"] == attacked["before"], "a submission, the fixture book or the course's book changed"
    assert attacked["scratch"] == [], "a submission left something in the grader's temporary folder"
    assert attacked["sheet_later"] == attacked["sheet"], "the grade sheet changed after grading ended"


def test_forged_verdicts_are_not_read(attacked):
    row = attacked["rows"]["forger"]
    assert (row["status"], row["kl_standard_normal"], row["passed"]) == ("ok", "not attempted", "0")


@pytest.mark.parametrize("name", ["handover", "caller"])
def test_calling_the_reference_fails(attacked, name):
    row = attacked["rows"][name]
    assert row["kl_standard_normal"] == "fail"
    assert ("kl_standard_normal: your function calls the reference implementation "
            "(course_code.distributions.kl_standard_normal)") in row["message"]


def test_a_table_of_answers_fails_on_inputs_it_has_not_seen(attacked):
    assert attacked["rows"]["table"]["kl_standard_normal"] == "fail"


def test_neighbours_and_the_books_are_out_of_sight(attacked):
    row = attacked["rows"]["snoop"]
    assert (row["status"], row["kl_standard_normal"]) == ("errors", "not attempted")
    assert "raised FileNotFoundError" in row["message"] and "zz-honest/09_fixture.ipynb" in row["message"]
    assert attacked["rows"]["zz-honest"]["kl_standard_normal"] == "pass", "the neighbour was graded as handed in"


def test_a_detached_process_dies_with_its_sandbox(attacked):
    assert attacked["rows"]["survivor"]["status"] == "ok"
    assert "survivor/09_fixture.ipynb,09_fixture,ok,1,1,pass" not in attacked["sheet_later"].decode()
    assert not (attacked["tmp"] / "scratch" / "survived").exists()
    sleeping = subprocess.run(["pgrep", "-f", f"^sleep {SURVIVOR_SLEEP}$"], capture_output=True, text=True).stdout
    assert sleeping == "", "the detached process outlived grading"


def test_memory_file_size_and_process_count_are_limited(attacked):
    rows = attacked["rows"]
    assert rows["memory"]["status"] == "errors" and "can't allocate memory" in rows["memory"]["message"]
    assert rows["disk"]["status"] == "errors" and "File too large" in rows["disk"]["message"]
    assert rows["processes"]["status"] == "errors" and "Resource temporarily unavailable" in rows["processes"]["message"]


def test_writes_outside_the_working_folder_fail(attacked):
    row = attacked["rows"]["outside"]
    assert row["status"] == "errors"
    assert "raised OSError: [Errno 30] Read-only file system: '../grades.csv'" in row["message"]
    assert not (attacked["tmp"] / "grades.csv").read_bytes().startswith(b"forged")
    assert not (attacked["tmp"] / "submissions" / "grades.csv").exists()


def test_a_function_that_never_returns_fails_its_check(attacked):
    row = attacked["rows"]["endless"]
    assert row["kl_standard_normal"] == "fail"
    assert f"kl_standard_normal: your function did not finish in {checks.TIME_LIMIT:g} s" in row["message"]


def test_every_check_is_called_by_the_grader(attacked):
    """A deleted check call still gets a verdict; a missing function is 'not attempted', not a failure."""
    rows = attacked["rows"]
    assert (rows["uncalled"]["kl_standard_normal"], rows["uncalled"]["passed"]) == ("pass", "1")
    assert rows["forger"]["kl_standard_normal"] == "not attempted"


# --- refusing to start, and grading without a sandbox ------------------------------------------

@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_a_bad_output_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch, where):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "a.ipynb").write_text(submission(["print(1)"]))
    (tmp_path / "file").write_text("")
    output = tmp_path if where == "folder" else tmp_path / "file" / "grades.csv"
    monkeypatch.setattr(grading, "chapters", lambda root: pytest.fail("the book was read before --output was checked"))
    assert cli.main(["grade", str(tmp_path / "subs"), "--output", str(output)]) == 1
    assert ("is a folder" if where == "folder" else "which is a file") in capsys.readouterr().err


def test_without_bubblewrap_the_grader_refuses_and_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "a.ipynb").write_text(submission(["print(1)"]))
    monkeypatch.setattr(sandbox, "TOOL", "bwrap-that-is-not-installed")
    assert cli.main(["grade", str(tmp_path), "--output", str(tmp_path / "g.csv")]) == 1
    err = capsys.readouterr().err
    assert "apt-get install bubblewrap" in err and "--no-sandbox" in err
    assert not (tmp_path / "g.csv").exists()


def test_without_a_sandbox_every_row_says_so(tmp_path):
    root = make_book(tmp_path / "course", {"09_fixture": fixture_chapter()})
    edition = student.student_notebook(fixture_chapter())
    path = tmp_path / "09_fixture.ipynb"
    path.write_text(nbformat.writes(student.restore(edition.notebook, edition.pieces)))
    row = grading.grade_notebook(path, path.name, grading.chapters(root), timeout=120, sandboxed=False)
    assert (row.status, row.verdicts, row.message) == ("ok", {"kl_standard_normal": "pass"}, "not sandboxed")


def test_the_grade_sheet_is_replaced_whole(tmp_path):
    path = tmp_path / "grades.csv"
    path.write_text("an older sheet\n")
    grading.write_csv([grading.Grade("a.ipynb", "09", verdicts={"c": "pass"})], ["c"], path)
    assert path.read_text().splitlines()[1] == "a.ipynb,09,ok,1,1,pass,0.0,"
    assert [p.name for p in tmp_path.iterdir()] == ["grades.csv"], "no temporary file is left behind"


# --- one process for a submission's checks -----------------------------------------------------

LEARNER = """\
from course_code import distributions

def kl_to_prior(mu, logvar):  # right, and it may use another check's reference
    return distributions.kl_normal(mu, logvar)

def kl_between(mu_q, logvar_q, mu_p, logvar_p):  # its own check's reference
    return distributions.kl_normal(mu_q, logvar_q, mu_p, logvar_p)

def kl_wrong(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (mu_q - mu_p).pow(2).sum(-1)

def kl_exits(mu, logvar):  # ends the process it is called in
    import os
    os._exit(3)
"""


def learner_functions(source: str) -> dict[str, str]:
    """Functions defined in a learner's kernel, as the notebook's sandbox hands them to the grader."""
    import base64

    import cloudpickle

    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return {name: base64.b64encode(cloudpickle.dumps(fn)).decode() for name, fn in namespace.items()
            if callable(fn) and getattr(fn, "__module__", "") == "__main__"}


@pytest.fixture
def calls(monkeypatch):
    """The commands of the sandboxed processes started while the test runs."""
    started, run = [], sandbox.run
    monkeypatch.setattr(sandbox, "run", lambda command, *args, **kwargs: started.append(command[0]) or run(command, *args, **kwargs))
    return started


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "not sandboxed"])
def test_a_submissions_checks_share_one_process_with_a_tripwire_each(tmp_path, calls, sandboxed):
    if sandboxed:
        require_sandbox()
    functions = learner_functions(LEARNER)
    verdicts, reasons = grading.run_checks({"kl_standard_normal": "kl_to_prior", "kl_normal": "kl_between",
                                            "gaussian_log_likelihood": "log_likelihood"}, functions, tmp_path,
                                           sandbox.Limits(), sandboxed)
    assert verdicts == {"kl_standard_normal": "pass", "kl_normal": "fail", "gaussian_log_likelihood": "not attempted"}
    assert reasons == ["kl_normal: your function calls the reference implementation (course_code.distributions.kl_normal) "
                       "that this check compares with: write the computation yourself"]
    assert calls == ["call"]


def test_a_function_that_ends_the_shared_process_costs_the_others_nothing(tmp_path, calls):
    require_sandbox()
    functions = learner_functions(LEARNER)
    verdicts, reasons = grading.run_checks({"kl_standard_normal": "kl_exits", "kl_normal": "kl_wrong"}, functions,
                                           tmp_path, sandbox.Limits(), True)
    assert verdicts == {"kl_standard_normal": "fail", "kl_normal": "fail"}
    assert reasons[0].startswith(f"kl_standard_normal: your function did not finish in {checks.TIME_LIMIT:g} s")
    assert reasons[1].startswith("kl_normal: ") and "did not finish" not in reasons[1], "graded in a process of its own"
    assert calls == ["call", "call"]


def test_a_call_process_that_cannot_start_fails_each_check_with_the_reason(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no process for you")

    monkeypatch.setattr(sandbox, "run", broken)
    verdicts, reasons = grading.run_checks({"kl_standard_normal": "kl_to_prior", "kl_normal": "kl_wrong"},
                                           learner_functions(LEARNER), tmp_path, sandbox.Limits(), False)
    assert verdicts == {"kl_standard_normal": "fail", "kl_normal": "fail"}
    assert reasons == [f"{c}: could not be graded: OSError: no process for you" for c in ("kl_standard_normal", "kl_normal")]


@pytest.mark.parametrize("line", [b'{"returned": {"int": 1}}', b'[true, {"returned": {"int": 1}}]',
                                  b'[0, {"returned": {"pickle": "gASV"}}]', b'[0]', b'not json'],
                         ids=["no job", "job not a number", "not data", "no outcome", "not json"])
def test_a_line_that_is_not_a_jobs_outcome_is_refused(line):
    with pytest.raises(ValueError):
        sandbox.decode_job_outcome(line)


# --- what may come back from a sandbox -----------------------------------------------------------

@pytest.mark.parametrize("value", [torch.arange(6.0).reshape(2, 3), torch.tensor([1, 2], dtype=torch.int64),
                                   torch.zeros(0, 4, dtype=torch.float64), (torch.ones(2), 3, 0.5, None),
                                   [True, float("nan")]], ids=["float", "int", "empty", "tuple", "list"])
def test_returned_values_travel_as_data(value):
    import json

    back = sandbox.decode(json.loads(json.dumps(sandbox.encode(value))))
    assert type(back) is type(value)
    for got, sent in zip(back if isinstance(back, (tuple, list)) else [back], value if isinstance(value, (tuple, list)) else [value]):
        if isinstance(sent, torch.Tensor):
            assert got.dtype == sent.dtype and torch.equal(got, sent)
        elif isinstance(sent, float) and sent != sent:
            assert got != got
        else:
            assert got == sent


def test_anything_else_comes_back_as_a_description():
    import numpy as np

    back = sandbox.decode(sandbox.encode(np.zeros(3)))
    assert checks._kind(back) == "a numpy.ndarray"


@pytest.mark.parametrize("data", [
    {"tensor": "AAAA", "dtype": "object", "shape": [1]},
    {"tensor": "AAAA", "dtype": "float32", "shape": [2]},
    {"tensor": "AAAA", "dtype": "float32", "shape": [-1]},
    {"pickle": "gASVAAAA"},
    {"tuple": [{"int": 1}] * 100},
    {"float": "1.0"},
    [1, 2],
], ids=["dtype", "size", "shape", "pickle", "long", "text as number", "bare list"])
def test_anything_that_is_not_such_data_is_refused(data):
    with pytest.raises(ValueError):
        sandbox.decode(data)


# --- the checks' time limit, in a learner's notebook ---------------------------------------------

def test_a_check_stops_a_function_that_never_returns(monkeypatch):
    monkeypatch.setattr(checks, "TIME_LIMIT", 0.3)

    def endless(mu, logvar):
        while True:
            try:
                pass
            except Exception:  # a learner's catch-all does not stop the time limit
                pass

    start = time.monotonic()
    with pytest.raises(checks.CheckFailed, match=r"kl_standard_normal: your function did not finish in 0.3 s\n  on input 1 of 5"):
        checks.kl_standard_normal(endless)
    assert time.monotonic() - start < 5
    checks.kl_standard_normal(lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1))


def test_a_notebook_stays_usable_after_a_check_times_out(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (
        "from course_code import checks\nchecks.TIME_LIMIT = 1",
        "def kl(mu, logvar):\n    while True:\n        pass\n\nchecks.kl_standard_normal(kl)",
        "checks.kl_standard_normal(lambda mu, logvar: 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1))")])
    status, message, _ = grading.execute(nb, tmp_path, timeout=120)
    assert status == "errors" and "did not finish in 1 s" in message
    assert nb.cells[2].outputs[0]["text"] == "✔ kl_standard_normal: passed on 5 inputs\n"


def test_a_check_fails_a_function_that_calls_its_reference_in_the_notebook():
    from course_code import distributions

    for fn in (distributions.kl_standard_normal, lambda mu, logvar: distributions.kl_standard_normal(mu, logvar)):
        with pytest.raises(checks.CheckFailed, match="calls the reference implementation"):
            checks.kl_standard_normal(fn)
    assert distributions.kl_standard_normal(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0, "the reference is put back"


def test_the_instructors_page_states_the_limits_the_code_sets():
    page = " ".join((ROOT / "book" / "instructors.md").read_text().split())
    limits = sandbox.Limits()
    for phrase in (f"a time limit of {checks.TIME_LIMIT:g} s per input", f"a {limits.disk_mib} MiB in-memory folder",
                   f"larger than {limits.file_mib} MiB", f"{limits.memory_mib} MiB of memory per process",
                   f"{limits.processes} processes"):
        assert phrase in page


def test_a_sandbox_starts_with_the_graders_font_list(tmp_path, monkeypatch):
    source, home = tmp_path / "fonts", tmp_path / "home" / ".matplotlib"
    source.mkdir()
    (source / "fontlist-v390.json").write_text("{}")
    (source / "tex.cache").write_text("not copied")
    monkeypatch.setenv("COURSE_GRADING_FONTS", str(source))
    monkeypatch.setenv("MPLCONFIGDIR", str(home))
    sandbox._seed_font_cache()
    assert sorted(p.name for p in home.iterdir()) == ["fontlist-v390.json"]
    assert list(Path(sandbox._font_cache()).glob("fontlist*.json")), "the grader's own list exists, to be copied"
