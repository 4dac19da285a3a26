"""Checks for the coding exercises: your function against the course's reference implementation.

Each check runs your function on random and edge-case inputs, compares the result with the
reference, and prints a verdict in plain words. A failing check raises :class:`CheckFailed`
naming the input, the expected and obtained values, and a hint; a function that still raises
``NotImplementedError`` counts as not attempted. Each input has a time limit (:data:`TIME_LIMIT`
seconds), and while your function runs, the reference it is checked against is replaced by a
tripwire: a function that calls the reference fails. When the environment variable
``COURSE_CHECKS_LOG`` names a file, every verdict is also appended to it as a JSON line, for your
own records (grading does not read it: see ``course_code.instructor.grading``).

A chapter adds a check in a few lines: a function named after the exercise that calls
:func:`compare` with the reference implementation, a list of input cases and a hint, and the
mistakes it can name (each is named only when the function makes it on every input). An exercise
with no single right value gets a graded assertion instead: :func:`verify` with a judge that states
what must hold, and its tolerance.
"""

import contextlib
import inspect
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from course_code import distributions


TIME_LIMIT = 10.0
"""Seconds each input may take before the check fails with "did not finish"."""

case_seed = 0
"""Added to the seed of every check's random inputs (the grader draws its own, so answers cannot be looked up)."""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed + case_seed)


class CheckFailed(AssertionError):
    """Your function gave a wrong answer on at least one input; the message says which."""

    def _render_traceback_(self) -> list[str]:
        """Jupyter shows the verdict alone: the traceback would only point into this module."""
        return [f"✘ {self}"]


def _called_check(default: str) -> str:
    """The name of the check the learner called: the outermost public function of this module on the stack."""
    found, frame = default, sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_name
        if frame.f_globals is globals() and not name.startswith(("_", "<")) and name != "compare":
            found = name
        frame = frame.f_back
    return found


def _record(name: str, passed: bool, message: str, verdict: str | None = None) -> None:
    """Append the verdict to the file named by ``COURSE_CHECKS_LOG``, if any, as one JSON line.

    ``check`` is the function of this module the learner called (the grading column),
    ``name`` the name given to :func:`compare`, ``verdict`` one of pass, fail, not attempted.
    """
    log = os.environ.get("COURSE_CHECKS_LOG")
    if log:
        entry = {
            "check": _called_check(name),
            "name": name,
            "verdict": verdict or ("pass" if passed else "fail"),
            "passed": passed,
            "message": message,
        }
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _number(v) -> str:
    """Five significant digits, without float noise such as 0.30000001 or -0."""
    return repr(float(f"{v:.5g}") + 0.0) if isinstance(v, float) else str(v)


def _short(value) -> str:
    """A value as a learner wants to read it: small tensors in full, big ones by shape and first values."""
    if isinstance(value, Tensor):
        if value.numel() <= 12:
            return _nested(value.detach().tolist())
        first = ", ".join(_number(v) for v in value.detach().flatten()[:4].tolist())
        return f"tensor of shape {tuple(value.shape)}, first values [{first}, …]"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_short(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, float):
        return _number(value)
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _nested(values) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v) for v in values) + "]"
    return _number(values)


def _describe(case: dict) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in case.items())


def _kind(value) -> str:
    """'a list', 'a numpy.ndarray', 'None': what a value is, in words."""
    if value is None:
        return "None"
    if isinstance(value, Foreign):
        return value.kind
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__name__}"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _missing_axes(expected: torch.Size, got: torch.Size) -> set[int]:
    """The axes of ``expected`` whose removal gives ``got`` (a sum or mean over them)."""
    return {i for i in range(len(expected)) if expected[:i] + expected[i + 1:] == got}


def _shape_kinds(expected: torch.Size, got: torch.Size) -> set[tuple]:
    """Every simple way ``got`` can come from ``expected``: an axis missing or extra, transposed, everything summed."""
    kinds = {("missing", i) for i in _missing_axes(expected, got)} | {("extra", i) for i in _missing_axes(got, expected)}
    if len(expected) == 2 and tuple(got) == tuple(reversed(expected)):
        kinds.add(("transposed",))
    if len(got) == 0 or (math.prod(got) == 1 and len(got) < len(expected)):
        kinds.add(("everything",))
    return kinds


def _shape_problem(expected: torch.Size, got: torch.Size, axes: dict[int, str] | None = None,
                   consistent: set[tuple] | None = None) -> str:
    """Why the shapes differ; a guess at the cause only among the ``consistent`` ones (those that fit every input)."""
    message = f"it returned shape {tuple(got)} instead of {tuple(expected)}"
    kinds = _shape_kinds(expected, got)
    if consistent is not None:
        kinds &= consistent
    missing = [i for kind, *i in kinds if kind == "missing" for i in i]
    extra = [i for kind, *i in kinds if kind == "extra" for i in i]
    if ("everything",) in kinds and len(got) == 0:
        return message + ": did you sum or average over every axis? Keep the axes the result must have"
    if missing:
        axis = max(missing)
        name = (axes or {}).get(axis, f"axis {axis}")
        return message + f": {name}, of size {expected[axis]}, is missing; did you sum or average over it?"
    if extra and max(extra) == len(got) - 1:
        return message + ": did you forget to sum over the last axis?"
    if extra:
        return message + f": it has an extra axis {max(extra)}, of size {got[max(extra)]}; did you forget to sum or average over it?"
    if ("transposed",) in kinds:
        return message + ": is it transposed? Check which quantity goes along the rows and which along the columns"
    if ("everything",) in kinds:
        return message + ": did you sum or average over every axis? Keep the axes the result must have"
    return message + ": check which axes you sum or average over"


def _value_problem(expected: Tensor, got: Tensor) -> str:
    bad = ~torch.isfinite(got) & torch.isfinite(expected)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        return f"it returned {got[index].item()} at index {index}, where the expected value is finite"
    message = "its values differ from the reference"
    if expected.numel() > 1:
        difference = (got - expected).abs().nan_to_num(nan=math.inf)
        index = tuple(torch.nonzero(difference == difference.max())[0].tolist())
        message += (f"; the largest difference is at index {index}: "
                    f"expected {_number(expected[index].item())}, obtained {_number(got[index].item())}")
    return message


def _mismatch(expected, got, atol: float, rtol: float, axes: dict[int, str] | None = None,
              shapes: set[tuple] | None = None) -> str | None:
    """Why ``got`` differs from ``expected``, or None when they agree (no guess at the mistake: see :func:`_diagnosis`)."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return (f"it returned {_kind(got)}, not a torch tensor: compute the result with torch "
                    f"operations (torch.exp, .sum, …) so that it stays a tensor")
        if got.shape != expected.shape:
            return _shape_problem(expected.shape, got.shape, axes, shapes)
        got = got.detach().to(expected.dtype)
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
            return _value_problem(expected, got)
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"it returned {_kind(got)}, but a tuple of {len(expected)} values was expected"
        for i, (e, g) in enumerate(zip(expected, got)):
            why = _mismatch(e, g, atol, rtol)
            if why is not None:
                return f"in returned value number {i + 1}, {why}"
        return None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"it returned {_kind(got)}, but a number was expected"
        if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) or (math.isnan(got) and math.isnan(expected)):
            return None
        return "its value differs from the reference"
    return None if got == expected else "it differs from the reference"


def _call(fn: Callable, case: dict):
    """Call ``fn`` on fresh copies of the inputs: by keyword when its parameter names match, else by position."""
    case = {k: v.clone() if isinstance(v, Tensor) else v for k, v in case.items()}
    try:
        inspect.signature(fn).bind(**case)
    except (TypeError, ValueError):
        return fn(*case.values())
    return fn(**case)


class DidNotFinish(BaseException):
    """Raised inside a learner's function when its time limit is reached (a BaseException, so ``except Exception`` does not stop it)."""


class Foreign:
    """A value a sandboxed function returned that cannot travel back as data, described in words ("a numpy.ndarray")."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def reference_name(function: Callable) -> str:
    """``module.name`` of a reference implementation, as :func:`tripwire` finds it."""
    return f"{function.__module__}.{function.__name__}"


def _resolve(name: str) -> Callable:
    import importlib

    module, attribute = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attribute)


class ReferenceCalled(BaseException):
    """Raised by a tripwire: the learner's function called the reference implementation it is checked against."""


_tripped: list[str] = []


