"""The course's plot style: figures the width of the book's text column, whose PNGs record their smallest font."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_code import plots  # noqa: E402
from test_browser import SMALLEST_FONT_KEY, png_facts  # noqa: E402


@pytest.fixture
def styled():
    with matplotlib.rc_context():
        plots.use_style()
        yield
    plt.close("all")


def test_style_draws_at_the_text_width_with_fonts_of_nine_points_or_more(styled):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a line")
    ax.set(title="title", xlabel="x", ylabel="y")
    ax.legend()
    assert tuple(fig.get_size_inches()) == (plots.TEXT_WIDTH, 3.4)
    assert plots.smallest_font(fig) == 9  # tick labels and legend


def test_smallest_font_skips_hidden_and_empty_text(styled):
    fig, ax = plt.subplots()
    ax.set_title("big", fontsize=14)
    ax.text(0.5, 0.5, "tiny but hidden", fontsize=4, visible=False)
    ax.text(0.5, 0.5, "   ", fontsize=3)
    ax.text(0.2, 0.2, "small", fontsize=6)
    assert plots.smallest_font(fig) == 6


def test_png_records_its_smallest_font_and_dpi(styled, tmp_path):
    fig, ax = plt.subplots()
    ax.set_title("t")
    ax.text(0.1, 0.1, "note", fontsize=7.5)
    path = tmp_path / "figure.png"
    path.write_bytes(plots.png(fig))
    dpi, text = png_facts(path)
    assert dpi == pytest.approx(plots.DPI, rel=1e-3)
    assert float(text[plots.SMALLEST_FONT_KEY]) == 7.5
    assert plots.SMALLEST_FONT_KEY == SMALLEST_FONT_KEY, "the browser test reads the chunk under another name"
