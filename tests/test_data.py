"""course_code.data: the embedded digits, binarization, and MNIST from a local copy, the original files or (simulated) offline."""

import socket
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from course_code import data


@pytest.fixture(autouse=True)
def no_dataset_environment(monkeypatch):
    monkeypatch.delenv("COURSE_DATASET", raising=False)
    monkeypatch.delenv("COURSE_MNIST", raising=False)


@pytest.fixture(scope="module")
def grey():
    return data.load_digits()


# ---- the digits -------------------------------------------------------------------------------

def test_digits_shapes_range_and_labels(grey):
    assert grey.x_train.shape == (1437, 64) and grey.x_test.shape == (360, 64)
    assert grey.y_train.shape == (1437,) and grey.y_test.shape == (360,)
    assert grey.x_train.dtype == torch.float64 and grey.dim == 64 and grey.image_shape == (8, 8)
    for x in (grey.x_train, grey.x_test):
        assert x.min() == 0 and x.max() == 1  # the raw digits use 17 grey levels, 0 to 16
    assert len(torch.unique(grey.x_train)) == 17
    assert set(grey.y_train.tolist()) == set(range(10))
    assert data.load().x_train.shape == (1437, 64)  # the default dataset
    assert "1437 train / 360 test" in repr(grey)


def test_digits_follow_the_default_dtype_with_the_same_split(grey):
    torch.set_default_dtype(torch.float32)
    single = data.load_digits()
    assert single.x_train.dtype == single.x_test.dtype == torch.float32
    torch.testing.assert_close(single.x_train, grey.x_train.float(), rtol=0, atol=0)  # k/16 is exact in both
    assert torch.equal(single.y_test, grey.y_test)


def test_split_is_seeded_and_stratified(grey):
    again, other = data.load_digits(), data.load_digits(seed=1)
    assert torch.equal(again.x_train, grey.x_train) and torch.equal(again.y_test, grey.y_test)
    assert not torch.equal(other.x_train, grey.x_train)
    from sklearn.datasets import load_digits

    everything = np.sort(load_digits().data.astype(np.float32) / 16, axis=0)
    both = torch.cat([other.x_train, other.x_test]).numpy()
    assert np.array_equal(np.sort(both, axis=0), everything)  # a partition of all 1,797 images
    train_share = torch.bincount(grey.y_train, minlength=10) / len(grey.y_train)
    test_share = torch.bincount(grey.y_test, minlength=10) / len(grey.y_test)
    assert (train_share - test_share).abs().max() < 0.01  # every class in the same proportion