class _Tripwire:
    """Stands in for a reference implementation while a learner's function runs: calling it fails the check."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        _tripped.append(self.name)
        raise ReferenceCalled(f"{self.name} is the reference implementation this check compares with")


@contextlib.contextmanager
def tripwire(names: Sequence[str]) -> Iterator[None]:
    """Replace each reference implementation ``module.name``, in every loaded module that holds it, by a :class:`_Tripwire`."""
    swapped = []
    for name in names:
        original, attribute = _resolve(name), name.rsplit(".", 1)[1]
        wire = _Tripwire(name)
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict) and namespace.get(attribute) is original:
                swapped.append((namespace, attribute, original))
                namespace[attribute] = wire
    try:
        yield
    finally:
        for namespace, attribute, original in reversed(swapped):
            namespace[attribute] = original


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`DidNotFinish` in the running code after ``seconds`` (on POSIX, in the main thread; elsewhere no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise DidNotFinish

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(fn: Callable, case: dict, references: Sequence[str] = (), adapt: Callable | None = None,
             seconds: float | None = None) -> tuple:
    """Run a learner's function on one input, with the tripwire set and a time limit; return what happened.

    One of ``("returned", value)``, ``("raised", type name, text)``, ``("not attempted", error)``,
    ``("did not finish",)`` or ``("reference", name)``. ``adapt`` turns ``fn`` into the function the inputs fit.
    """
    if isinstance(fn, _Tripwire):
        return ("reference", fn.name)
    for name in references:
        original = _resolve(name)
        if fn is original or getattr(fn, "__code__", None) is getattr(original, "__code__", False):
            return ("reference", name)
    _tripped.clear()
    with tripwire(references):
        try:
            with time_limit(seconds or TIME_LIMIT):
                value = _call(adapt(fn) if adapt else fn, case)
        except DidNotFinish:
            return ("did not finish",)
        except ReferenceCalled as error:
            return ("reference", str(error).split(" ", 1)[0])
        except NotImplementedError as error:
            outcome = ("not attempted", error)
        except Exception as error:
            outcome = ("raised", type(error).__name__, str(error))
        else:
            outcome = ("returned", value)
    return ("reference", _tripped[0]) if _tripped else outcome


def _outcomes(name: str, fn: Callable, cases: Sequence[dict], references: Sequence[Callable],
              adapt: Callable | None) -> list[tuple]:
    """What ``fn`` did on each case, in order, up to the first outcome other than a returned value or an error."""
    if not callable(fn):
        message = (f"{name}: this check needs your function itself, as in checks.{_called_check(name)}(my_function), "
                   f"but it was given {_kind(fn)}")
        _record(name, False, message)
        raise CheckFailed(message)
    names = tuple(reference_name(f) for f in references)
    if getattr(type(fn), "call_cases", None) is not None:
        outcomes = iter(fn.call_cases(cases, names, adapt, TIME_LIMIT))
    else:
        outcomes = (run_case(fn, case, names, adapt, TIME_LIMIT) for case in cases)
    found = []
    for _ in cases:
        outcome = next(outcomes, ("did not finish",))
        found.append(outcome)
        if outcome[0] not in ("returned", "raised"):
            break
    return found


def _judge(name: str, cases: Sequence[dict], outcomes: list[tuple], judge: Callable[[int, object], str | None],
           hint: str) -> None:
    """Fail on the first case whose outcome is not a value ``judge(number, value)`` accepts (it returns None), else print ✔."""
    hint_line = f"\n  hint: {hint}" if hint else ""
    for number, (case, (kind, *details)) in enumerate(zip(cases, outcomes), start=1):
        where = f"on input {number} of {len(cases)}: {_describe(case)}"
        if kind == "not attempted":
            _record(name, False, f"{name}: not attempted yet (the function still raises NotImplementedError)", "not attempted")
            raise details[0]
        if kind == "returned":
            why = judge(number, details[0])
            if why is None:
                continue
            why, _, shown = why.partition("\n")
            message = f"{name}: {why}\n  {where}" + (f"\n{shown}" if shown else "") + hint_line
        elif kind == "raised":
            message = f"{name}: your function raised {details[0]}: {details[1]}\n  {where}{hint_line}"
        elif kind == "reference":
            message = (f"{name}: your function calls the reference implementation ({details[0]}) that this check "
                       f"compares with: write the computation yourself\n  {where}")
        else:
            message = f"{name}: your function did not finish in {TIME_LIMIT:g} s\n  {where}{hint_line}"
        _record(name, False, message)
        raise CheckFailed(message)
    message = f"✔ {name}: passed on {len(cases)} inputs"
    _record(name, True, message)
    print(message)


def _scaled(expected, factor: float, position: int | None):
    """``expected`` times ``factor`` (only its returned value number ``position`` for a tuple); None when not a tensor."""
    if position is None:
        return factor * expected if isinstance(expected, Tensor) else None
    if not isinstance(expected[position], Tensor):
        return None
    return type(expected)(factor * e if i == position else e for i, e in enumerate(expected))


_FACTORS = ((-1.0, "the opposite of the expected value: is a sign flipped?"),
            (2.0, "twice the expected value: is a factor ½ missing?"),
            (0.5, "half the expected value: an extra factor ½?"))


def _diagnosis(expected: list, got: list, alternatives: Sequence[tuple[str, list]], atol: float, rtol: float) -> str | None:
    """The first of ``alternatives`` (words, values on every case) that ``got`` matches on every case, or a factor that does.

    A diagnosis is a claim about the learner's function, so it must hold on all inputs, not only on the
    one that failed: twice the reference on one input and not on another is not a missing ½.
    """
    if len(got) != len(expected):
        return None
    for words, values in alternatives:
        if all(_mismatch(v, g, atol, rtol) is None for v, g in zip(values, got)):
            return words
    positions = [None] if not isinstance(expected[0], (tuple, list)) else range(len(expected[0]))
    for position in positions:
        sizes = [(e if position is None else e[position]) for e in expected]
        if not all(isinstance(e, Tensor) for e in sizes) or max(e.abs().max().item() for e in sizes) <= 10 * atol:
            continue
        for factor, words in _FACTORS:
            scaled = [_scaled(e, factor, position) for e in expected]
            if all(_mismatch(v, g, atol, rtol) is None for v, g in zip(scaled, got)):
                return words if position is None else f"in returned value number {position + 1}, it is {words}"
    return None


def _swapped(case: dict, pairs: Sequence[tuple[str, str]]) -> dict:
    case = dict(case)
    for a, b in pairs:
        case[a], case[b] = case[b], case[a]
    return case


def _mean_not_sum(reference: Callable, key: str) -> tuple[str, Callable]:
    """The mistake "a mean over the last axis where the sum belongs": the reference divided by that axis's size in ``case[key]``."""
    return ("a mean over the last axis where the sum belongs: sum over it",
            lambda **case: reference(**case) / case[key].shape[-1])


def compare(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[dict],
    hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    references: Sequence[Callable] = (),
    adapt: Callable[[Callable], Callable] | None = None,
    mistakes: Sequence[tuple[str, Callable]] = (),
    swaps: Sequence[tuple[str, str]] = (),
    axes: dict[int, str] | None = None,
) -> None:
    """Run ``fn`` and ``reference(**case)`` on every case; print the verdict, raise :class:`CheckFailed` on the first failure.

    ``fn`` is called by keyword when its parameters are named like the keys of a case, by position otherwise
    (after ``adapt(fn)``, when given). ``references`` are the course's implementations of the answer: calling
    one from ``fn`` fails the check. An ``fn`` whose type has a ``call_cases`` method runs elsewhere (grading):
    ``fn.call_cases(cases, reference names, adapt, seconds)`` returns one outcome of :func:`run_case` per case.

    A failure names a likely mistake only when ``fn`` makes it on every case: one of ``mistakes`` (words, and
    a function taking a case's arguments that returns what the mistake gives), the reference with the argument
    pairs ``swaps`` exchanged (for an asymmetric function), or a constant factor −1, 2 or ½. ``axes`` names
    the result's axes for the message about a missing axis (``{0: "the sample axis 0"}``).
    """
    outcomes = _outcomes(name, fn, cases, references, adapt)
    with torch.no_grad():
        expected = [reference(**case) for case in cases]
    got = [details[0] for kind, *details in outcomes if kind == "returned"]
    diagnosis = None
    if any(_mismatch(e, g, atol, rtol) is not None for e, g in zip(expected, got)):
        alternatives = []
        with torch.no_grad():
            if swaps:
                words = ", ".join(f"{a} with {b}" for a, b in swaps)
                alternatives.append((f"the right answer with its arguments swapped ({words}) on every input: the function is "
                                     f"not symmetric in them; check which plays which role",
                                     [reference(**_swapped(case, swaps)) for case in cases]))
            alternatives += [(words, [mistake(**case) for case in cases]) for words, mistake in mistakes]
        diagnosis = _diagnosis(expected, got, alternatives, atol, rtol)

    shapes = None
    for e, g in zip(expected, got):
        if isinstance(e, Tensor) and isinstance(g, Tensor) and e.shape != g.shape:
            kinds = _shape_kinds(e.shape, g.shape)
            shapes = kinds if shapes is None else shapes & kinds

    def judge(number: int, value) -> str | None:
        why = _mismatch(expected[number - 1], value, atol, rtol, axes, shapes)
        if why is None:
            return None
        if diagnosis is not None and why.startswith(("its values differ", "in returned value number")):
            why = diagnosis if diagnosis.startswith("in returned") else f"it is {diagnosis}"
        return f"{why}\n  expected: {_short(expected[number - 1])}\n  obtained: {_short(value)}"

    _judge(name, cases, outcomes, judge, hint)


def verify(name: str, fn: Callable, cases: Sequence[dict], judge: Callable[..., str | None], hint: str = "",
           references: Sequence[Callable] = (), adapt: Callable[[Callable], Callable] | None = None) -> None:
    """A graded assertion: run ``fn`` on every case and accept what it returns when ``judge(value, **case)`` is None.

    For exercises with no single right value (a measurement, a construction): the judge states what must
    hold, with its tolerance, and returns a sentence saying what does not. The rest is as in :func:`compare`.
    """
    outcomes = _outcomes(name, fn, cases, references, adapt)
    _judge(name, cases, outcomes, lambda number, value: judge(value, **cases[number - 1]), hint)


def gaussian_cases(seed: int = 0) -> list[dict]:
    """Inputs (mu, logvar) for functions of a diagonal Gaussian: random batches and edge cases."""
    g = _generator(seed)
    return [
        {"mu": torch.zeros(1, 1), "logvar": torch.zeros(1, 1)},  # q equals the prior
        {"mu": torch.tensor([[1.5, -2.0]]), "logvar": torch.tensor([[0.0, 0.0]])},
        {"mu": torch.tensor([[0.0, 0.0, 0.0]]), "logvar": torch.tensor([[-3.0, 1.0, 2.5]])},
        {"mu": torch.randn(5, 4, generator=g), "logvar": torch.randn(5, 4, generator=g)},
        {"mu": 3 * torch.randn(3, 7, generator=g), "logvar": 2 * torch.randn(3, 7, generator=g)},
    ]


