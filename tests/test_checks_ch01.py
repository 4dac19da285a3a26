"""The chapter 1 checks accept a right implementation and reject deliberately wrong ones."""

import math

import pytest
import torch

from course_code import checks


def gaussian_right(x, x_hat):
    return -0.5 * x.shape[-1] * math.log(2 * math.pi) - 0.5 * ((x - x_hat) ** 2).sum(-1)


def gaussian_no_half(x, x_hat):  # the squared error without its factor ½
    return -0.5 * x.shape[-1] * math.log(2 * math.pi) - ((x - x_hat) ** 2).sum(-1)


def gaussian_no_constant(x, x_hat):  # forgot −(D/2) log 2π
    return -0.5 * ((x - x_hat) ** 2).sum(-1)


def gaussian_wrong_sign(x, x_hat):  # the loss, not the log-likelihood
    return -gaussian_right(x, x_hat)


def gaussian_wrong_axis(x, x_hat):  # summed over the batch instead of the pixels
    return -0.5 * x.shape[-1] * math.log(2 * math.pi) - 0.5 * ((x - x_hat) ** 2).sum(0)


def kl_right(p, q):
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def kl_swapped(p, q):  # KL(q ‖ p) instead of KL(p ‖ q)
    return kl_right(q, p)


def kl_wrong_sign(p, q):
    return (p * (torch.log(q) - torch.log(p))).sum(-1)


def kl_nan_at_zero(p, q):  # 0 · log 0 evaluates to nan
    return (p * (torch.log(p) - torch.log(q))).sum(-1)


def kl_wrong_axis(p, q):
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(0)


def test_right_implementations_pass(capsys):
    checks.gaussian_log_likelihood(gaussian_right)
    checks.kl_discrete(kl_right)
    checks.kl_discrete(lambda p, q: torch.xlogy(p, p).sum(-1) - torch.xlogy(p, q).sum(-1))
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [gaussian_no_half, gaussian_no_constant, gaussian_wrong_sign, gaussian_wrong_axis])
def test_wrong_gaussian_log_likelihood_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.gaussian_log_likelihood(wrong)


@pytest.mark.parametrize("wrong", [kl_swapped, kl_wrong_sign, kl_nan_at_zero, kl_wrong_axis])
def test_wrong_kl_discrete_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.kl_discrete(wrong)
