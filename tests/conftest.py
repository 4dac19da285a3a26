"""Unit tests run as the notebooks do (see course_code.setup): one thread, float64 by default.

The default is set at import, so fixtures built before the first test get float64 too, and again
before every test, so a test that switches to float32 (the command-line trainer's default) does not
leak its choice into the next one.
"""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

REAL_MNIST = os.environ.get("COURSE_MNIST")  # read at import: some test modules unset it for each test


@pytest.fixture(scope="session")
def mnist_originals():
    """The folder of the four original MNIST .gz files ($COURSE_MNIST): skipped where there is none, a failure under CI."""
    from course_code import data

    if REAL_MNIST and REAL_MNIST != "download" and all((Path(REAL_MNIST) / name).is_file() for name in data.MNIST_FILES):
        return Path(REAL_MNIST)
    reason = f"needs COURSE_MNIST set to a folder holding {', '.join(data.MNIST_FILES)} (got {REAL_MNIST!r})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def float64_by_default():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float64)
