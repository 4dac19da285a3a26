"""The course's plot style: figures the width of the book's text column, whose PNGs record their smallest font."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

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


def test_against_k_draws_measured_points_and_predicted_lines_on_log_axes(styled):
    ax = plots.against_k([1, 5, 50], {"measured": [1.0, 0.3, 0.05]}, {"predicted": [1.0, 0.2, 0.02]}, ylabel="gap", title="t")
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["measured", "predicted"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--"]
    assert plots.smallest_font(ax.figure) >= 9


def test_latent_holes_draws_the_ratio_map_with_the_holes_outlined(styled):
    axis = torch.linspace(-3, 3, 31)
    grid = torch.cartesian_prod(axis, axis)
    log_p = -0.5 * (grid**2).sum(-1)
    log_q = -0.5 * ((grid - 1) ** 2).sum(-1) / 0.5  # narrower and shifted: holes on the far side
    hole = log_q - log_q.logsumexp(0) < log_p - log_p.logsumexp(0) - math.log(10)
    ax, image = plots.latent_holes(axis, log_q, log_p, hole, title="holes")
    assert ax.get_title() == "holes" and image.get_extent() == [-3.0, 3.0, -3.0, 3.0]
    assert len(ax.collections) >= 2  # the holes' outline and the prior's 90% region
    plt.close(ax.figure)


def test_seed_spread_draws_one_point_per_seed_and_a_median_bar_per_setting(styled):
    values = {"a": [0.1, 0.3, 0.2], "b": [0.5, 0.4, 0.9]}
    ax = plots.seed_spread(values, ylabel="MIG", title="t")
    points = [line.get_ydata() for line in ax.get_lines()]
    assert [list(p) for p in points] == [[0.1, 0.3, 0.2], [0.5, 0.4, 0.9]]
    medians = [segments[0][0][1] for segments in (c.get_segments() for c in ax.collections)]
    assert medians == [0.2, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert plots.smallest_font(ax.figure) >= 9
