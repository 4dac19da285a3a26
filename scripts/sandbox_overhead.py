"""What the grader's sandbox costs per honest submission: grading time with and without it.

Grades the solved fixture chapter of the grading tests (tests/test_instructor.py) PAIRS times with
the sandbox and PAIRS times without (``--no-sandbox``), alternating, and prints the wall-clock and
CPU times and their median paired differences. CPU time counts the grader and every process it
starts (sandboxed ones included) with a cgroup v1 ``cpuacct`` group, so run it as root:

    python scripts/sandbox_overhead.py [PAIRS]      # from the repository's root; PAIRS defaults to 7
"""
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import nbformat  # noqa: E402
from test_instructor import fixture_chapter, make_book  # noqa: E402

from course_code.instructor import grading, student  # noqa: E402

ACCOUNTING = pathlib.Path("/sys/fs/cgroup/cpuacct")


def main(pairs: int) -> None:
    if not ACCOUNTING.is_dir() or os.geteuid() != 0:
        sys.exit(f"this measurement needs root and cgroup v1's cpuacct controller at {ACCOUNTING}")
    tmp = pathlib.Path(tempfile.mkdtemp())
    root = make_book(tmp / "course", {"09_fixture": fixture_chapter()})
    edition = student.student_notebook(fixture_chapter())
    path = tmp / "09_fixture.ipynb"
    path.write_text(nbformat.writes(student.restore(edition.notebook, edition.pieces)))
    chapters = grading.chapters(root)
    group = ACCOUNTING / f"course-overhead-{os.getpid()}"
    group.mkdir()
    (group / "cgroup.procs").write_text(str(os.getpid()))
    usage = lambda: int((group / "cpuacct.usage").read_text()) / 1e9  # noqa: E731
    wall, cpu, loads = {True: [], False: []}, {True: [], False: []}, []
    try:
        for pair in range(pairs):
            for sandboxed in (True, False):
                start, used = time.perf_counter(), usage()
                row = grading.grade_notebook(path, path.name, chapters, timeout=600, sandboxed=sandboxed)
                wall[sandboxed].append(time.perf_counter() - start)
                cpu[sandboxed].append(usage() - used)
                if row.status != "ok":
                    sys.exit(f"the honest submission was not graded ok: {row}")
            loads.append(os.getloadavg()[0])
            print(f"pair {pair + 1}: wall {wall[True][-1]:.2f} s with, {wall[False][-1]:.2f} s without; "
                  f"CPU {cpu[True][-1]:.2f} s with, {cpu[False][-1]:.2f} s without; load {loads[-1]:.1f}", flush=True)
    finally:
        (ACCOUNTING / "cgroup.procs").write_text(str(os.getpid()))
        group.rmdir()
    for name, times in (("wall clock", wall), ("CPU time", cpu)):
        difference = statistics.median(a - b for a, b in zip(times[True], times[False]))
        print(f"{name}: median {statistics.median(times[True]):.2f} s with the sandbox, "
              f"{statistics.median(times[False]):.2f} s without; median paired difference {difference:.2f} s")
    print(f"one-minute load average after each pair: {min(loads):.1f} to {max(loads):.1f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
