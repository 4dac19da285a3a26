"""course_code.setup(): versions printed, every generator seeded, deterministic algorithms on."""

import random
import re

import numpy as np
import pytest
import torch

from threadpoolctl import threadpool_info, threadpool_limits

import course_code
from course_code import data, models, tractable


@pytest.fixture(autouse=True)
def restore_torch_settings():
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_setup_prints_the_versions_of_course_code_and_torch(capsys):
    course_code.setup()
    out = capsys.readouterr().out
    assert f"course_code {course_code.__version__}" in out and f"torch {torch.__version__}" in out
    assert "seed 0" in out and "float64" in out
    assert re.fullmatch(r"\d+\.\d+\.\d+", course_code.__version__)


def test_quiet_setup_prints_nothing(capsys):
    course_code.setup(quiet=True)
    assert capsys.readouterr().out == ""


def test_two_calls_give_the_same_random_numbers():
    course_code.setup(seed=3, quiet=True)
    first = draws()
    course_code.setup(seed=3, quiet=True)
    assert draws() == first
    course_code.setup(seed=4, quiet=True)
    assert draws() != first


def test_deterministic_algorithms_and_thread_count(monkeypatch):
    torch.use_deterministic_algorithms(False)
    course_code.setup(quiet=True, threads=1)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("COURSE_THREADS", "2")
    course_code.setup(quiet=True)
    assert torch.get_num_threads() == 2


def test_one_thread_by_default(monkeypatch):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    torch.set_num_threads(2)
    course_code.setup(quiet=True)
    assert torch.get_num_threads() == 1


def test_float64_by_default_and_everything_follows_the_switch():
    torch.set_default_dtype(torch.float32)
    course_code.setup(quiet=True)
    assert torch.get_default_dtype() == torch.float64
    for dtype in (torch.float32, torch.float64):
        course_code.setup(quiet=True, dtype=dtype)
        digits = data.load_digits()
        model = models.VAE(digits.dim, 2, (8,))
        lg = tractable.LinearGaussian.random()
        grid = tractable.GridModel(lg.log_likelihood, z_dim=2, n_points=11)
        assert digits.x_train.dtype == dtype and next(model.parameters()).dtype == dtype
        assert lg.W.dtype == dtype and grid.log_px(lg.sample(3, torch.Generator().manual_seed(0))[0]).dtype == dtype
        assert model.loss(digits.x_train[:4])[0].dtype == dtype


def test_setup_refuses_a_dtype_the_course_does_not_use():
    with pytest.raises(ValueError, match="dtype"):
        course_code.setup(quiet=True, dtype=torch.float16)


def test_numpy_blas_gets_the_same_thread_count(monkeypatch):
    monkeypatch.delenv("COURSE_THREADS", raising=False)
    course_code.setup(quiet=True, threads=1)
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)
