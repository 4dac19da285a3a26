"""The chapter 7 checks accept right implementations, reject typical mistakes with a diagnosis, and tell near misses apart."""

import pytest
import torch

from course_code import checks


def ess_right(log_w):
    return torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))


def ess_direct(log_w):  # right on paper, nan once exp(log_w) underflows
    w = log_w.exp()
    return w.sum(0) ** 2 / (w**2).sum(0)


def ess_wrong_axis(log_w):
    return torch.exp(2 * torch.logsumexp(log_w, dim=1) - torch.logsumexp(2 * log_w, dim=1))


def ess_fraction(log_w):  # ESS / K instead of ESS
    return ess_right(log_w) / log_w.shape[0]


def ess_near_miss(log_w):  # right up to rounding in the last digits
    return ess_right(log_w) * (1 + 1e-9)


def dreg_right(log_w):
    weights = torch.softmax(log_w.detach(), dim=0)
    return (weights**2 * log_w).sum(0)


def dreg_weights_not_detached(log_w):
    return (torch.softmax(log_w, dim=0) ** 2 * log_w).sum(0)


def dreg_not_squared(log_w):  # the standard IWAE weights
    return (torch.softmax(log_w.detach(), dim=0) * log_w).sum(0)


def dreg_all_detached(log_w):  # the right value, and no gradient at all
    return dreg_right(log_w).detach()


def dreg_near_miss(log_w):  # the same gradient, computed with the weights normalized by hand
    weights = (log_w - torch.logsumexp(log_w, dim=0)).detach().exp()
    return (weights * weights * log_w).sum(0)


def test_right_implementations_pass(capsys):
    checks.effective_sample_size(ess_right)
    checks.effective_sample_size(ess_near_miss)
    checks.dreg_surrogate(dreg_right)
    checks.dreg_surrogate(dreg_near_miss)
    out = capsys.readouterr().out
    assert out.count("✔ effective_sample_size") == 2 and out.count("✔ dreg_surrogate") == 2


def test_underflowing_ess_is_diagnosed():
    with pytest.raises(checks.CheckFailed, match="nan") as failure:
        checks.effective_sample_size(ess_direct)
    assert "exp(log_w) is 0 for log-weights near −1000" in str(failure.value)


@pytest.mark.parametrize("wrong", [ess_wrong_axis, ess_fraction])
def test_wrong_ess_fails(wrong):
    with pytest.raises(checks.CheckFailed, match="effective_sample_size"):
        checks.effective_sample_size(wrong)


@pytest.mark.parametrize("wrong", [dreg_weights_not_detached, dreg_not_squared, dreg_all_detached])
def test_wrong_dreg_fails_on_the_gradient(wrong):
    with pytest.raises(checks.CheckFailed, match="returned value number 2") as failure:
        checks.dreg_surrogate(wrong)
    assert "log_w.detach()" in str(failure.value)
