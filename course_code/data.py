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
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
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
    """Train and test images as flat float tensors in [0, 1] (torch's default dtype), with integer labels."""

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
    x = torch.from_numpy(digits.data).to(torch.get_default_dtype()) / 16.0
    y = torch.from_numpy(digits.target)
    train, test = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    train, test = torch.from_numpy(train), torch.from_numpy(test)
    return _finish("digits", x[train], y[train], x[test], y[test], (8, 8), binarize, seed)


def load_mnist(source: str | os.PathLike = "download", binarize: str | None = None, seed: int = 0) -> Dataset:
    """MNIST through torchvision: ``source`` is ``"download"`` or a directory in torchvision's layout."""
    from torchvision.datasets import MNIST

    if str(source) == "download":
        root, download = MNIST_DOWNLOAD_ROOT, True
    else:
        root, download = Path(source).expanduser(), False
        if not root.is_dir():
            raise DataUnavailableError(f"COURSE_MNIST points at {root}, which is not a directory.{_HOW_TO}")
    missing = not all((root / "MNIST" / "raw" / Path(name).stem).exists() for name, _ in MNIST.resources)
    if download and missing and not any(_answers(mirror) for mirror in MNIST.mirrors):
        # fail at once rather than after torchvision's long timeouts on every mirror
        raise DataUnavailableError(f"MNIST could not be downloaded: no answer from {' or '.join(MNIST.mirrors)}.{_HOW_TO}")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        splits = [MNIST(str(root), train=train, download=download) for train in (True, False)]
    except Exception as error:  # any failure to fetch or read: one clear message, not a deep traceback
        what = "could not be downloaded" if download else f"was not found under {root}"
        raise DataUnavailableError(f"MNIST {what} ({type(error).__name__}: {error}).{_HOW_TO}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    (x_tr, y_tr), (x_te, y_te) = [(s.data.reshape(len(s.data), -1).to(torch.get_default_dtype()) / 255.0, s.targets) for s in splits]
    return _finish("mnist", x_tr, y_tr, x_te, y_te, (28, 28), binarize, seed)


def _answers(url: str, timeout: float = 3.0) -> bool:
    """Whether the web server at ``url`` answers within ``timeout`` seconds (any HTTP status is an answer)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, HTTPException):  # no name resolution, no route, refused, timed out
        return False
    return True


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


def synthetic_one_latent(n: int, x_dim: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Binary sequences from a model with one latent factor, and the factor behind each (chapter 6).

    z ~ N(0, 1); then, left to right, x_i ~ Bernoulli(σ(a_i z + b_i + Σ_{j=i−3}^{i−1} W_ij x_j)). The
    weights a, b, W are drawn once from a generator with a fixed seed, so every call samples the same
    model and ``seed`` only draws the samples. Returns x of shape (n, x_dim) and z of shape (n, 1).
    """
    if n < 1 or x_dim < 1:
        raise ValueError(f"n and x_dim must be positive, got n={n}, x_dim={x_dim}")
    weights = torch.Generator().manual_seed(2019)
    a = torch.randn(x_dim, generator=weights)
    b = 0.5 * torch.randn(x_dim, generator=weights)
    lag = torch.arange(x_dim)[:, None] - torch.arange(x_dim)[None, :]
    W = 3**0.5 * torch.randn(x_dim, x_dim, generator=weights) * ((lag >= 1) & (lag <= 3))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    x = torch.zeros(n, x_dim)
    for i in range(x_dim):
        x[:, i] = torch.bernoulli(torch.sigmoid(a[i] * z[:, 0] + b[i] + x @ W[i]), generator=g)
    return x, z
