"""Checks of arguments at the public boundary of ``course_code``: each error names the argument, what it got, and what is wanted.

They are plain Python tests on scalars and shapes, cheap enough for any call; what costs a pass
over the data (ranges, NaN) is checked where it is needed, once per call of a training loop.
"""

import math
import numbers

import torch
from torch import Tensor


def integer(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is an integer (not a bool, not a float) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def number(name: str, value, *, positive: bool = False, non_negative: bool = False) -> float:
    """``value`` as a float, if it is a finite real number (not a bool), positive or non-negative when asked."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return float(value)


def tensor(name: str, value, ndim: int | None = None, layout: str = "") -> Tensor:
    """``value`` itself, if it is a tensor with ``ndim`` dimensions (``layout`` names them, e.g. ``"(N, D)"``)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s) {layout}, got shape {tuple(value.shape)}".replace("  ", " "))
    return value


def sizes(name: str, value) -> tuple[int, ...]:
    """A sequence of positive integers (layer widths) as a tuple; a single int is refused with the fix."""
    if isinstance(value, numbers.Number) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of layer widths such as (256,) or [512, 256], got {value!r}")
    try:
        widths = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of layer widths such as (256,), got {type(value).__name__}") from None
    for width in widths:
        integer(f"every width in {name}", width)
    return widths


def function(name: str, value) -> None:
    """Refuse anything that cannot be called, naming the argument."""
    if not callable(value):
        raise TypeError(f"{name} must be a function, got {value!r} ({type(value).__name__})")


def matching_dtype(name: str, x: Tensor, dtype: torch.dtype) -> None:
    """Refuse data whose dtype differs from the model's parameters, and say how to convert it."""
    if x.dtype == dtype:
        return
    if not x.is_floating_point():
        fix = f"scale it to [0, 1] first, e.g. {name} = {name}.to({dtype}) / 255 for 8-bit pixels"
    else:
        fix = f"convert it with {name}.to({dtype}), or build the model in {x.dtype} (torch.set_default_dtype before building it)"
    raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {dtype}: {fix}")