def kl_standard_normal(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(mu, logvar)`` = KL(N(μ, diag σ²) ‖ N(0, I)) per datapoint (chapter 2, eq. `eq-kl-prior`)."""
    return compare(
        "kl_standard_normal",
        fn,
        distributions.kl_standard_normal,
        gaussian_cases(),
        hint="KL = ½ Σ_j (σ_j² + μ_j² − 1 − log σ_j²), summed over the last axis only; σ² = exp(logvar).",
        references=(distributions.kl_standard_normal,),
        mistakes=(_mean_not_sum(distributions.kl_standard_normal, "mu"),
                  ("σ = exp(½·logvar) where σ² = exp(logvar) belongs",
                   lambda mu, logvar: 0.5 * (mu**2 + (0.5 * logvar).exp() - 1 - logvar).sum(-1))),
    )


def _estimator_cases(seed: int = 0) -> list[dict]:
    """Inputs (f, mu, sigma, eps) for per-sample gradient estimators of E_{N(μ,σ²)}[f(z)] (chapter 3)."""
    g = _generator(seed)
    return [
        {"f": torch.square, "mu": torch.tensor([1.0]), "sigma": torch.tensor([1.5]), "eps": torch.tensor([[0.5], [-1.0], [2.0]])},
        {"f": torch.sin, "mu": torch.tensor([0.3, -1.2]), "sigma": torch.tensor([0.5, 1.5]), "eps": torch.randn(6, 2, generator=g)},
        {"f": torch.exp, "mu": torch.randn(3, 2, generator=g), "sigma": torch.rand(3, 2, generator=g) + 0.2, "eps": torch.randn(4, 3, 2, generator=g)},
    ]


_SAMPLE_AXIS = {0: "the sample axis 0 (one estimate per row of eps)"}


def _derivative(f: Callable, z: Tensor) -> Tensor:
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(f(z).sum(), z)[0]


def pathwise_gradient(fn: Callable) -> None:
    """Check ``fn(f, mu, sigma, eps)`` = per-sample pathwise estimates f'(μ + σε) of ∇_μ E[f(z)] (chapter 3, eq. `eq-pathwise`)."""
    from course_code import gradients

    return compare(
        "pathwise_gradient",
        fn,
        lambda f, mu, sigma, eps: gradients.pathwise(f, mu, sigma, eps)[0],
        _estimator_cases(),
        hint="build z = mu + sigma * eps as a tensor that requires grad, then take torch.autograd.grad(f(z).sum(), z); "
        "return one estimate per row of eps (no mean).",
        references=(gradients.pathwise,),
        axes=_SAMPLE_AXIS,
        mistakes=(("f(z) itself where its derivative f'(z) belongs", lambda f, mu, sigma, eps: f(mu + sigma * eps)),
                  ("f'(μ + ε): the noise is not scaled by σ", lambda f, mu, sigma, eps: _derivative(f, mu + eps))),
    )


def score_function_gradient(fn: Callable) -> None:
    """Check ``fn(f, mu, sigma, eps)`` = per-sample score-function estimates f(z)·(z − μ)/σ² of ∇_μ E[f(z)] (chapter 3, eq. `eq-score-function`)."""
    from course_code import gradients

    return compare(
        "score_function_gradient",
        fn,
        lambda f, mu, sigma, eps: gradients.score_function(f, mu, sigma, eps)[0],
        _estimator_cases(),
        hint="∇_μ log N(z; μ, σ²) = (z − μ)/σ² = ε/σ; multiply it by f(z) itself (not by f'(z)), one estimate per row of eps.",
        references=(gradients.score_function,),
        axes=_SAMPLE_AXIS,
        mistakes=(("f(z)·(z − μ)/σ: divide by the variance σ², not by σ",
                   lambda f, mu, sigma, eps: f(mu + sigma * eps) * eps),
                  ("f'(z)·(z − μ)/σ²: the score function multiplies f(z) itself, not its derivative",
                   lambda f, mu, sigma, eps: _derivative(f, mu + sigma * eps) * eps / sigma)),
    )


def log_bernoulli_logits(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(x, logits)`` = log Bernoulli(x; sigmoid(logits)) summed over pixels, stable for large logits (chapter 4)."""
    g = _generator(0)
    cases = [
        {"x": torch.tensor([[1.0, 0.0, 1.0]]), "logits": torch.tensor([[0.0, 0.0, 2.0]])},
        {"x": (torch.rand(4, 6, generator=g) > 0.5).float(), "logits": 3 * torch.randn(4, 6, generator=g)},
        {"x": torch.tensor([[0.0, 1.0, 0.0, 1.0]]), "logits": torch.tensor([[30.0, -30.0, -200.0, 200.0]])},  # confident
        {"x": torch.rand(2, 5, generator=g), "logits": torch.randn(2, 5, generator=g)},  # grey levels
    ]
    return compare(
        "log_bernoulli_logits",
        fn,
        distributions.log_bernoulli,
        cases,
        hint="log σ(l) = −softplus(−l) and log(1 − σ(l)) = −softplus(l), so log p = Σ [x·l − softplus(l)] over the "
        "last axis; never compute sigmoid first (it rounds to exactly 0 or 1 for large |l|).",
        references=(distributions.log_bernoulli,),
        mistakes=(_mean_not_sum(distributions.log_bernoulli, "x"),),
    )


def iwae_from_log_weights(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(log_w)`` = log (1/K) Σ_k exp(log_w[k]) per datapoint for log-weights of shape (K, B) (chapter 4, eq. `eq-iwae`)."""
    g = _generator(0)
    cases = [
        {"log_w": torch.tensor([[0.0], [0.0]])},
        {"log_w": torch.randn(5, 3, generator=g)},
        {"log_w": -1000.0 + torch.randn(10, 4, generator=g)},  # exp underflows to 0 in float32
        {"log_w": torch.tensor([[-90.0, 5.0]])},  # K = 1: the ELBO estimate itself
    ]
    return compare(
        "iwae_from_log_weights",
        fn,
        lambda log_w: torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(log_w.shape[0]))),
        cases,
        hint="average over the sample axis 0 inside the log: torch.logsumexp(log_w, dim=0) − log K; "
        "exp(log_w) underflows for log-weights near −1000.",
        mistakes=(("log Σ_k w_k: the − log K of the average is missing", lambda log_w: torch.logsumexp(log_w, dim=0)),
                  ("the average of the log-weights (the ELBO estimate), not the log of the average weight",
                   lambda log_w: log_w.mean(0))),
    )


def gaussian_log_likelihood(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(x, x_hat)`` = log N(x; x̂, I) per datapoint: −(D/2) log 2π − ½‖x − x̂‖² (chapter 1, eq. `eq-ae-mse`)."""
    g = _generator(0)
    cases = [
        {"x": torch.zeros(1, 1), "x_hat": torch.zeros(1, 1)},
        {"x": torch.tensor([[1.0, 2.0, 3.0]]), "x_hat": torch.tensor([[1.0, 0.0, 3.5]])},
        {"x": torch.rand(4, 64, generator=g), "x_hat": torch.rand(4, 64, generator=g)},
        {"x": torch.randn(3, 5, generator=g), "x_hat": 2 * torch.randn(3, 5, generator=g)},
    ]
    return compare(
        "gaussian_log_likelihood",
        fn,
        lambda x, x_hat: distributions.log_normal(x, x_hat, 0.0),
        cases,
        hint="log N(x; x̂, I) = −(D/2)·log(2π) − ½ Σ_i (x_i − x̂_i)², with D = x.shape[-1]; sum over the last axis only.",
        references=(distributions.log_normal,),
        mistakes=(_mean_not_sum(lambda x, x_hat: distributions.log_normal(x, x_hat, 0.0), "x"),
                  ("−½‖x − x̂‖² alone: the normalizing constant −(D/2)·log(2π) is missing",
                   lambda x, x_hat: -0.5 * ((x - x_hat) ** 2).sum(-1)),
                  ("−‖x − x̂‖² − (D/2)·log(2π): the factor ½ of the squared error is missing",
                   lambda x, x_hat: -((x - x_hat) ** 2).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi))),
    )


def kl_discrete(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(p, q)`` = KL(p ‖ q) = Σ_k p_k log(p_k / q_k) over the last axis, with 0·log 0 = 0 (chapter 1)."""
    g = _generator(0)
    cases = [
        {"p": torch.tensor([[0.5, 0.5]]), "q": torch.tensor([[0.5, 0.5]])},
        {"p": torch.tensor([[0.9, 0.1]]), "q": torch.tensor([[0.5, 0.5]])},
        {"p": torch.tensor([[0.0, 0.25, 0.75]]), "q": torch.tensor([[0.2, 0.3, 0.5]])},  # an impossible outcome under p
        {"p": torch.softmax(torch.randn(5, 4, generator=g), -1), "q": torch.softmax(torch.randn(5, 4, generator=g), -1)},
    ]
    return compare(
        "kl_discrete",
        fn,
        lambda p, q: torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p),
                                                       torch.distributions.Categorical(probs=q)),
        cases,
        hint="KL(p ‖ q) = Σ_k p_k (log p_k − log q_k), summed over the last axis; terms with p_k = 0 contribute 0 "
        "(torch.where or torch.xlogy avoid 0·log 0 = nan).",
        references=(torch.distributions.kl_divergence,),
        swaps=(("p", "q"),),
    )


