"""Command line: ``python -m course_code.instructor {student,grade} …`` (see ``--help``)."""

import argparse
import sys
from pathlib import Path

from course_code.instructor import book, grading, sandbox, student


def _student(args: argparse.Namespace) -> None:
    for path, edition in student.write_notebooks(args.root, args.out):
        print(f"{path}: {len(edition.pieces)} exercises, {edition.count('block') + edition.count('cell')} code stubs, "
              f"{edition.count('text')} written answers")
    if args.html:
        print("building the HTML edition without solutions ...", flush=True)
        print(f"the student HTML book is at {student.build_html(args.root, args.html_out)}")


def _grade(args: argparse.Namespace) -> None:
    if not args.submissions.is_dir():
        raise FileNotFoundError(f"{args.submissions} is not a folder of submitted notebooks")
    grades = grading.grade(args.submissions, args.output, args.timeout, args.root, args.jobs, args.sandbox)
    print(f"graded {len(grades)} submissions; the grade sheet is {args.output}")


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_code.instructor",
                                     description="The instructor tools: the student edition of the book, and grading.")
    parser.add_argument("--root", type=Path, default=book.ROOT, help="the book's folder, holding _toc.yml (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("student", help="write the student notebooks and build the HTML book without solutions")
    make.add_argument("--out", type=Path, default=book.ROOT / "_build" / "student", help="folder for the notebooks (default: %(default)s)")
    make.add_argument("--html-out", type=Path, default=book.ROOT / "_build" / "student-html", help="folder for the HTML (default: %(default)s)")
    make.add_argument("--no-html", dest="html", action="store_false", help="write the notebooks only")
    make.set_defaults(run=_student)

    grade = commands.add_parser("grade", help="run a folder of submitted notebooks and write a CSV of check results")
    grade.add_argument("submissions", type=Path, help="folder of submitted notebooks (searched recursively)")
    grade.add_argument("--output", type=Path, default=book.ROOT / "_build" / "grades.csv", help="the CSV to write (default: %(default)s)")
    grade.add_argument("--timeout", type=_positive, default=900, help="seconds allowed per notebook (default: %(default)s)")
    grade.add_argument("--jobs", type=lambda t: int(_positive(t)), default=1, help="notebooks run at the same time (default: %(default)s)")
    grade.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                       help="run submissions without bubblewrap (only notebooks you trust; every row says 'not sandboxed')")
    grade.set_defaults(run=_grade)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (book.ExerciseFormatError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted" + (": every submission's processes were stopped and no grade sheet was written"
                               if args.command == "grade" else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sandbox.stop_on_terminate()
    sys.exit(main())

