"""The course's data: scikit-learn's handwritten digits by default, MNIST for learners who opt in.

The digits (1,797 grey-level 8×8 images) ship inside scikit-learn, so every notebook and test
runs offline. MNIST (28×28) is read from its four original files, found in a local folder or
downloaded once through torchvision.

The notebooks read two environment variables, so a learner can switch without editing code:

- ``COURSE_DATASET``: ``digits`` (default) or ``mnist``;
- ``COURSE_MNIST``: ``download`` (default) or a folder holding the four files as the dataset's
  authors distribute them (``train-images-idx3-ubyte.gz`` and the three others), or holding
  torchvision's layout (``<dir>/MNIST/raw/``, the same files, compressed or not). Every ``.gz``
  file is checked against its md5 sum; a missing or corrupt file is named in the error.
"""

import gzip
import hashlib
import os
import socket
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from course_code import arguments

DATASETS = ("digits", "mnist")
BINARIZATIONS = (None, "threshold", "dynamic")
MNIST_DOWNLOAD_ROOT = Path(os.environ.get("COURSE_DATA_HOME", Path.home() / ".cache" / "course_code"))


class DataUnavailableError(RuntimeError):
    """Raised when the requested data cannot be had here; the message says what to do instead."""


class CorruptDataError(DataUnavailableError):
    """Raised when a data file is there but is not what it should be (truncated, damaged, not the original)."""


# The four original MNIST files: (bytes, md5) of each, as distributed by LeCun, Cortes and Burges
# and as torchvision checks them.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}


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


def check_probabilities(name: str, x: Tensor) -> None:
    """Dynamic binarization draws each pixel as 1 with probability x: refuse values outside [0, 1], in one pass."""
    low, high = torch.aminmax(x) if x.numel() else (0, 0)
    if low < 0 or high > 1:
        raise ValueError(
            f"dynamic binarization draws each pixel as 1 with probability {name}, so {name} must lie in [0, 1]; it "
            f"ranges over [{low:.3g}, {high:.3g}]. Scale the data first ({name} / 255 for 8-bit pixels)."
        )