def kl_normal(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(mu_q, logvar_q, mu_p, logvar_p)`` = KL between diagonal Gaussians per datapoint (chapter 2, eq. `eq-kl-gauss`)."""
    g = _generator(1)
    cases = [
        {"mu_q": torch.zeros(1, 1), "logvar_q": torch.zeros(1, 1), "mu_p": torch.zeros(1, 1), "logvar_p": torch.zeros(1, 1)},
        {"mu_q": torch.tensor([[1.0, -1.0]]), "logvar_q": torch.zeros(1, 2), "mu_p": torch.tensor([[0.0, 1.0]]),
         "logvar_p": torch.tensor([[0.0, 0.0]])},
        {"mu_q": torch.zeros(1, 3), "logvar_q": torch.tensor([[-2.0, 0.5, 1.0]]), "mu_p": torch.zeros(1, 3),
         "logvar_p": torch.tensor([[1.0, 1.0, -1.0]])},
    ] + [
        {"mu_q": 2 * torch.randn(shape, generator=g), "logvar_q": torch.randn(shape, generator=g),
         "mu_p": torch.randn(shape, generator=g), "logvar_p": torch.randn(shape, generator=g)}
        for shape in ((5, 4), (3, 7))
    ]
    return compare(
        "kl_normal",
        fn,
        distributions.kl_normal,
        cases,
        hint="per coordinate, KL = ½ [log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1]; sum over the last axis only.",
        references=(distributions.kl_normal,),
        swaps=(("mu_q", "mu_p"), ("logvar_q", "logvar_p")),
        mistakes=(_mean_not_sum(distributions.kl_normal, "mu_q"),),
    )


def elbo_from_samples(fn: Callable) -> None:
    """Check ``fn(log_lik, x, z, mu, logvar)`` = (1/K) Σ_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)] for z of shape (K, B, d) (chapter 2)."""
    g = _generator(2)
    W = torch.randn(5, 2, generator=g)

    def log_lik(x, z):  # a linear-Gaussian decoder: p(x|z) = N(x; Wz, I)
        return distributions.log_normal(x, z @ W.T, 0.0)

    cases = []
    for K, B in ((1, 1), (4, 3), (50, 2)):
        mu, logvar = torch.randn(B, 2, generator=g), torch.randn(B, 2, generator=g) - 1
        z = mu + torch.exp(0.5 * logvar) * torch.randn(K, B, 2, generator=g)
        cases.append({"log_lik": log_lik, "x": torch.randn(B, 5, generator=g), "z": z, "mu": mu, "logvar": logvar})
    def reference(log_lik, x, z, mu, logvar):
        return (log_lik(x, z) + distributions.log_standard_normal(z) - distributions.log_normal(z, mu, logvar)).mean(0)

    return compare(
        "elbo_from_samples",
        fn,
        reference,
        cases,
        mistakes=(("the sum over the K samples where their average belongs",
                   lambda log_lik, x, z, mu, logvar: reference(log_lik, x, z, mu, logvar) * z.shape[0]),
                  ("log p(x|z) + log q(z|x) − log p(z): the signs of the two log-densities of z are exchanged",
                   lambda log_lik, x, z, mu, logvar: (log_lik(x, z) - distributions.log_standard_normal(z)
                                                      + distributions.log_normal(z, mu, logvar)).mean(0)),
                  ("the average of log p(x|z) alone: the terms log p(z) − log q(z|x) are missing",
                   lambda log_lik, x, z, mu, logvar: log_lik(x, z).mean(0))),
        hint="log_lik(x, z) has shape (K, B); add log N(z; 0, I) and subtract log N(z; μ, diag σ²), each summed over "
        "the latent axis, then average over the sample axis 0 (one ELBO per datapoint).",
    )


def free_bits_kl(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """Check ``fn(mu, logvar, free_bits)`` = Σ_j max(λ, (1/B) Σ_n KL_nj), the KL term of free bits (chapter 6, eq. `eq-free-bits`)."""
    from course_code import objectives

    def reference(mu, logvar, free_bits):
        kl = distributions.kl_normal_per_dim(mu, logvar)
        terms = objectives.ElboTerms(-kl.sum(-1), torch.zeros(len(mu)), kl.sum(-1), kl)
        return objectives.weighted_loss(terms, beta=1.0, free_bits=free_bits)  # −(0 − KL term) = the KL term

    cases = [{**case, "free_bits": lam} for case in gaussian_cases() for lam in (0.0, 0.5, 2.0)]
    return compare(
        "free_bits_kl",
        fn,
        reference,
        cases,
        hint="average each dimension's KL over the batch first (axis 0), then raise it to at least λ, then sum over "
        "the dimensions: a single number.",
        references=(objectives.weighted_loss,),
        mistakes=(("the floor λ applied to each datapoint's KL before averaging: average over the batch first",
                   lambda mu, logvar, free_bits: distributions.kl_normal_per_dim(mu, logvar).clamp(min=free_bits).mean(0).sum()),
                  ("the floor λ applied to the total KL instead of to each dimension's",
                   lambda mu, logvar, free_bits: distributions.kl_normal_per_dim(mu, logvar).mean(0).sum().clamp(min=free_bits))),
    )


def _with_generator(fn: Callable) -> Callable:
    """``fn(mu, logvar, generator)`` called with a seed instead: both functions get a generator in the same state."""

    def wrapped(mu, logvar, seed):
        return fn(mu, logvar, torch.Generator().manual_seed(seed))

    return wrapped


def mutual_information(fn: Callable[[Tensor, Tensor, torch.Generator], Tensor]) -> None:
    """Check ``fn(mu, logvar, generator)`` = the minibatch estimate of I_q(x; z) (He et al., 2019; chapter 6)."""
    from course_code import diagnostics

    g = _generator(6)
    cases = [
        {"mu": torch.zeros(2, 1), "logvar": torch.zeros(2, 1), "seed": 0},  # q(z|x) = p(z) for both points
        {"mu": 3 * torch.randn(50, 1, generator=g), "logvar": torch.randn(50, 1, generator=g) - 2, "seed": 1},
        {"mu": torch.randn(40, 3, generator=g), "logvar": torch.randn(40, 3, generator=g) - 1, "seed": 2},
        {"mu": 0.1 * torch.randn(100, 5, generator=g), "logvar": 0.1 * torch.randn(100, 5, generator=g), "seed": 3},
    ]
    return compare(
        "mutual_information",
        fn,
        lambda mu, logvar, seed: diagnostics.mutual_information(mu, logvar, torch.Generator().manual_seed(seed)),
        cases,
        hint="draw one z_n per datapoint with distributions.reparameterize(mu, logvar, generator=generator); average "
        "log q(z_n|x_n) − log q(z_n) over n, where log q(z_n) = logsumexp over m of log q(z_n|x_m), minus log N.",
        adapt=_with_generator,
        references=(diagnostics.mutual_information,),
    )


def fixed_noise_elbo(fn: Callable) -> None:
    """Check ``fn(log_lik, x, mu, logvar, eps)`` = (1/K) Σ_k log p(x | μ + σ ⊙ ε_k) − KL(q ‖ p(z)) per datapoint (chapter 5, eq. `eq-elbo-fixed-noise`)."""
    from course_code import inference

    g = _generator(7)
    W = torch.randn(6, 3, generator=g)

    def log_lik(x, z):  # a Bernoulli decoder whose logits are linear in z
        return distributions.log_bernoulli(x, z @ W.T)

    cases = [{"log_lik": log_lik, "x": torch.ones(1, 6), "mu": torch.zeros(1, 3), "logvar": torch.zeros(1, 3), "eps": torch.zeros(1, 1, 3)}]
    for K, B in ((5, 4), (30, 2)):
        cases.append({"log_lik": log_lik, "x": (torch.rand(B, 6, generator=g) > 0.5).float(), "mu": torch.randn(B, 3, generator=g),
                      "logvar": torch.randn(B, 3, generator=g) - 1, "eps": torch.randn(K, B, 3, generator=g)})
    return compare(
        "fixed_noise_elbo",
        fn,
        inference.fixed_noise_elbo,
        cases,
        hint="z = mu + exp(½·logvar)·eps has shape (K, B, d); average log_lik(x, z) over the sample axis 0, then subtract "
        "the closed-form KL(q ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²), summed over the last axis.",
        references=(inference.fixed_noise_elbo,),
        mistakes=(("z = μ + exp(logvar)·ε: the noise must be scaled by σ = exp(½·logvar), not by the variance",
                   lambda log_lik, x, mu, logvar, eps: log_lik(x, mu + torch.exp(logvar) * eps).mean(0)
                   - distributions.kl_standard_normal(mu, logvar)),
                  ("the sum of log p(x|z) over the K samples where their average belongs",
                   lambda log_lik, x, mu, logvar, eps: inference.fixed_noise_elbo(log_lik, x, mu, logvar, eps)
                   + (eps.shape[0] - 1) * log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0)),
                  ("the average of log p(x|z) alone: the KL to the prior is not subtracted",
                   lambda log_lik, x, mu, logvar, eps: log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0))),
    )


def _std_column(table: Tensor, factor: float) -> Tensor:
    """``table`` with its second column multiplied by ``factor``."""
    return torch.stack([table[:, 0], factor * table[:, 1]], dim=1)


def gap_summary(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(log_px, elbo_best, elbo_amortized)`` = the (3, 2) table of means and standard errors of the approximation, amortization and total gaps (chapter 5, eq. `eq-gap-decomposition`)."""
    from course_code import inference

    g = _generator(8)
    cases = [{"log_px": torch.tensor([-10.0, -12.0]), "elbo_best": torch.tensor([-11.0, -12.5]), "elbo_amortized": torch.tensor([-13.0, -12.5])}]
    for n in (7, 50):
        log_px = torch.randn(n, generator=g) - 20
        elbo_best = log_px - torch.rand(n, generator=g)
        cases.append({"log_px": log_px, "elbo_best": elbo_best, "elbo_amortized": elbo_best - 2 * torch.rand(n, generator=g)})
    return compare(
        "gap_summary",
        fn,
        inference.gap_summary,
        cases,
        hint="per datapoint: approximation = log p(x) − ELBO(q*), amortization = ELBO(q*) − ELBO(q_φ), total = their sum; "
        "rows in that order, columns the mean and the standard error = sample standard deviation (n − 1 in the "
        "denominator, torch.std's default) divided by √n.",
        references=(inference.gap_summary,),
        mistakes=(("standard errors from the standard deviation with n in the denominator: use n − 1 (torch.std's default)",
                   lambda log_px, elbo_best, elbo_amortized: _std_column(inference.gap_summary(log_px, elbo_best, elbo_amortized),
                                                                         ((len(log_px) - 1) / len(log_px)) ** 0.5)),
                  ("the standard deviations themselves in the second column: divide them by √n to get standard errors",
                   lambda log_px, elbo_best, elbo_amortized: _std_column(inference.gap_summary(log_px, elbo_best, elbo_amortized),
                                                                         len(log_px) ** 0.5))),
    )


# --- Exercises checked by what their function returns, added for every coding exercise of chapters 1–6 ---


