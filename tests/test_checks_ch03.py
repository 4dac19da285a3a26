"""The chapter 3 checks accept a right estimator and reject deliberately wrong ones."""

import pytest
import torch

from course_code import checks


def pathwise_right(f, mu, sigma, eps):
    z = (mu + sigma * eps).detach().requires_grad_(True)
    return torch.autograd.grad(f(z).sum(), z)[0]


def pathwise_no_sigma(f, mu, sigma, eps):  # forgot to scale the noise
    z = (mu + eps).detach().requires_grad_(True)
    return torch.autograd.grad(f(z).sum(), z)[0]


def pathwise_f_not_derivative(f, mu, sigma, eps):  # returns f(z) instead of f'(z)
    return f(mu + sigma * eps)


def pathwise_averaged(f, mu, sigma, eps):  # one averaged estimate instead of one per sample
    return pathwise_right(f, mu, sigma, eps).mean(0)


def score_right(f, mu, sigma, eps):
    z = mu + sigma * eps
    return f(z) * (z - mu) / sigma**2


def score_missing_sigma(f, mu, sigma, eps):  # (z − μ)/σ instead of (z − μ)/σ²
    z = mu + sigma * eps
    return f(z) * (z - mu) / sigma


def score_wrong_sign(f, mu, sigma, eps):
    z = mu + sigma * eps
    return f(z) * (mu - z) / sigma**2


def score_uses_derivative(f, mu, sigma, eps):  # mixes the two estimators
    return pathwise_right(f, mu, sigma, eps) * eps / sigma


def test_right_implementations_pass(capsys):
    checks.pathwise_gradient(pathwise_right)
    checks.score_function_gradient(score_right)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [pathwise_no_sigma, pathwise_f_not_derivative, pathwise_averaged])
def test_wrong_pathwise_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.pathwise_gradient(wrong)


@pytest.mark.parametrize("wrong", [score_missing_sigma, score_wrong_sign, score_uses_derivative])
def test_wrong_score_function_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.score_function_gradient(wrong)


def test_not_attempted_is_reported():
    def stub(f, mu, sigma, eps):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checks.pathwise_gradient(stub)
