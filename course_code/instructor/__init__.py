"""Tools for instructors: the student edition of the book, and grading of submitted notebooks.

    python -m course_code.instructor student            # _build/student/*.ipynb and _build/student-html/
    python -m course_code.instructor grade SUBMISSIONS  # _build/grades.csv

Chapters never import this package; it reads the book's notebooks with nbformat and runs
submissions with nbclient, each in a bubblewrap sandbox (see ``sandbox``).
"""
