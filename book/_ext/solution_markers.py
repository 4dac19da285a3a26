"""Leave the ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines out of the code the book shows.

The two comments tell ``course_code.instructor`` which lines become a TODO in the student edition.
A reader of the book sees the finished solution, where they only get in the way.
"""

import re

from docutils import nodes

MARKER = re.compile(r"^[ \t]*# (BEGIN|END) SOLUTION[ \t]*(\n|\Z)", re.M)


def _drop_markers(app, doctree):
    for block in doctree.findall(nodes.literal_block):
        text = block.astext()
        if MARKER.search(text):
            block[:] = [nodes.Text(MARKER.sub("", text))]


def setup(app):
    app.connect("doctree-read", _drop_markers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
