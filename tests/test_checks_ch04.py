"""The chapter 4 checks accept right implementations and reject deliberately wrong ones."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_code import checks


def log_bernoulli_right(x, logits):
    return (x * logits - F.softplus(logits)).sum(-1)


def log_bernoulli_sigmoid_first(x, logits):  # numerically fragile: log(0) for confident logits
    p = torch.sigmoid(logits)
    return (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(-1)


def log_bernoulli_wrong_axis(x, logits):
    return (x * logits - F.softplus(logits)).sum(0)


def log_bernoulli_negated(x, logits):  # the binary cross-entropy, not the log-likelihood
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def iwae_right(log_w):
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def iwae_naive(log_w):  # underflows for very negative log-weights
    return torch.log(torch.exp(log_w).mean(0))


def iwae_mean_of_logs(log_w):  # the K-sample ELBO, not the importance-weighted bound
    return log_w.mean(0)


def iwae_no_log_k(log_w):
    return torch.logsumexp(log_w, dim=0)


def iwae_wrong_axis(log_w):
    return torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])


def test_right_implementations_pass(capsys):
    checks.log_bernoulli_logits(log_bernoulli_right)
    checks.iwae_from_log_weights(iwae_right)
    assert capsys.readouterr().out.count("passed") == 2


@pytest.mark.parametrize("wrong", [log_bernoulli_sigmoid_first, log_bernoulli_wrong_axis, log_bernoulli_negated])
def test_wrong_log_bernoulli_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.log_bernoulli_logits(wrong)


@pytest.mark.parametrize("wrong", [iwae_naive, iwae_mean_of_logs, iwae_no_log_k, iwae_wrong_axis])
def test_wrong_iwae_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.iwae_from_log_weights(wrong)
