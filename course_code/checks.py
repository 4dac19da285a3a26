"""Checks for the coding exercises: your function against the course's reference implementation.

Each check runs your function on random and edge-case inputs, compares the result with the
reference, and prints a verdict in plain words. A failing check raises :class:`CheckFailed`
naming the input, the expected and obtained values, and a hint. When the environment variable
``COURSE_CHECKS_LOG`` names a file, every verdict is also appended to it as a JSON line (this
is how submissions are graded).
"""

import json
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from course_code import distributions


class CheckFailed(AssertionError):
    """Your function gave a wrong answer on at least one input; the message says which."""


def _record(name: str, passed: bool, message: str) -> None:
    log = os.environ.get("COURSE_CHECKS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"check": name, "passed": passed, "message": message}) + "\n")


def _describe(args: dict) -> str:
    parts = []
    for key, value in args.items():
        shown = value.tolist() if isinstance(value, Tensor) and value.numel() <= 8 else value
        if isinstance(value, Tensor) and value.numel() > 8:
            shown = f"tensor of shape {tuple(value.shape)}"
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def _short(value) -> str:
    if isinstance(value, Tensor):
        if value.numel() <= 8:
            return str([round(v, 5) for v in value.flatten().tolist()])
        return f"tensor of shape {tuple(value.shape)}, first values {[round(v, 5) for v in value.flatten()[:4].tolist()]}"
    return repr(value)


def _mismatch(expected, got, atol: float, rtol: float) -> str | None:
    """Why ``got`` differs from ``expected``, or None when they agree."""
    if not isinstance(got, Tensor):
        try:
            got = torch.as_tensor(got, dtype=expected.dtype)
        except (TypeError, ValueError, RuntimeError):
            return f"it returned a {type(got).__name__}, not a tensor"
    if got.shape != expected.shape:
        return f"it returned shape {tuple(got.shape)} instead of {tuple(expected.shape)} (check the axis you sum over)"
    if not torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol, equal_nan=True):
        return "its values differ from the reference"
    return None


def compare(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[dict],
    hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> bool:
    """Run ``fn(**case)`` and ``reference(**case)`` on every case; print the verdict, raise on the first failure."""
    for case in cases:
        with torch.no_grad():
            expected = reference(**case)
        try:
            got = fn(**case)
        except NotImplementedError:
            message = f"{name}: not attempted yet (the function still raises NotImplementedError)"
            _record(name, False, message)
            raise
        except Exception as error:
            message = f"{name}: your function raised {type(error).__name__}: {error}\n  on input: {_describe(case)}"
            _record(name, False, message)
            raise CheckFailed(message + (f"\n  hint: {hint}" if hint else "")) from None
        why = _mismatch(expected, got, atol, rtol)
        if why is not None:
            message = (
                f"{name}: {why}\n  on input: {_describe(case)}\n  expected: {_short(expected)}\n  obtained: {_short(got)}"
                + (f"\n  hint: {hint}" if hint else "")
            )
            _record(name, False, message)
            raise CheckFailed(message)
    message = f"✔ {name}: passed on {len(cases)} inputs"
    _record(name, True, message)
    print(message)
    return True


def gaussian_cases(seed: int = 0) -> list[dict]:
    """Inputs (mu, logvar) for functions of a diagonal Gaussian: random batches and edge cases."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"mu": torch.zeros(1, 1), "logvar": torch.zeros(1, 1)},  # q equals the prior
        {"mu": torch.tensor([[1.5, -2.0]]), "logvar": torch.tensor([[0.0, 0.0]])},
        {"mu": torch.tensor([[0.0, 0.0, 0.0]]), "logvar": torch.tensor([[-3.0, 1.0, 2.5]])},
        {"mu": torch.randn(5, 4, generator=g), "logvar": torch.randn(5, 4, generator=g)},
        {"mu": 3 * torch.randn(3, 7, generator=g), "logvar": 2 * torch.randn(3, 7, generator=g)},
    ]


def kl_standard_normal(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(mu, logvar)`` = KL(N(μ, diag σ²) ‖ N(0, I)) per datapoint (chapter 2, eq. `eq-kl-prior`)."""
    return compare(
        "kl_standard_normal",
        fn,
        distributions.kl_standard_normal,
        gaussian_cases(),
        hint="KL = ½ Σ_j (σ_j² + μ_j² − 1 − log σ_j²), summed over the last axis only; σ² = exp(logvar).",
    )