def test_threshold_binarization(grey):
    binary = data.load_digits(binarize="threshold")
    assert binary.binarize == "threshold"
    for b, g in ((binary.x_train, grey.x_train), (binary.x_test, grey.x_test)):
        assert set(b.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(b == 1, g > 0.5)
    assert torch.equal(data.binarize(torch.tensor([0.2, 0.5, 0.7]), threshold=0.3), torch.tensor([0.0, 1.0, 1.0]))


def test_dynamic_binarization_binarizes_the_test_set_once_and_leaves_train_grey(grey):
    a, b = data.load_digits(binarize="dynamic"), data.load_digits(binarize="dynamic")
    assert a.binarize == "dynamic"
    assert torch.equal(a.x_train, grey.x_train)  # fit re-draws the training pixels every epoch
    assert set(a.x_test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.x_test, b.x_test)  # a fixed seed: the same test set every time
    assert not torch.equal(a.x_test, data.load_digits(binarize="dynamic", seed=1).x_test)
    # each pixel is 1 with probability equal to its grey level
    assert abs(a.x_test.mean() - grey.x_test.mean()) < 0.01
    assert (a.x_test[grey.x_test == 0] == 0).all() and (a.x_test[grey.x_test == 1] == 1).all()


def test_dynamic_binarize_draws_bernoulli_pixels():
    p = torch.full((200_000,), 0.3)
    draw = data.binarize(p, "dynamic", generator=torch.Generator().manual_seed(0))
    assert set(draw.unique().tolist()) == {0.0, 1.0}
    assert abs(draw.mean().item() - 0.3) < 5 * (0.3 * 0.7 / len(p)) ** 0.5


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits"):
        data.load("cifar")
    with pytest.raises(ValueError, match="unknown binarization 'otsu'"):
        data.load("digits", binarize="otsu")
    with pytest.raises(ValueError, match="unknown binarization 'otsu'"):
        data.binarize(torch.zeros(3), "otsu")


def test_the_dataset_name_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("COURSE_DATASET", "fashion")
    with pytest.raises(ValueError, match="unknown dataset 'fashion'"):
        data.load()


# ---- MNIST ------------------------------------------------------------------------------------

def write_idx(path, array: np.ndarray) -> None:
    """An IDX file as distributed by LeCun et al.: magic (0, 0, type 0x08 = ubyte, rank), big-endian sizes, bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    """A tiny MNIST in torchvision's layout: <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (6, 28, 28)), "t10k": rng.integers(0, 256, (4, 28, 28))}
    labels = {"train": np.arange(6) % 10, "t10k": np.array([7, 2, 1, 0])}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    return tmp_path, images, labels


def test_load_mnist_reads_a_local_copy(fake_mnist, monkeypatch):
    root, images, labels = fake_mnist
    monkeypatch.setattr(urllib.request, "urlopen", offline)  # a local copy never needs the network
    mnist = data.load_mnist(root)
    assert mnist.name == "mnist" and mnist.image_shape == (28, 28) and mnist.dim == 784
    assert mnist.x_train.shape == (6, 784) and mnist.x_test.shape == (4, 784)
    torch.testing.assert_close(mnist.x_train, torch.tensor(images["train"].reshape(6, 784) / 255, dtype=torch.float64))
    assert mnist.y_test.tolist() == [7, 2, 1, 0] and mnist.y_train.tolist() == labels["train"].tolist()
    monkeypatch.setenv("COURSE_MNIST", str(root))  # the notebooks' switch
    monkeypatch.setenv("COURSE_DATASET", "mnist")
    binary = data.load(binarize="threshold")
    assert torch.equal(binary.x_test, (mnist.x_test > 0.5).float())


def test_a_missing_directory_says_how_to_point_at_a_copy_or_return_to_the_digits(tmp_path):
    with pytest.raises(data.DataUnavailableError, match="not a directory") as error:
        data.load("mnist", mnist=tmp_path / "nowhere")
    message = str(error.value)
    assert "COURSE_MNIST=/path/to/dir" in message and "digits" in message


def test_a_directory_without_the_mnist_files_gets_the_same_advice(tmp_path):
    with pytest.raises(data.DataUnavailableError, match=r"MNIST was not found under") as error:
        data.load_mnist(tmp_path)
    assert "COURSE_MNIST" in str(error.value) and "digits" in str(error.value)


def offline(*args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Simulate a machine without network: no name resolves and no socket connects."""
    def unresolvable(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution (simulated)")

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable (simulated)")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(data, "MNIST_DOWNLOAD_ROOT", tmp_path / "cache")


def test_offline_download_fails_fast_with_advice(no_network):
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailableError, match="MNIST could not be downloaded") as error:
        data.load("mnist", mnist="download")
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert "COURSE_MNIST=/path/to/dir" in message and "digits" in message
    assert error.value.__cause__ is None  # one message, no chained traceback from deep inside a download
    assert error.value.__context__ is None or error.value.__suppress_context__


def test_a_server_that_never_answers_costs_a_few_seconds_only(monkeypatch, tmp_path):
    timeouts = []

    def silent(request, timeout=None):
        timeouts.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", silent)
    monkeypatch.setattr(data, "MNIST_DOWNLOAD_ROOT", tmp_path)
    with pytest.raises(data.DataUnavailableError, match="no answer from"):
        data.load_mnist("download")
    assert timeouts and all(t is not None and t <= 5 for t in timeouts)  # never torchvision's long waits


def test_a_failed_download_after_the_server_answered_is_still_one_clear_message(monkeypatch, tmp_path):
    from torchvision.datasets import mnist

    class Answer:
        def close(self):
            pass

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Answer())  # the mirror answers…

    def broken(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(mnist, "download_and_extract_archive", broken)  # …but the download breaks
    monkeypatch.setattr(data, "MNIST_DOWNLOAD_ROOT", tmp_path)
    with pytest.raises(data.DataUnavailableError, match="could not be downloaded.*Error downloading") as error:
        data.load_mnist("download")
    assert "COURSE_MNIST" in str(error.value)


def test_mnist_files_that_disagree_are_named(fake_mnist):
    root, _, _ = fake_mnist
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((20, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(5))
    with pytest.raises(data.CorruptDataError, match="train-images holds 20 images but train-labels holds 5 labels"):
        data.load_mnist(root)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is not an MNIST file"),
        (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "is not an MNIST file"),
        (struct.pack(">BBBBIII", 0, 0, 8, 3, 4, 28, 28) + bytes(100), r"truncated or damaged: its header announces 4 items \(3,152 bytes\) but the file holds 116 bytes"),
        (struct.pack(">BBBBIII", 0, 0, 8, 3, 4, 32, 32) + bytes(4096), r"items of shape \(32, 32\)"),
    ],
    ids=["empty", "random-bytes", "truncated", "not-28x28"],
)
def test_a_damaged_uncompressed_file_is_named(fake_mnist, content, problem):
    root, _, _ = fake_mnist
    bad = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(content)
    with pytest.raises(data.CorruptDataError, match=problem) as error:
        data.load_mnist(root)
    assert str(bad) in str(error.value) and "COURSE_MNIST" in str(error.value)


def test_a_missing_file_is_named(fake_mnist):
    root, _, _ = fake_mnist
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataUnavailableError, match="train-labels-idx1-ubyte.gz .or train-labels-idx1-ubyte. is missing from"):
        data.load_mnist(root)


def test_course_mnist_is_named_only_when_it_was_used(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_MNIST", str(tmp_path / "elsewhere"))
    with pytest.raises(data.DataUnavailableError, match="^COURSE_MNIST points at .*elsewhere, which is not a directory"):
        data.load("mnist")
    with pytest.raises(data.DataUnavailableError, match="^the MNIST folder .*nowhere is not a directory"):
        data.load("mnist", mnist=tmp_path / "nowhere")  # an argument wins over the environment


# ---- the four original files (md5-checked), from $COURSE_MNIST --------------------------------

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # digits 0–9 in MNIST's training set
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def originals(mnist_originals):
    return mnist_originals


def linked_copy(originals, folder):
    """A folder of symbolic links to the original files, to damage one of them without touching the originals."""
    folder.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (folder / name).symlink_to(originals / name)
    return folder


def test_the_original_files_load_in_both_layouts(originals, tmp_path):
    mnist = data.load("mnist", mnist=originals)
    assert mnist.x_train.shape == (60_000, 784) and mnist.x_test.shape == (10_000, 784)
    assert mnist.x_train.dtype == torch.get_default_dtype() and mnist.y_train.dtype == torch.int64
    assert mnist.x_train.min() == 0 and mnist.x_train.max() == 1
    assert torch.bincount(mnist.y_train).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.y_test).tolist() == TEST_COUNTS
    assert mnist.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    torchvision_layout = linked_copy(originals, tmp_path / "MNIST" / "raw")
    again = data.load_mnist(tmp_path)
    assert torch.equal(again.x_test, mnist.x_test) and torch.equal(again.y_train, mnist.y_train)
    assert torchvision_layout.is_dir()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda b: b[:1000], r"holds 1,000 bytes, the original holds 4,542"),
        (lambda b: b"", r"holds 0 bytes, the original holds 4,542"),
        (lambda b: np.random.default_rng(0).integers(0, 256, len(b), dtype=np.uint8).tobytes(), "its md5 sum is [0-9a-f]{32}, the original's is ec29112dd5afa0611ce80d1b7f02629c"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "its md5 sum is [0-9a-f]{32}, the original's is ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    ids=["truncated", "empty", "random-bytes", "one-bit-flipped"],
)
def test_a_damaged_original_is_named_with_what_is_wrong(originals, tmp_path, damage, problem):
    folder = linked_copy(originals, tmp_path / "mnist")
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    content = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(damage(content))
    with pytest.raises(data.CorruptDataError, match=problem) as error:
        data.load("mnist", mnist=folder)
    assert str(error.value).startswith(f"{bad} is damaged") and "COURSE_MNIST" in str(error.value)


def test_a_missing_original_is_named(originals, tmp_path):
    folder = linked_copy(originals, tmp_path / "mnist")
    (folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(data.DataUnavailableError, match=f"train-images-idx3-ubyte.gz .or train-images-idx3-ubyte. is missing from {folder}"):
        data.load("mnist", mnist=folder)
