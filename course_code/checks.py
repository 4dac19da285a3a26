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
:func:`compare` with the reference implementation, a list of input cases and a hint.
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


def _shape_problem(expected: torch.Size, got: torch.Size) -> str:
    message = f"it returned shape {tuple(got)} instead of {tuple(expected)}"
    if len(got) == len(expected) + 1 and got[:-1] == expected:
        return message + ": did you forget to sum over the last axis?"
    if len(got) < len(expected) and math.prod(got) == 1:
        return message + ": did you sum over every axis instead of only the last one?"
    return message + ": check which axes you sum over, and keep one value per datapoint"


def _value_problem(expected: Tensor, got: Tensor, atol: float, rtol: float) -> str:
    bad = ~torch.isfinite(got) & torch.isfinite(expected)
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        return f"it returned {got[index].item()} at index {index}, where the expected value is finite"
    message = "its values differ from the reference"
    if expected.abs().max() > 10 * atol:
        for factor, words in ((-1.0, "the opposite of the expected value: is a sign flipped?"),
                              (2.0, "twice the expected value: is a factor ½ missing?"),
                              (0.5, "half the expected value: an extra factor ½, or a mean where a sum belongs?")):
            if torch.allclose(got, factor * expected, atol=atol, rtol=rtol):
                return f"it is {words}"
    if expected.numel() > 1:
        difference = (got - expected).abs().nan_to_num(nan=math.inf)
        index = tuple(torch.nonzero(difference == difference.max())[0].tolist())
        message += (f"; the largest difference is at index {index}: "
                    f"expected {_number(expected[index].item())}, obtained {_number(got[index].item())}")
    return message


def _mismatch(expected, got, atol: float, rtol: float) -> str | None:
    """Why ``got`` differs from ``expected``, or None when they agree."""
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return (f"it returned {_kind(got)}, not a torch tensor: compute the result with torch "
                    f"operations (torch.exp, .sum, …) so that it stays a tensor")
        if got.shape != expected.shape:
            return _shape_problem(expected.shape, got.shape)
        got = got.detach().to(expected.dtype)
        if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
            return _value_problem(expected, got, atol, rtol)
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
) -> None:
    """Run ``fn`` and ``reference(**case)`` on every case; print the verdict, raise :class:`CheckFailed` on the first failure.

    ``fn`` is called by keyword when its parameters are named like the keys of a case, by position otherwise
    (after ``adapt(fn)``, when given). ``references`` are the course's implementations of the answer: calling
    one from ``fn`` fails the check. An ``fn`` whose type has a ``call_cases`` method runs elsewhere (grading):
    ``fn.call_cases(cases, reference names, adapt, seconds)`` returns one outcome of :func:`run_case` per case.
    """
    hint_line = f"\n  hint: {hint}" if hint else ""
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
    for number, case in enumerate(cases, start=1):
        with torch.no_grad():
            expected = reference(**case)
        where = f"on input {number} of {len(cases)}: {_describe(case)}"
        kind, *details = next(outcomes, ("did not finish",))
        if kind == "not attempted":
            _record(name, False, f"{name}: not attempted yet (the function still raises NotImplementedError)", "not attempted")
            raise details[0]
        if kind == "returned":
            why = _mismatch(expected, details[0], atol, rtol)
            if why is None:
                continue
            message = f"{name}: {why}\n  {where}\n  expected: {_short(expected)}\n  obtained: {_short(details[0])}{hint_line}"
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
    )


def _estimator_cases(seed: int = 0) -> list[dict]:
    """Inputs (f, mu, sigma, eps) for per-sample gradient estimators of E_{N(μ,σ²)}[f(z)] (chapter 3)."""
    g = _generator(seed)
    return [
        {"f": torch.square, "mu": torch.tensor([1.0]), "sigma": torch.tensor([2.0]), "eps": torch.tensor([[0.5], [-1.0], [2.0]])},
        {"f": torch.sin, "mu": torch.tensor([0.3, -1.2]), "sigma": torch.tensor([0.5, 1.5]), "eps": torch.randn(6, 2, generator=g)},
        {"f": torch.exp, "mu": torch.randn(3, 2, generator=g), "sigma": torch.rand(3, 2, generator=g) + 0.2, "eps": torch.randn(4, 3, 2, generator=g)},
    ]


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
    return compare(
        "elbo_from_samples",
        fn,
        lambda log_lik, x, z, mu, logvar: (
            log_lik(x, z) + distributions.log_standard_normal(z) - distributions.log_normal(z, mu, logvar)
        ).mean(0),
        cases,
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
    )


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
