"""Unit tests run as the notebooks do (see course_code.setup): one thread, float64 by default.

The default is set at import, so fixtures built before the first test get float64 too, and again
before every test, so a test that switches to float32 (the command-line trainer's default) does not
leak its choice into the next one.
"""

import pytest
import torch

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def float64_by_default():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float64)
