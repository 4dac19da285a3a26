"""course_code.glue writes exactly the hidden output that myst-nb's glue writes, so the book can quote it."""

import nbformat
import pytest
from nbclient import NotebookClient


def run(*sources: str) -> list:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    return [cell.outputs for cell in nb.cells]


@pytest.mark.parametrize("value", ['f"{1.23456:.3f}"', "42", "[1, 2]"])
def test_glue_output_is_myst_nbs(value):
    ours, theirs = run(
        f'from course_code import glue\nglue("key", {value})',
        f'from myst_nb import glue\nglue("key", {value}, display=False)',
    )
    assert ours == theirs
    assert ours[0]["metadata"]["scrapbook"]["name"] == "key"
