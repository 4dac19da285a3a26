"""The course's data: scikit-learn's handwritten digits by default, MNIST for learners who opt in.

The digits (1,797 grey-level 8×8 images) ship inside scikit-learn, so every notebook and test
runs offline. MNIST (28×28) is read through torchvision, either downloaded or from a local copy.

The notebooks read two environment variables, so a learner can switch without editing code:

- ``COURSE_DATASET``: ``digits`` (default) or ``mnist``;
- ``COURSE_MNIST``: ``download`` (default) or a directory holding torchvision's MNIST layout
  (``<dir>/MNIST/raw/train-images-idx3-ubyte`` and the three other files).
"""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("digits", "mnist")
BINARIZATIONS = (None, "threshold", "dynamic")
MNIST_DOWNLOAD_ROOT = Path(os.environ.get("COURSE_DATA_HOME", Path.home() / ".cache" / "course_code"))


class DataUnavailableError(RuntimeError):
    """Raised when the requested data cannot be had here; the message says what to do instead."""


@dataclass(frozen=True)
class Dataset:
    """Train and test images as flat float tensors in [0, 1], with integer labels."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, int]
    binarize: str | None = None  # "dynamic": x_train is grey, re-binarize it every epoch

    @property
    def dim(self) -> int:
        return self.x_train.shape[1]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: {len(self.x_train)} train / {len(self.x_test)} test images "
            f"of {self.image_shape[0]}×{self.image_shape[1]}, binarize={self.binarize!r})"
        )


def binarize(x: Tensor, method: str = "threshold", threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Turn grey levels in [0, 1] into 0/1 pixels: a fixed threshold, or a Bernoulli draw ("dynamic")."""
    if method == "threshold":
        return (x > threshold).to(x.dtype)
    if method == "dynamic":
        return torch.bernoulli(x, generator=generator)
    raise ValueError(f"unknown binarization {method!r}; choose 'threshold' or 'dynamic'")


def _finish(name, x_train, y_train, x_test, y_test, image_shape, method, seed) -> Dataset:
    if method not in BINARIZATIONS:
        raise ValueError(f"unknown binarization {method!r}; choose one of {BINARIZATIONS}")
    if method == "threshold":
        x_train, x_test = binarize(x_train), binarize(x_test)
    elif method == "dynamic":  # the test set is binarized once, with a fixed seed
        x_test = binarize(x_test, "dynamic", generator=torch.Generator().manual_seed(seed))
    return Dataset(name, x_train, y_train, x_test, y_test, image_shape, method)


def load_digits(binarize: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits scaled to [0, 1], with a fixed, stratified, seeded train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = digits.data.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    return _finish(
        "digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te),
        (8, 8), binarize, seed,
    )


def load_mnist(source: str | os.PathLike = "download", binarize: str | None = None, seed: int = 0) -> Dataset:
    """MNIST through torchvision: ``source`` is ``"download"`` or a directory in torchvision's layout."""
    from torchvision.datasets import MNIST

    if str(source) == "download":
        root, download = MNIST_DOWNLOAD_ROOT, True
    else:
        root, download = Path(source).expanduser(), False
        if not root.is_dir():
            raise DataUnavailableError(f"COURSE_MNIST points at {root}, which is not a directory.{_HOW_TO}")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        splits = [MNIST(str(root), train=train, download=download) for train in (True, False)]
    except Exception as error:  # any failure to fetch or read: one clear message, not a deep traceback
        what = "could not be downloaded" if download else f"was not found under {root}"
        raise DataUnavailableError(f"MNIST {what} ({type(error).__name__}: {error}).{_HOW_TO}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    (x_tr, y_tr), (x_te, y_te) = [(s.data.reshape(len(s.data), -1).float() / 255.0, s.targets) for s in splits]
    return _finish("mnist", x_tr, y_tr, x_te, y_te, (28, 28), binarize, seed)


_HOW_TO = (
    "\nTo use a copy you already have, set COURSE_MNIST=/path/to/dir, where the directory holds "
    "MNIST/raw/train-images-idx3-ubyte and the three other MNIST files (torchvision's layout). "
    "To return to the built-in digits, unset COURSE_DATASET (or pass name='digits')."
)


def load(name: str | None = None, binarize: str | None = None, mnist: str | None = None, seed: int = 0) -> Dataset:
    """The course's dataset: ``name`` defaults to ``$COURSE_DATASET`` or ``"digits"``; MNIST comes from ``$COURSE_MNIST``."""
    name = (name or os.environ.get("COURSE_DATASET") or "digits").lower()
    if name == "digits":
        return load_digits(binarize=binarize, seed=seed)
    if name == "mnist":
        return load_mnist(mnist or os.environ.get("COURSE_MNIST") or "download", binarize=binarize, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
