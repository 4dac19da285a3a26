"""Let a long inline formula break across lines after a relation or a binary operator, as TeX does.

MathJax 3 sets an inline formula in one unbreakable box, so on a phone a formula longer than the
line runs past the column's edge. TeX breaks an inline formula after a relation (=, \\le, ...) or a
binary operator (+, -, ...) at the formula's outer level; here, also outside brackets and norms. This extension cuts each inline formula at
those places into several formulas, with a line-break opportunity (``<wbr>``) between them; on a wide
line they sit side by side and read as one. Each piece but the last ends with its operator and an
empty group, ``{}``, which keeps the operator's spacing on both sides.
"""

import re

from docutils import nodes

RELATIONS = {"=", "<", ">", r"\le", r"\leq", r"\ge", r"\geq", r"\approx", r"\ne", r"\neq", r"\equiv",
             r"\propto", r"\sim", r"\to", r"\mapsto", r"\Rightarrow", r"\iff", r"\coloneqq"}
BINARIES = {"+", "-", r"\pm", r"\mp", r"\cdot", r"\times"}
# A + or - after one of these has no left operand: it is a sign, not a binary operator.
NO_OPERAND = RELATIONS | BINARIES | {"(", "[", ",", ";", ":", "^", "_", r"\{", "|", r"\mid", "&"}
OPEN = {"{", r"\left", "(", "[", r"\{", r"\langle", r"\lVert", r"\lvert"}
CLOSE = {"}", r"\right", ")", "]", r"\}", r"\rangle", r"\rVert", r"\rvert"}
NORMS = {"|", r"\|", r"\Vert", r"\vert"}  # the same sign opens and closes
TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S|\s+")


def break_points(tex: str) -> list[int]:
    """Offsets in ``tex`` just after each operator where a line may break: outside every group, bracket
    and norm, so that ``(a + b)`` and ``\\|x - y\\|`` stay whole."""
    depth, norms, previous, points = 0, 0, None, []
    for match in TOKEN.finditer(tex):
        token = match.group()
        if token in OPEN:
            depth += 1
        elif token in CLOSE:
            depth -= 1
        elif token in NORMS and depth == 0:
            norms ^= 1
        elif token == r"\begin":
            return []  # an environment (cases, matrix, ...) stays whole
        elif depth == norms == 0 and (token in RELATIONS or (token in BINARIES and previous not in (None, *NO_OPERAND))):
            points.append(match.end())
        if not token.isspace():
            previous = token
    return [p for p in points if tex[p:].strip()]


def pieces(tex: str) -> list[str]:
    """``tex`` cut at its break points, each piece but the last closed by an empty group."""
    cuts = [0, *break_points(tex), len(tex)]
    parts = [tex[a:b] for a, b in zip(cuts, cuts[1:])]
    return [part + " {}" for part in parts[:-1]] + parts[-1:]


def _split_inline_math(app, doctree):
    for math in list(doctree.findall(nodes.math)):
        if isinstance(math.parent, (nodes.title, nodes.subtitle)):
            continue
        parts = pieces(math.astext())
        if len(parts) < 2:
            continue
        replacement = []
        for part in parts:
            if replacement:
                replacement.append(nodes.raw("", "<wbr>", format="html"))
            replacement.append(nodes.math(part, part))
        math.replace_self(replacement)


def setup(app):
    app.connect("doctree-read", _split_inline_math)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
