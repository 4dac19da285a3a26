"""course_code.setup(): versions printed, every generator seeded, deterministic algorithms on."""

import random
import re

import numpy as np
import pytest
import torch

import course_code


@pytest.fixture(autouse=True)
def restore_torch_settings():
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_setup_prints_the_versions_of_course_code_and_torch(capsys):
    course_code.setup()
    out = capsys.readouterr().out
    assert f"course_code {course_code.__version__}" in out and f"torch {torch.__version__}" in out
    assert "seed 0" in out
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