def best_noise_variance(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(x, x_hat)`` = the σ² maximizing Σ_n log N(x_n; x̂_n, σ² I): S / (N·D), a number (chapter 1, exercise ex-01-noise-level)."""
    g = _generator(10)
    cases = [
        {"x": torch.tensor([[1.0, 2.0, 3.0]]), "x_hat": torch.tensor([[1.0, 0.0, 3.5]])},
        {"x": torch.rand(4, 64, generator=g), "x_hat": torch.rand(4, 64, generator=g)},
        {"x": torch.randn(7, 5, generator=g), "x_hat": 2 * torch.randn(7, 5, generator=g)},
    ]
    return compare(
        "best_noise_variance",
        fn,
        lambda x, x_hat: ((x - x_hat) ** 2).mean(),
        cases,
        hint="set the derivative of −(N·D/2)·log(2πσ²) − S/(2σ²) in σ² to zero: σ² = S / (N·D), with S the sum of "
        "squared errors over every datapoint and pixel; return a tensor holding one number.",
        mistakes=(("S / N, the squared error per datapoint: divide by N·D, the number of pixel values",
                   lambda x, x_hat: ((x - x_hat) ** 2).sum() / x.shape[0]),
                  ("the square root of the mean squared error, a standard deviation: σ² is the variance",
                   lambda x, x_hat: ((x - x_hat) ** 2).mean().sqrt())),
    )


def map_rescaling(fn: Callable[[Tensor, Tensor, float], tuple]) -> None:
    """Check ``fn(weight, z, c)`` = (weight / c, c·z): the first layer and codes of exercise ex-01-map-scaling (chapter 1)."""
    g = _generator(11)
    cases = [{"weight": torch.randn(5, 2, generator=g), "z": torch.randn(3, 2, generator=g), "c": c} for c in (0.5, 0.25, 0.8)]
    return compare(
        "map_rescaling",
        fn,
        lambda weight, z, c: (weight / c, c * z),
        cases,
        hint="(W/c)(c·z) = W·z: divide the weight of shape (H, d) by c and multiply the codes of shape (N, d) by c.",
        mistakes=(("(W·c, z/c): the codes must shrink (times c < 1) and the weights grow (divided by c)",
                   lambda weight, z, c: (weight * c, z / c)),),
    )


def best_diagonal_variances(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(cov)`` = 1/Λ_jj, the variances of the best diagonal q for a posterior covariance Σ = Λ⁻¹ (chapter 2, ex-02-best-diagonal)."""
    g = _generator(12)
    cases = [{"cov": torch.tensor([[1.0, 0.0], [0.0, 2.0]])}, {"cov": torch.tensor([[2.0, 1.2], [1.2, 1.0]])}]
    for d in (3, 4):
        a = torch.randn(d, d, generator=g)
        cases.append({"cov": a @ a.T + 0.5 * torch.eye(d)})
    return compare(
        "best_diagonal_variances",
        fn,
        lambda cov: 1 / torch.linalg.inv(cov).diagonal(),
        cases,
        hint="invert the covariance to get the precision Λ = Σ⁻¹ (torch.linalg.inv), take its diagonal, and return "
        "1/Λ_jj: shape (d,).",
        mistakes=(("the marginal variances Σ_jj: the best diagonal q has the conditional variances 1/Λ_jj",
                   lambda cov: cov.diagonal()),
                  ("the precisions Λ_jj themselves: the variances are their reciprocals",
                   lambda cov: torch.linalg.inv(cov).diagonal())),
    )


def _mu_sigma_cases(seed: int) -> list[dict]:
    """Means and standard deviations for chapter 3's closed forms: several σ, none equal to 1 or 2."""
    g = _generator(seed)
    return [
        {"mu": torch.tensor([1.0]), "sigma": torch.tensor([0.5])},
        {"mu": torch.tensor([0.0, -0.5]), "sigma": torch.tensor([1.5, 0.7])},
        {"mu": torch.randn(4, generator=g), "sigma": torch.rand(4, generator=g) + 0.3},
    ]


def sigma_gradient_variances(fn: Callable[[Tensor, Tensor], tuple]) -> None:
    """Check ``fn(mu, sigma)`` = (variance of the pathwise, variance of the score-function estimate) of ∂_σ E[z²] (chapter 3, ex-03-sigma)."""
    return compare(
        "sigma_gradient_variances",
        fn,
        lambda mu, sigma: (4 * mu**2 + 8 * sigma**2, 2 * mu**4 / sigma**2 + 60 * mu**2 + 74 * sigma**2),
        _mu_sigma_cases(13),
        hint="each variance is the second moment of one estimate minus the square of its mean 2σ; expand the powers "
        "of μ + σε and use E[ε²] = 1, E[ε⁴] = 3, E[ε⁶] = 15, E[ε⁸] = 105 (odd moments vanish). Two tensors shaped like mu.",
        mistakes=(("the second moments, not the variances: subtract the squared mean (2σ)² from each",
                   lambda mu, sigma: (4 * mu**2 + 12 * sigma**2, 2 * mu**4 / sigma**2 + 60 * mu**2 + 78 * sigma**2)),),
    )


def best_baseline(fn: Callable[[Tensor, Tensor], tuple]) -> None:
    """Check ``fn(mu, sigma)`` = (b*, variance of (f − b*)·s) for f(z) = z² and the score s in μ (chapter 3, ex-03-baseline)."""
    return compare(
        "best_baseline",
        fn,
        lambda mu, sigma: (mu**2 + 3 * sigma**2, 8 * mu**2 + 6 * sigma**2),
        _mu_sigma_cases(14),
        hint="b* = E[f s²] / E[s²] with s = ε/σ; the variance is E[f² s²] − E[f s²]²/E[s²] minus the squared mean "
        "(2μ)². Two tensors shaped like mu.",
        mistakes=(("the baseline b = E[f] = μ² + σ² and its variance, not the best constant b*",
                   lambda mu, sigma: (mu**2 + sigma**2, 8 * mu**2 + 10 * sigma**2)),),
    )


def lognormal_gradients(fn: Callable[[Tensor, Tensor, Tensor], tuple]) -> None:
    """Check ``fn(mu, sigma, eps)`` = pathwise estimates of (∂_μ, ∂_σ) E[exp(μ + σε)] averaged over the given noise (chapter 3, ex-03-lognormal)."""
    g = _generator(15)
    cases = [{"mu": torch.tensor(0.5), "sigma": torch.tensor(0.8), "eps": torch.tensor([0.0, 1.0, -2.0])}]
    cases += [{"mu": torch.tensor(m), "sigma": torch.tensor(s), "eps": torch.randn(n, generator=g)}
              for m, s, n in ((-1.0, 0.3, 10), (0.2, 1.3, 50))]

    def reference(mu, sigma, eps):
        z = torch.exp(mu + sigma * eps)
        return z.mean(), (z * eps).mean()

    return compare(
        "lognormal_gradients",
        fn,
        reference,
        cases,
        hint="make mu and sigma require grad, z = exp(mu + sigma * eps), and take torch.autograd.grad(z.mean(), "
        "[mu, sigma]): two numbers (0-dimensional tensors), the averages over the draws of the per-draw derivatives.",
        mistakes=(("the derivatives of the closed form e^(μ + σ²/2), not the estimates from the given noise",
                   lambda mu, sigma, eps: (torch.exp(mu + sigma**2 / 2), sigma * torch.exp(mu + sigma**2 / 2))),
                  ("the same derivative twice: ∂z/∂σ = z·ε, not z",
                   lambda mu, sigma, eps: (torch.exp(mu + sigma * eps).mean(),) * 2)),
    )


def _from_codes(log_lik: Callable, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """(log w, log p(x|z) − KL(q ‖ p(z))) at the codes ``z``."""
    rec = log_lik(x, z)
    return (rec + distributions.log_standard_normal(z) - distributions.log_normal(z, mu, logvar),
            rec - distributions.kl_standard_normal(mu, logvar))


def log_weight_and_analytic_elbo(fn: Callable) -> None:
    """Check ``fn(log_lik, x, mu, logvar, eps)`` = (log w, analytic-KL ELBO estimate) from one z = μ + σ ⊙ ε per datapoint (chapter 4, ex-04-k1)."""
    g = _generator(16)
    W = torch.randn(6, 3, generator=g)

    def log_lik(x, z):  # a Bernoulli decoder whose logits are linear in z
        return distributions.log_bernoulli(x, z @ W.T)

    cases = [{"log_lik": log_lik, "x": (torch.rand(B, 6, generator=g) > 0.5).to(torch.get_default_dtype()),
              "mu": torch.randn(B, 3, generator=g), "logvar": torch.randn(B, 3, generator=g) - 1,
              "eps": torch.randn(B, 3, generator=g)} for B in (1, 4, 7)]

    return compare(
        "log_weight_and_analytic_elbo",
        fn,
        lambda log_lik, x, mu, logvar, eps: _from_codes(log_lik, x, mu, logvar, mu + torch.exp(0.5 * logvar) * eps),
        cases,
        hint="z = mu + exp(½·logvar)·eps, shape (B, d); log w = log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²), the "
        "analytic estimate log p(x|z) − KL(q ‖ N(0, I)); two tensors of shape (B,).",
        mistakes=(("computed from z = μ + exp(logvar)·ε: the noise is scaled by σ = exp(½·logvar), not by the variance",
                   lambda log_lik, x, mu, logvar, eps: _from_codes(log_lik, x, mu, logvar, mu + torch.exp(logvar) * eps)),),
    )


def _binary_draws(value, x: Tensor, repeats: int) -> str | None:
    """Judge ``value``, ``repeats`` binary draws of each row of ``x`` stacked along axis 0: zeros and ones, pixel means within 4 standard errors of x."""
    if not isinstance(value, Tensor):
        return f"it returned {_kind(value)}, not a torch tensor"
    if value.shape != (repeats * len(x), x.shape[1]):
        return f"it returned shape {tuple(value.shape)} instead of {(repeats * len(x), x.shape[1])}, the shape of its input"
    if not ((value == 0) | (value == 1)).all():
        return "it returned values other than 0 and 1: draw each pixel from a Bernoulli distribution"
    means = value.to(x.dtype).reshape(repeats, len(x), x.shape[1]).mean(0)
    error = (x * (1 - x) / repeats).sqrt()
    far = (means - x).abs() > 4 * error + 1e-12
    if far.any():
        index = tuple(torch.nonzero(far)[0].tolist())
        return (f"over {repeats} draws, pixel {index} was 1 in a fraction {_number(means[index].item())} of them, but its grey "
                f"level is {_number(x[index].item())} (allowed: 4 standard errors, ±{_number(4 * error[index].item())}): each "
                f"pixel must be 1 with probability equal to its grey level")
    return None


def binarize(fn: Callable[[Tensor, torch.Generator], Tensor]) -> None:
    """Graded assertion on ``fn(x, generator)``: one binary image per grey image, pixel i equal to 1 with probability x_i (chapter 4, ex-04-dynamic).

    Each input repeats a few grey images 4,000 times; every pixel's fraction of ones must lie within four
    standard errors, √(x(1 − x)/4000), of its grey level (a right answer fails one input in about 10⁴).
    """
    g, repeats = _generator(17), 4000
    images = [torch.tensor([[0.0, 1.0, 0.5, 0.2]]), torch.rand(3, 5, generator=g)]
    cases = [{"x": x.repeat(repeats, 1), "seed": seed} for seed, x in enumerate(images)]
    return verify(
        "binarize",
        fn,
        cases,
        lambda value, x, seed: _binary_draws(value, x[: len(x) // repeats], repeats),
        hint="torch.bernoulli(x, generator=generator), or (torch.rand(x.shape, generator=generator) < x) converted to "
        "x's dtype: a new draw at every call, not a threshold at 0.5.",
        adapt=lambda f: lambda x, seed: f(x, torch.Generator().manual_seed(seed)),
    )


def linear_encoder(fn: Callable[[Tensor, Tensor, Tensor, float], tuple]) -> None:
    """Check ``fn(x, W, b, var_x)`` = (mean, log-variance) of the best diagonal q for the linear-Gaussian model, each (B, d) (chapter 5, ex-05-linear-encoder)."""
    from course_code import tractable

    g = _generator(18)
    cases = []
    for B, D, d, var_x in ((1, 2, 2, 0.25), (4, 5, 3, 0.7), (6, 4, 2, 1.8)):
        cases.append({"x": torch.randn(B, D, generator=g), "W": torch.randn(D, d, generator=g),
                      "b": torch.randn(D, generator=g), "var_x": var_x})

    def reference(x, W, b, var_x):
        return tractable.LinearGaussian(W, b, math.log(var_x)).best_diagonal_q(x)

    def marginal(x, W, b, var_x):
        model = tractable.LinearGaussian(W, b, math.log(var_x))
        mean, cov = model.posterior(x)
        return mean, cov.diagonal().log().expand_as(mean)

    return compare(
        "linear_encoder",
        fn,
        reference,
        cases,
        hint="Λ = I + WᵀW/σ², the mean A(x − b) with A = Λ⁻¹Wᵀ/σ² (one row per datapoint), and the constant "
        "log-variance −log Λ_jj repeated for every row: two tensors of shape (B, d).",
        mistakes=(("the right mean with the marginal log-variances log Σ_jj: the best diagonal q has −log Λ_jj",
                   marginal),),
    )


def standardize(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(eps)`` = one-dimensional draws (K, B, 1) moment-matched along the sample axis: mean 0, mean square 1 (chapter 5, ex-05-optimism)."""
    g = _generator(19)
    cases = [{"eps": torch.tensor([[[1.0]], [[2.0]], [[4.0]]])}]
    cases += [{"eps": torch.randn(K, B, 1, generator=g)} for K, B in ((5, 3), (16, 2))]

    def reference(eps):
        centred = eps - eps.mean(0)
        return centred / centred.pow(2).mean(0).sqrt()

    return compare(
        "standardize",
        fn,
        reference,
        cases,
        hint="subtract each datapoint's mean over the K draws (axis 0), then divide by the root of the mean square "
        "of the centred draws (K in the denominator, as the sample covariance in inference.standardized_noise).",
        references=(_resolve("course_code.inference.standardized_noise"),),
        mistakes=(("divided by the standard deviation with K − 1 in the denominator (torch.std's default): use K",
                   lambda eps: (eps - eps.mean(0)) / eps.std(0)),
                  ("divided by the standard deviation without subtracting the mean first",
                   lambda eps: eps / eps.pow(2).mean(0).sqrt())),
        axes={0: "the sample axis 0"},
    )


def difference_of_means(fn: Callable[[Tensor, Tensor], tuple]) -> None:
    """Check ``fn(a, b)`` = (mean(a) − mean(b), its standard error) for two independent samples (chapter 5, ex-05-train-gap)."""
    g = _generator(20)
    cases = [{"a": torch.tensor([1.0, 2.0, 4.0]), "b": torch.tensor([0.0, 1.0])}]
    cases += [{"a": torch.randn(n, generator=g) + 1, "b": 2 * torch.randn(m, generator=g)} for n, m in ((10, 7), (40, 25))]

    def error(a, b):
        return (a.var() / len(a) + b.var() / len(b)).sqrt()

    return compare(
        "difference_of_means",
        fn,
        lambda a, b: (a.mean() - b.mean(), error(a, b)),
        cases,
        hint="the means' standard errors are std/√n (n − 1 in the std, torch's default); for independent samples "
        "the variance of the difference is the sum of the two variances: √(SE_a² + SE_b²). Two numbers.",
        mistakes=(("the sum of the two standard errors: for independent samples add their squares, then take the root",
                   lambda a, b: (a.mean() - b.mean(), a.std() / len(a) ** 0.5 + b.std() / len(b) ** 0.5)),
                  ("the root of the summed variances without dividing each by its sample size",
                   lambda a, b: (a.mean() - b.mean(), (a.var() + b.var()).sqrt()))),
    )


def _weak_codes(value, n: int, d: int, seed: int) -> str | None:
    """Judge encoder outputs (mu, logvar) for n datapoints: all d units active, mutual information below 0.05 nats."""
    from course_code import diagnostics

    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, Tensor) for v in value):
        return f"it returned {_kind(value)}: return two tensors, (mu, logvar)"
    mu, logvar = value
    if mu.shape != (n, d) or logvar.shape != (n, d):
        return f"it returned shapes {tuple(mu.shape)} and {tuple(logvar.shape)} instead of {(n, d)} for both"
    if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
        return "it returned values that are not finite"
    active = diagnostics.active_units(mu)
    if active != d:
        return f"{active} of the {d} units are active (variance of the means above 0.01): all {d} must be"
    information = diagnostics.mutual_information(mu, logvar, _generator(1000 + seed)).item()  # not the learner's stream
    if information >= 0.05:
        return f"the mutual information is {information:.3f} nats (estimated with one draw per datapoint): it must be below 0.05"
    return None


def weakly_informative_codes(fn: Callable[[int, int, torch.Generator], tuple]) -> None:
    """Graded assertion on ``fn(n, d, generator)``: encoder outputs (mu, logvar) of shape (n, d) with every unit active and I_q(x; z) < 0.05 nats (chapter 6, ex-06-diagnostics)."""
    cases = [{"n": n, "d": d, "seed": seed} for seed, (n, d) in enumerate(((1000, 4), (800, 3)))]
    return verify(
        "weakly_informative_codes",
        fn,
        cases,
        _weak_codes,
        hint="the active-unit threshold is on the variance of the means: spread the means a little above 0.01 and keep "
        "the posterior variances near 1, so each code says little about its datapoint.",
        adapt=lambda f: lambda n, d, seed: f(n, d, torch.Generator().manual_seed(seed)),
    )


# --- Chapter 10: Deeper models: hierarchical VAEs ---


def precision_weighted(fn: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """Check ``fn(mu_hat, logvar_hat, mu_p, logvar_p)`` = (μ, log σ²) of the Ladder VAE's top-down q (exercise 10.1, eq. `eq-precision-weighted`)."""
    from course_code import hierarchical

    g = _generator(10)
    cases = [
        {"mu_hat": torch.zeros(1, 1), "logvar_hat": torch.zeros(1, 1), "mu_p": torch.zeros(1, 1), "logvar_p": torch.zeros(1, 1)},
        {"mu_hat": torch.tensor([[1.0, -2.0]]), "logvar_hat": torch.tensor([[0.0, -1.0]]),
         "mu_p": torch.tensor([[3.0, 0.5]]), "logvar_p": torch.tensor([[math.log(3.0), 1.5]])},
    ] + [
        {"mu_hat": 2 * torch.randn(shape, generator=g), "logvar_hat": torch.randn(shape, generator=g),
         "mu_p": torch.randn(shape, generator=g), "logvar_p": torch.randn(shape, generator=g) - 0.5}
        for shape in ((5, 4), (2, 3, 6))
    ]
    return compare(
        "precision_weighted",
        fn,
        hierarchical.precision_weighted,
        cases,
        hint="precisions add, not variances: 1/σ² = 1/σ̂² + 1/σ_p²; the mean is σ²·(μ̂/σ̂² + μ_p/σ_p²), each mean weighted "
        "by its own precision; return (mean, log σ²), elementwise, with the inputs' shape.",
        references=(hierarchical.precision_weighted,),
    )


def linear_marginal(fn: Callable) -> None:
    """Check ``fn(A, a, var1, W, b, var_x)`` = mean (D,) and covariance (D, D) of x in the linear-Gaussian two-layer model (exercise 10.2, eq. `eq-linear-marginal`)."""
    from course_code import hierarchical

    g = _generator(11)
    cases = [
        {"A": torch.ones(1, 1), "a": torch.zeros(1), "var1": torch.ones(1), "W": torch.ones(1, 1), "b": torch.zeros(1),
         "var_x": torch.ones(1)},
    ]
    for d2, d1, x_dim in ((1, 2, 3), (2, 3, 5)):
        cases.append({"A": torch.randn(d1, d2, generator=g), "a": torch.randn(d1, generator=g),
                      "var1": torch.rand(d1, generator=g) + 0.2, "W": torch.randn(x_dim, d1, generator=g),
                      "b": torch.randn(x_dim, generator=g), "var_x": torch.rand(x_dim, generator=g) + 0.1})
    return compare(
        "linear_marginal",
        fn,
        hierarchical.linear_marginal,
        cases,
        hint="marginalise z₂ first: z₁ ~ N(a, A Aᵀ + diag var1) (the noise of z₁ adds its variance); then "
        "x ~ N(W a + b, W Cov(z₁) Wᵀ + diag var_x). Return (mean, covariance).",
        references=(hierarchical.linear_marginal,),
    )


# --- Chapter 7: Tighter bounds: importance-weighted training ---


def effective_sample_size(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(log_w)`` = (Σ_k w_k)² / Σ_k w_k² per datapoint for log-weights of shape (K, B) (chapter 7)."""
    from course_code import objectives

    g = _generator(70)
    cases = [
        {"log_w": torch.zeros(4, 1)},  # equal weights: ESS = K
        {"log_w": torch.tensor([[0.0, -3.0], [-50.0, -3.0], [-60.0, 0.0]])},  # one weight dominates the first column
        {"log_w": torch.randn(6, 3, generator=g)},
        {"log_w": -1000.0 + 3 * torch.randn(20, 4, generator=g)},  # exp underflows to 0
        {"log_w": torch.tensor([[-20.0, 5.0, -7.0]])},  # K = 1
    ]
    return compare(
        "effective_sample_size",
        fn,
        objectives.effective_sample_size,
        cases,
        hint="log ESS = 2·logsumexp(log_w) − logsumexp(2·log_w), both over the sample axis 0; exponentiate only at "
        "the end (exp(log_w) is 0 for log-weights near −1000, and 0/0 is nan).",
        references=(objectives.effective_sample_size,),
    )


def _dreg_reference(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """The value Σ_k w̃_k² log w_k and its gradient w̃_k² in ``log_w`` (w̃ held constant) (chapter 7, eq. `eq-dreg`)."""
    weights = torch.softmax(log_w, dim=0)
    return (weights**2 * log_w).sum(0), weights**2


def _value_and_gradient(fn: Callable) -> Callable:
    """``fn(log_w)`` turned into a function returning its value and the gradient of the value's sum in ``log_w``."""

    def value_and_gradient(log_w: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            log_w = log_w.clone().requires_grad_(True)
            value = fn(log_w)
            if not isinstance(value, Tensor) or not value.requires_grad:
                return value, torch.zeros_like(log_w)  # no gradient reaches log_w: the comparison says so
            (gradient,) = torch.autograd.grad(value.sum(), log_w, allow_unused=True)
        return value.detach(), torch.zeros_like(log_w) if gradient is None else gradient

    return value_and_gradient


def dreg_surrogate(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(log_w)``: value Σ_k w̃_k² log w_k per datapoint, gradient w̃_k² in ``log_w`` (chapter 7, eq. `eq-dreg`)."""
    g = _generator(71)
    cases = [
        {"log_w": torch.zeros(3, 1)},
        {"log_w": torch.randn(5, 2, generator=g)},
        {"log_w": -20.0 + 4 * torch.randn(50, 3, generator=g)},
        {"log_w": torch.tensor([[-2.0, 1.0]])},  # K = 1: the weight is 1
    ]
    return compare(
        "dreg_surrogate",
        fn,
        _dreg_reference,
        cases,
        hint="the result is (value, gradient in log_w); the normalized weights w̃ = softmax(log_w, dim=0) must be "
        "constants, computed from log_w.detach(), and squared; return (w̃² · log_w).sum(0), one number per datapoint.",
        adapt=_value_and_gradient,
    )


def _bound_cases() -> list[dict]:
    """Linear-Gaussian models, one datapoint each, and a diagonal q: the best one (ELBO) or the mass-covering one."""
    from course_code import tractable

    cases = []
    for number, (x_dim, z_dim, model_seed, cover, k) in enumerate(((3, 2, 11, False, 50), (3, 2, 11, True, 50),
                                                                    (5, 3, 4, True, 7))):
        lg = tractable.LinearGaussian.random(x_dim=x_dim, z_dim=z_dim, noise_std=0.5, seed=model_seed)
        x, _ = lg.sample(1, _generator(72 + number))
        mu, logvar = lg.best_diagonal_q(x)
        if cover:  # the posterior's marginal variances
            logvar = torch.linalg.inv(lg.precision()).diagonal().log().expand_as(mu)
        cases.append({"W": lg.W, "b": lg.b, "logvar_x": lg.logvar_x, "x": x, "mu": mu, "logvar": logvar, "k": k,
                      "repeats": 2000, "seed": number})
    return cases


def _elbo_and_bound(value, W: Tensor, b: Tensor, logvar_x: float, x: Tensor, mu: Tensor, logvar: Tensor, k: int,
                    repeats: int, seed: int) -> str | None:
    """Judge (ELBO, mean of L_K, its standard error): exact ELBO, a mean within four standard errors of 20,000 draws."""
    from course_code import objectives, tractable

    if not isinstance(value, (tuple, list)) or len(value) != 3:
        return f"it returned {_kind(value)}: return three numbers, (ELBO, mean of the draws of L_K, their standard error)"
    try:
        elbo, bound, error = (float(v) for v in value)
    except (TypeError, ValueError, RuntimeError):
        return "it returned something that is not three numbers: return (ELBO, mean of L_K, standard error)"
    if not all(math.isfinite(v) for v in (elbo, bound, error)):
        return "it returned numbers that are not finite"
    lg = tractable.LinearGaussian(W, b, logvar_x)
    exact = lg.elbo(x, mu, logvar).item()
    if abs(elbo - exact) > 1e-4:
        return (f"its ELBO is {_number(elbo)} but the exact ELBO of this q is {_number(exact)} (allowed: 10⁻⁴): use the "
                f"closed form, lg.elbo(x, mu, logvar)")
    many = 20_000
    draws = objectives.iwae_bound(lg.log_likelihood, x.expand(many, -1), mu.expand(many, -1), logvar.expand(many, -1),
                                  k, generator=_generator(2000 + seed))  # not the learner's stream
    reference, spread = draws.mean().item(), draws.std().item()
    expected_error = spread / repeats**0.5
    if not expected_error / 1.5 <= error <= 1.5 * expected_error:
        return (f"its standard error is {_number(error)}, but {repeats} draws of L_{k} have a standard error near "
                f"{_number(expected_error)} (allowed: within a factor 1.5): the standard deviation of the draws divided by "
                f"the square root of their number")
    allowed = 4 * (error**2 + (spread / many**0.5) ** 2) ** 0.5
    if abs(bound - reference) > allowed:
        return (f"its mean of L_{k} is {_number(bound)}, but {many:,} draws give {_number(reference)} (allowed: four "
                f"standard errors, ±{_number(allowed)}): each draw is log (1/K) Σ_k w_k over K = {k} samples of q")
    return None


def elbo_and_bound(fn: Callable) -> None:
    """Graded assertion on ``fn(lg, x, mu, logvar, k, repeats, generator)`` = (ELBO, mean of ``repeats`` draws of L_K, its standard error) (chapter 7, ex-07-covering, eq. `eq-iwae-k`).

    The ELBO must be exact within 10⁻⁴ nats; the standard error within a factor 1.5 of the spread of the draws
    divided by √repeats; the mean within four standard errors (the two combined) of the mean of 20,000 draws (a
    right answer fails one input in about 10⁴).
    """
    from course_code import tractable

    return verify(
        "elbo_and_bound",
        fn,
        _bound_cases(),
        _elbo_and_bound,
        hint="the ELBO in closed form, lg.elbo(x, mu, logvar); the draws as objectives.iwae_bound(lg.log_likelihood, "
        "x, mu, logvar, k, generator=generator) with x, mu and logvar repeated `repeats` times along axis 0; their "
        "mean, and their standard deviation divided by √repeats.",
        adapt=lambda f: lambda W, b, logvar_x, x, mu, logvar, k, repeats, seed: f(
            tractable.LinearGaussian(W, b, logvar_x), x, mu, logvar, k, repeats, torch.Generator().manual_seed(seed)),
    )


# --- Chapter 8: Richer posteriors: full covariance and normalizing flows ---


def _random_tril(d: int, batch: int, g: torch.Generator) -> Tensor:
    A = torch.randn(batch, d, d, generator=g)
    return torch.linalg.cholesky(A @ A.transpose(-2, -1) + 0.3 * torch.eye(d))


def log_normal_full(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(x, mu, scale_tril)`` = log N(x; μ, LLᵀ) per datapoint (chapter 8, exercise ex-08-log-normal-full, eq. `eq-full-cov-logpdf`)."""
    g = _generator(81)
    cases = [{"x": torch.zeros(1, 2), "mu": torch.zeros(1, 2), "scale_tril": torch.eye(2)[None]}]
    for B, d in ((4, 3), (6, 5)):
        cases.append({"x": 2 * torch.randn(B, d, generator=g), "mu": torch.randn(B, d, generator=g), "scale_tril": _random_tril(d, B, g)})
    return compare(
        "log_normal_full",
        fn,
        distributions.log_normal_full,
        cases,
        hint="whiten the residual, r = L⁻¹(x − μ) (torch.linalg.solve_triangular with upper=False, on (x − μ)[..., None]); "
        "log det(LLᵀ) = 2 Σ_j log L_jj; the result is −½ (d log 2π + log det + ‖r‖²), one value per datapoint.",
        references=(distributions.log_normal_full,),
    )


def planar(fn: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
    """Check ``fn(z, u, w, b)`` = (z + û tanh(wᵀz + b), log |1 + ûᵀψ(z)|) (chapter 8, exercise ex-08-planar, eq. `eq-planar`)."""
    from course_code import flows

    g = _generator(82)
    cases = [{"z": torch.zeros(1, 2), "u": torch.zeros(2), "w": torch.tensor([1.0, 0.0]), "b": torch.zeros(())}]
    for B, d in ((5, 1), (4, 3)):
        w = torch.randn(d, generator=g)
        cases.append({"z": 2 * torch.randn(B, d, generator=g), "u": -3 * w + torch.randn(d, generator=g), "w": w,
                      "b": torch.randn((), generator=g)})  # wᵀu below −1: the constraint on û matters
    return compare(
        "planar",
        fn,
        flows.planar,
        cases,
        hint="first make the step invertible, û = u + (softplus(wᵀu) − 1 − wᵀu) w / ‖w‖² (or flows.invertible_u(u, w)); "
        "then t = tanh(z @ w + b) has one value per datapoint, f(z) = z + û t, and log |det| = log(1 + (1 − t²) wᵀû).",
        references=(flows.planar, flows.planar_chain),
    )


def planar_slope(fn: Callable[[Tensor, float], Tensor]) -> None:
    """Check ``fn(z, u)`` = f'(z) = 1 + u (1 − tanh² z) for the one-dimensional planar step f(z) = z + u tanh z (w = 1, b = 0, no correction of u) (chapter 8, exercise ex-08-fold, eq. `eq-planar`)."""
    g = _generator(83)
    cases = [{"z": torch.zeros(1), "u": -2.0}]  # the exercise's step at its steepest descent
    for N, u in ((7, -2.0), (5, -0.5), (9, 1.5), (4, -4.0)):
        cases.append({"z": 2 * torch.randn(N, generator=g), "u": u})
    return compare(
        "planar_slope",
        fn,
        lambda z, u: 1 + u * (1 - torch.tanh(z) ** 2),
        cases,
        hint="d/dz tanh z = 1 − tanh² z, so f'(z) = 1 + u (1 − tanh² z), one value per point of z; use u as it is given "
        "(the exercise is about the step without the correction û).",
    )


# --- Chapter 9: Richer priors ---

def mixture_log_prob(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(z, mu, logvar, logits)`` = log Σ_k softmax(logits)_k N(z; μ_k, diag σ_k²) per point (exercise ex-09-mixture, eq. `eq-mixture-prior`)."""
    g = _generator(9)
    cases = [{"z": torch.tensor([[0.5]]), "mu": torch.tensor([[0.0]]), "logvar": torch.tensor([[0.0]]), "logits": torch.tensor([3.0])}]
    for b, k, d in ((5, 3, 2), (4, 6, 3), (7, 2, 1)):  # B, K and d all different, so a wrong axis shows
        cases.append({"z": 2 * torch.randn(b, d, generator=g), "mu": 2 * torch.randn(k, d, generator=g),
                      "logvar": torch.randn(k, d, generator=g), "logits": torch.randn(k, generator=g) + 2})
    return compare(
        "mixture_log_prob",
        fn,
        lambda z, mu, logvar, logits: distributions.log_mixture_normal(z, mu, logvar, logits.log_softmax(-1)),
        cases,
        hint="the weights are softmax(logits), so log π = logits.log_softmax(-1) (the logits need not sum to anything); "
        "log N(z; μ_k, diag σ_k²) for every pair (z_b, component k) has shape (B, K) (z[:, None, :] against mu[None]), "
        "summed over d; then torch.logsumexp of log π_k + log N over the component axis, never a plain sum or mean.",
        references=(distributions.log_mixture_normal,),
    )


def prior_mass_in_holes(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """Check ``fn(log_q, log_p, ratio)`` = the normalized prior mass on the grid points where q(z) < p(z)/ratio (exercise ex-09-holes, eq. `eq-holes`)."""
    from course_code import diagnostics

    g = _generator(10)
    axis = torch.linspace(-4, 4, 41)
    grid = torch.cartesian_prod(axis, axis)
    log_p = distributions.log_standard_normal(grid)
    cases = [{"log_q": log_p.clone(), "log_p": log_p, "ratio": 10.0},  # q = p: no holes
             {"log_q": log_p + 7.0, "log_p": log_p - 3.0, "ratio": 2.0}]  # the same, each off by a constant
    for ratio in (10.0, 3.0):
        mu, logvar = 2 * torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g) - 2
        cases.append({"log_q": diagnostics.aggregate_log_density(grid, mu, logvar), "log_p": log_p, "ratio": ratio})
    return compare(
        "prior_mass_in_holes",
        fn,
        diagnostics.prior_mass_in_holes,
        cases,
        hint="normalize both over the grid first (log_softmax over the points), since the log-densities may be off by "
        "constants; a point is in a hole when q < p / ratio; add up the normalized p, not q, over those points.",
        references=(diagnostics.prior_mass_in_holes,),
    )


def vamp_log_prior(fn: Callable[[torch.nn.Module, Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(encoder, pseudo_inputs, z)`` = log (1/K) Σ_k q_φ(z | u_k) per point, which is the aggregated posterior of the encoder at the pseudo-inputs (exercise ex-09-vamp-data, eq. `eq-vampprior`)."""
    from course_code import diagnostics, models

    g = _generator(11)
    cases = []
    for x_dim, z_dim, k, m in ((5, 2, 7, 4), (6, 3, 1, 9), (3, 1, 4, 6)):  # D, d, K and M all different; K = 1 is one Gaussian
        encoder = models.Encoder(x_dim, z_dim, hidden=(8,)).requires_grad_(False)
        for parameter in encoder.parameters():
            parameter.copy_(0.7 * torch.randn(parameter.shape, generator=g))
        cases.append({"encoder": encoder, "pseudo_inputs": torch.rand(k, x_dim, generator=g),
                      "z": 2 * torch.randn(m, z_dim, generator=g)})
    return compare(
        "vamp_log_prior",
        fn,
        lambda encoder, pseudo_inputs, z: diagnostics.aggregate_log_density(z, *encoder(pseudo_inputs)),
        cases,
        hint="mu, logvar = encoder(pseudo_inputs), each (K, d); log N(z_m; μ_k, diag σ_k²) for every pair has shape (M, K) "
        "(z[:, None, :] against mu[None]), summed over d; then torch.logsumexp over the component axis minus log K, "
        "the equal weights 1/K.",
        references=(diagnostics.aggregate_log_density,),
    )


# --- Chapter 11: β > 1 and disentanglement ---


def information_gaps(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(information, entropy)`` = each factor's gap, (largest − second-largest I(z_j; v_k) over j) / H(v_k) (exercise 11.1, eq. `eq-mig`)."""
    from course_code import disentanglement

    g = _generator(110)
    cases = [
        {"information": torch.tensor([[0.9, 0.1], [0.3, 0.2], [0.0, 0.6]]), "entropy": torch.tensor([1.2, 0.8])},
        {"information": torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.7, 0.1]]), "entropy": torch.tensor([0.7, 1.4, 2.0])},  # a tie
    ] + [
        {"information": torch.rand(d, k, generator=g) * 2, "entropy": torch.rand(k, generator=g) * 2 + 1.5}
        for d, k in ((5, 4), (7, 3))
    ]
    return compare(
        "information_gaps",
        fn,
        disentanglement.information_gaps,
        cases,
        hint="for each factor k (a column of information), sort the column over the latent dimensions j (axis 0), "
        "subtract the second largest value from the largest, and divide by entropy[k]; the result has one gap per factor.",
        references=(disentanglement.information_gaps, disentanglement.mig),
        mistakes=(("the gap not divided by the factor's entropy H(v_k)",
                   lambda information, entropy: information.topk(2, dim=0).values.diff(dim=0)[0].neg()),
                  ("the largest minus the smallest I(z_j; v_k), where the second largest belongs",
                   lambda information, entropy: (information.max(0).values - information.min(0).values) / entropy)),
    )


def gaussian_total_correlation(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(cov)`` = ½ (Σ_j log Σ_jj − log det Σ) for covariances (..., d, d) (exercise 11.2, eq. `eq-gaussian-tc`)."""
    from course_code import disentanglement

    g = _generator(111)

    def covariances(*shape):
        a = torch.randn(*shape, shape[-1], generator=g)
        return a @ a.transpose(-1, -2) + 0.3 * torch.eye(shape[-1])

    cases = [
        {"cov": torch.tensor([[4.0, 1.2], [1.2, 1.0]])},
        {"cov": torch.diag(torch.tensor([0.5, 2.0, 3.0]))},  # independent coordinates: no total correlation
        {"cov": covariances(4)},
        {"cov": covariances(3, 5)},
    ]
    return compare(
        "gaussian_total_correlation",
        fn,
        disentanglement.gaussian_total_correlation,
        cases,
        hint="TC = KL(N(0, Σ) ‖ Π_j N(0, Σ_jj)) = ½ (Σ_j log Σ_jj − log det Σ): the log-variances of the marginals "
        "(the diagonal) minus the log-determinant (torch.linalg.slogdet or a Cholesky factor), one value per matrix.",
        references=(disentanglement.gaussian_total_correlation,),
        mistakes=(("½ (Σ_j log Σ_jj − log det Σ) with the variances' square roots on the diagonal: use the variances Σ_jj",
                   lambda cov: 0.5 * (0.5 * cov.diagonal(dim1=-2, dim2=-1).log().sum(-1) - torch.linalg.slogdet(cov)[1])),),
    )


# --- Chapter 13: Discrete latent variables ---


def gumbel_softmax_sample(fn: Callable[[Tensor, Tensor, float], Tensor]) -> None:
    """Check ``fn(logits, noise, temperature)`` = softmax((θ + g)/τ) for every row of Gumbel noise (exercise ex-13-gumbel-softmax, eq. `eq-gumbel-softmax`)."""
    g = _generator(13)
    cases = [{"logits": torch.zeros(2), "noise": torch.zeros(1, 2), "temperature": 1.0}]
    for n, k, tau in ((5, 3, 0.5), (4, 6, 2.0), (7, 2, 0.1)):  # n and K differ, τ other than 1
        cases.append({"logits": 2 * torch.randn(k, generator=g), "noise": -torch.log(-torch.log(torch.rand(n, k, generator=g))),
                      "temperature": tau})
    return compare(
        "gumbel_softmax_sample",
        fn,
        lambda logits, noise, temperature: torch.softmax((logits + noise) / temperature, dim=-1),
        cases,
        hint="add the noise to the logits first, then divide the sum by the temperature, then softmax over the "
        "category axis (the last one); the result has the noise's shape (n, K) and each row sums to 1.",
        mistakes=[("the logits divided by the temperature and the noise not: divide their sum by τ",
                   lambda logits, noise, temperature: torch.softmax(logits / temperature + noise, dim=-1))],
    )


def quantize_vectors(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(z_e, codebook)`` = the nearest codebook vector to every z_e, in Euclidean distance (exercise ex-13-quantize, eq. `eq-vq-nearest`)."""
    from course_code import discrete

    g = _generator(14)
    cases = [{"z_e": torch.tensor([[[0.4, 0.0]]]), "codebook": torch.tensor([[0.0, 0.0], [1.0, 0.0]])}]
    for b, m, k, d in ((5, 3, 4, 2), (4, 2, 7, 3), (6, 1, 3, 5)):  # B, m, K and D all different
        codebook = torch.randn(k, d, generator=g) * torch.linspace(0.3, 3.0, k)[:, None]  # codes of unequal length
        cases.append({"z_e": 1.5 * torch.randn(b, m, d, generator=g), "codebook": codebook})

    def by_dot_product(z_e, codebook):
        return codebook[(z_e @ codebook.T).argmax(-1)]

    return compare(
        "quantize_vectors",
        fn,
        lambda z_e, codebook: discrete.quantize(z_e, codebook)[1],
        cases,
        hint="for every vector z_e[b, j] compute its squared distance to every row e_k of the codebook, shape (B, m, K) "
        "(z_e[..., None, :] against codebook), take the argmin over K, and return codebook[indices], shape (B, m, D).",
        references=(discrete.quantize,),
        mistakes=[("the codebook vector with the largest dot product, not the smallest distance: the codes' lengths "
                   "‖e_k‖² differ, so compare distances", by_dot_product)],
    )


# --- Chapter 12: Labels: conditional and semi-supervised VAEs ---


def _label_cases(seed: int) -> list[dict]:
    """Tables of labelled bounds (C, B) and classifier logits (B, C), C ≠ B, one with a uniform classifier."""
    g = _generator(seed)
    cases = [{"labelled": torch.tensor([[-3.0], [-5.0]]), "logits": torch.zeros(1, 2)}]  # q uniform
    for c, b, shift in ((3, 5, 0.0), (10, 4, 30.0), (4, 7, -5.0)):  # logits off by a constant: softmax ignores it
        cases.append({"labelled": -20 + 5 * torch.randn(c, b, generator=g),
                      "logits": shift + 3 * torch.randn(b, c, generator=g)})
    return cases


def unlabelled_bound(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(labelled, logits)`` = Σ_y q(y|x) L(x, y) + H(q(y|x)) per datapoint (exercise ex-12-unlabelled, eq. `eq-m2-unlabelled`)."""
    from course_code import semisupervised

    return compare(
        "unlabelled_bound",
        fn,
        semisupervised.unlabelled_bound,
        _label_cases(12),
        hint="q(y|x) = softmax(logits) over the class axis (log q = logits.log_softmax(-1)); weight each class's bound "
        "(labelled has shape (C, B): transpose it to (B, C)) by q and sum over the classes, then add the entropy "
        "−Σ_y q log q; the result has one number per datapoint, shape (B,).",
        mistakes=[("the entropy H(q(y|x)) is missing: Σ_y q(y|x) L(x, y) alone is not the bound",
                   lambda labelled, logits: (logits.softmax(-1) * labelled.T).sum(-1))],
        references=(semisupervised.unlabelled_bound,),
    )


def _class_posterior(bounds: Tensor, log_prior: Tensor) -> Tensor:
    return (bounds.T + log_prior).log_softmax(-1)


def class_posterior(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(bounds, log_prior)`` = log of p(y) e^{L(x|y)} / Σ_y' p(y') e^{L(x|y')}, shape (B, C) (exercise ex-12-bayes, eq. `eq-bayes-classifier`)."""
    g = _generator(13)
    cases = [{"bounds": torch.tensor([[-3.0, -8.0], [-4.0, -2.0], [-9.0, -2.5]]), "log_prior": torch.full((3,), -math.log(3))}]
    for c, b in ((4, 6), (10, 3), (2, 5)):
        cases.append({"bounds": -30 + 4 * torch.randn(c, b, generator=g),
                      "log_prior": torch.randn(c, generator=g).mul(2).log_softmax(-1)})
    cases.append({"bounds": torch.tensor([[-900.0, -2000.0], [-905.0, -1990.0]]), "log_prior": torch.tensor([-0.1, -2.35])})
    return compare(
        "class_posterior",
        fn,
        _class_posterior,
        cases,
        hint="add log p(y) (shape (C,)) to each datapoint's bounds (bounds has shape (C, B): transpose it to (B, C)), "
        "then normalize over the class axis with log_softmax(-1), never exp then divide (e^-900 is 0).",
        mistakes=[("the prior p(y) is left out: add log_prior to every datapoint's bounds before normalizing",
                   lambda bounds, log_prior: bounds.T.log_softmax(-1))],
    )
