"""The book's extension that lets a long inline formula break after its operators (book/_ext/math_breaks.py)."""

import sys

import pytest

from test_book import ROOT

sys.path.insert(0, str(ROOT / "book" / "_ext"))
from math_breaks import pieces  # noqa: E402


@pytest.mark.parametrize(
    "tex, expected",
    [
        # after each relation and binary operator of the outer level, each piece closed by {}
        (r"a = b + c", ["a = {}", " b + {}", " c"]),
        (r"\log p(x) \geq \mathcal{L}", [r"\log p(x) \geq {}", r" \mathcal{L}"]),
        # a sign is not a binary operator: after a relation, an opening bracket, a comma or ^
        (r"y = -x", ["y = {}", " -x"]),
        (r"f(-x, -y)^-1", [r"f(-x, -y)^-1"]),
        # nothing inside braces, brackets, \left...\right or a norm
        (r"\frac{a + b}{c} = \mathbb{E}[x - y]", [r"\frac{a + b}{c} = {}", r" \mathbb{E}[x - y]"]),
        (r"\left( a + b \right) - \|x - y\|^2", [r"\left( a + b \right) - {}", r" \|x - y\|^2"]),
        # a bar inside parentheses (a condition) does not open a norm
        (r"p(z | x) = q", ["p(z | x) = {}", " q"]),
        # an environment stays whole; an operator at the very end is no place to break
        (r"\begin{cases} a = b \end{cases}", [r"\begin{cases} a = b \end{cases}"]),
        (r"x -", ["x -"]),
    ],
)
def test_pieces(tex, expected):
    assert pieces(tex) == expected


def test_pieces_join_to_the_formula():
    tex = r"\mathbb{E}[(f-b)^2 s^2] = \mathbb{E}[f^2 s^2] - 2b\,\mathbb{E}[f s^2] + b^2\,\mathbb{E}[s^2]"
    parts = pieces(tex)
    assert len(parts) == 4
    assert "".join(part.removesuffix(" {}") for part in parts) == tex