def binarize(x: Tensor, method: str = "threshold", threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Turn grey levels in [0, 1] into 0/1 pixels: a fixed threshold, or a Bernoulli draw ("dynamic")."""
    arguments.tensor("x", x)
    arguments.number("threshold", threshold)
    if method == "dynamic":
        check_probabilities("x", x)
    if method == "threshold":
        return (x > threshold).to(x.dtype)
    if method == "dynamic":
        return torch.bernoulli(x, generator=generator)
    raise ValueError(f"unknown binarization {method!r}; choose 'threshold' or 'dynamic'")


def _check_options(method: str | None, seed: int) -> None:
    if method not in BINARIZATIONS:
        raise ValueError(f"unknown binarization {method!r}; choose one of {BINARIZATIONS}")
    arguments.integer("seed", seed, minimum=0)


def _finish(name, x_train, y_train, x_test, y_test, image_shape, method, seed) -> Dataset:
    if method == "threshold":
        x_train, x_test = binarize(x_train), binarize(x_test)
    elif method == "dynamic":  # the test set is binarized once, with a fixed seed
        x_test = binarize(x_test, "dynamic", generator=torch.Generator().manual_seed(seed))
    return Dataset(name, x_train, y_train, x_test, y_test, image_shape, method)


def load_digits(binarize: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits scaled to [0, 1], with a fixed, stratified, seeded train/test split."""
    arguments.number("test_fraction", test_fraction, positive=True)
    if not test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    _check_options(binarize, seed)
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
    """MNIST: ``source`` is ``"download"`` (through torchvision, cached) or a folder of the four files (or ``<dir>/MNIST/raw/``)."""
    _check_options(binarize, seed)
    if str(source) == "download":
        folder = _download_mnist(MNIST_DOWNLOAD_ROOT)
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise DataUnavailableError(f"the MNIST folder {root} is not a directory.{_HOW_TO}")
        folder = mnist_folder(root)
    splits = [_read_split(folder, split) for split in ("train", "t10k")]
    (x_tr, y_tr), (x_te, y_te) = [(images.reshape(len(images), -1).to(torch.get_default_dtype()) / 255.0, labels) for images, labels in splits]
    return _finish("mnist", x_tr, y_tr, x_te, y_te, (28, 28), binarize, seed)


def mnist_folder(root: Path) -> Path:
    """The folder that holds the MNIST files: ``root`` itself (the four files as distributed) or ``root/MNIST/raw``."""
    for folder in (root, root / "MNIST" / "raw"):
        if any((folder / name).exists() or (folder / name[:-3]).exists() for name in MNIST_FILES):
            return folder
    raise DataUnavailableError(
        f"MNIST was not found under {root}: neither it nor {root / 'MNIST' / 'raw'} holds any of the files "
        f"{', '.join(MNIST_FILES)}.{_HOW_TO}"
    )


def _read_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) as uint8 and labels (N,) as int64 of one split, after checking both files agree."""
    images = _read_idx(folder, f"{split}-images-idx3-ubyte", (28, 28))
    labels = _read_idx(folder, f"{split}-labels-idx1-ubyte", ())
    if len(images) != len(labels):
        raise CorruptDataError(
            f"the MNIST files in {folder} do not match: {split}-images holds {len(images):,} images but "
            f"{split}-labels holds {len(labels):,} labels. Replace both with the original files.{_HOW_TO}"
        )
    if labels.size and labels.max() > 9:
        raise CorruptDataError(f"{folder / (split + '-labels-idx1-ubyte')} holds labels above 9: it is not an MNIST label file.{_HOW_TO}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def _read_idx(folder: Path, stem: str, item_shape: tuple[int, ...]) -> np.ndarray:
    """One IDX file of unsigned bytes, ``stem.gz`` (md5-checked) if present, else ``stem`` (structure-checked)."""
    gz, plain = folder / f"{stem}.gz", folder / stem
    if gz.exists():
        path, content = gz, _checked_gz(gz)
    elif plain.exists():
        path, content = plain, plain.read_bytes()
    else:
        raise DataUnavailableError(f"the MNIST file {gz.name} (or {plain.name}) is missing from {folder}.{_HOW_TO}")
    rank = 1 + len(item_shape)
    header = 4 + 4 * rank
    if len(content) < header or content[:4] != bytes([0, 0, 0x08, rank]):
        raise CorruptDataError(
            f"{path} is not an MNIST file: it does not start with the IDX header of a rank-{rank} array of bytes "
            f"({len(content):,} bytes). Replace it with the original file.{_HOW_TO}"
        )
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    if shape[1:] != item_shape:
        raise CorruptDataError(f"{path} holds items of shape {shape[1:]}, not {item_shape}: it is not MNIST.{_HOW_TO}")
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise CorruptDataError(
            f"{path} is truncated or damaged: its header announces {shape[0]:,} items ({expected:,} bytes) but the file "
            f"holds {len(content):,} bytes. Replace it with the original file.{_HOW_TO}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _checked_gz(path: Path) -> bytes:
    """The uncompressed content of one of the four original files, after checking its size and md5 sum."""
    size, md5 = MNIST_FILES[path.name]
    content = path.read_bytes()
    if len(content) != size:
        raise CorruptDataError(
            f"{path} is damaged: it holds {len(content):,} bytes, the original holds {size:,}. "
            f"Replace it with the original file.{_HOW_TO}"
        )
    digest = hashlib.md5(content).hexdigest()
    if digest != md5:
        raise CorruptDataError(f"{path} is damaged: its md5 sum is {digest}, the original's is {md5}. Replace it with the original file.{_HOW_TO}")
    return gzip.decompress(content)


def _download_mnist(root: Path) -> Path:
    """Download the four files through torchvision into ``root/MNIST/raw`` (once) and return that folder."""
    from torchvision.datasets import MNIST

    folder = root / "MNIST" / "raw"
    if all((folder / name).exists() for name in MNIST_FILES):
        return folder
    if not any(_answers(mirror) for mirror in MNIST.mirrors):
        # fail at once rather than after torchvision's long timeouts on every mirror
        raise DataUnavailableError(f"MNIST could not be downloaded: no answer from {' or '.join(MNIST.mirrors)}.{_HOW_TO}")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        MNIST(str(root), train=True, download=True)  # fetches and checks all four files
    except Exception as error:  # any failure to fetch: one clear message, not a deep traceback
        raise DataUnavailableError(f"MNIST could not be downloaded ({type(error).__name__}: {error}).{_HOW_TO}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return folder


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
    "\nTo use a copy you already have, set COURSE_MNIST=/path/to/dir, where the directory holds the four "
    "original files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz) or torchvision's layout (dir/MNIST/raw/ with the same files). "
    "To return to the built-in digits, unset COURSE_DATASET (or pass name='digits')."
)


def load(name: str | None = None, binarize: str | None = None, mnist: str | None = None, seed: int = 0) -> Dataset:
    """The course's dataset: ``name`` defaults to ``$COURSE_DATASET`` or ``"digits"``; MNIST comes from ``$COURSE_MNIST``."""
    name = name or os.environ.get("COURSE_DATASET") or "digits"
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset name, one of {DATASETS}; got {name!r}")
    name = name.lower()
    if name == "digits":
        return load_digits(binarize=binarize, seed=seed)
    if name == "mnist":
        if mnist is None and os.environ.get("COURSE_MNIST", "download") != "download":
            source = Path(os.environ["COURSE_MNIST"]).expanduser()
            if not source.is_dir():
                raise DataUnavailableError(f"COURSE_MNIST points at {source}, which is not a directory.{_HOW_TO}")
            return load_mnist(source, binarize=binarize, seed=seed)
        return load_mnist(mnist or "download", binarize=binarize, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def synthetic_one_latent(n: int, x_dim: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Binary sequences from a model with one latent factor, and the factor behind each (chapter 6).

    z ~ N(0, 1); then, left to right, x_i ~ Bernoulli(σ(a_i z + b_i + Σ_{j=i−3}^{i−1} W_ij x_j)). The
    weights a, b, W are drawn once from a generator with a fixed seed, so every call samples the same
    model and ``seed`` only draws the samples. Returns x of shape (n, x_dim) and z of shape (n, 1).
    """
    arguments.integer("n", n)
    arguments.integer("x_dim", x_dim)
    arguments.integer("seed", seed, minimum=0)
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


SPRITE_SHAPES = ("square", "disk", "triangle")


@dataclass(frozen=True)
class Sprites:
    """Binary 16×16 images of one shape each, with the generating factors of every image (chapter 11).

    ``factors[n]`` holds image n's shape, scale, x and y as integer levels (columns in the order of
    ``factor_names``); ``factor_sizes`` gives each factor's number of levels. Every combination of
    levels appears exactly once, so the factors are independent and uniform over the images.
    """

    images: Tensor  # (N, 256), 0/1, torch's default dtype
    factors: Tensor  # (N, 4), int64
    factor_names: tuple[str, ...] = ("shape", "scale", "x", "y")
    image_shape: tuple[int, int] = (16, 16)

    @property
    def factor_sizes(self) -> tuple[int, ...]:
        return tuple(int(self.factors[:, k].max()) + 1 for k in range(self.factors.shape[1]))


def sprites(scales: tuple[float, ...] = (4.0, 6.0, 8.0), positions: int = 8) -> Sprites:
    """Every sprite of the course's small dSprites-like set (in the spirit of Matthey et al., 2017).

    A square, a disk or an upward triangle of side (or diameter) ``scale`` pixels, centred at one of
    ``positions`` × ``positions`` points evenly spaced so that the largest shape stays inside the
    16 × 16 frame: 3 × len(scales) × positions² images, the same on every machine (no randomness).
    """
    if not scales or any(arguments.number("every scale", s, positive=True) > 8 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of sizes in (0, 8] pixels, got {scales!r}")
    arguments.integer("positions", positions, minimum=2)
    centres = np.linspace(4.0, 12.0, positions)
    grid = np.arange(16) + 0.5  # pixel centres
    v, u = np.meshgrid(grid, grid, indexing="ij")  # v: row (downwards), u: column
    images, factors = [], []
    for s, shape in enumerate(SPRITE_SHAPES):
        for k, scale in enumerate(scales):
            h = scale / 2
            for i, cx in enumerate(centres):
                for j, cy in enumerate(centres):
                    du, dv = u - cx, v - cy
                    if shape == "square":
                        inside = (np.abs(du) <= h) & (np.abs(dv) <= h)
                    elif shape == "disk":
                        inside = du**2 + dv**2 <= h**2
                    else:  # apex at the top, base at the bottom
                        inside = (np.abs(dv) <= h) & (np.abs(du) <= (dv + h) / 2)
                    images.append(inside.reshape(-1))
                    factors.append((s, k, i, j))
    return Sprites(
        images=torch.tensor(np.array(images), dtype=torch.get_default_dtype()),
        factors=torch.tensor(factors, dtype=torch.int64),
    )
