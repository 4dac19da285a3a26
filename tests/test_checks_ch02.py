"""The chapter 2 checks accept a right implementation and reject deliberately wrong ones."""

import pytest
import torch

from course_code import checks
from course_code.distributions import log_normal, log_standard_normal


def kl_right(mu_q, logvar_q, mu_p, logvar_p):
    ratio = torch.exp(logvar_q - logvar_p)
    return 0.5 * (ratio + (mu_q - mu_p) ** 2 / torch.exp(logvar_p) - 1 - (logvar_q - logvar_p)).sum(-1)


def kl_reversed(mu_q, logvar_q, mu_p, logvar_p):  # KL(p ‖ q)
    return kl_right(mu_p, logvar_p, mu_q, logvar_q)


def kl_no_half(mu_q, logvar_q, mu_p, logvar_p):
    return 2 * kl_right(mu_q, logvar_q, mu_p, logvar_p)


def kl_wrong_sign_log(mu_q, logvar_q, mu_p, logvar_p):  # + log σ_q²/σ_p² instead of −
    ratio = torch.exp(logvar_q - logvar_p)
    return 0.5 * (ratio + (mu_q - mu_p) ** 2 / torch.exp(logvar_p) - 1 + (logvar_q - logvar_p)).sum(-1)


def kl_wrong_axis(mu_q, logvar_q, mu_p, logvar_p):
    ratio = torch.exp(logvar_q - logvar_p)
    return 0.5 * (ratio + (mu_q - mu_p) ** 2 / torch.exp(logvar_p) - 1 - (logvar_q - logvar_p)).sum(0)


def elbo_right(log_lik, x, z, mu, logvar):
    return (log_lik(x, z) + log_standard_normal(z) - log_normal(z, mu, logvar)).mean(0)


def elbo_wrong_sign(log_lik, x, z, mu, logvar):  # + log q instead of − log q
    return (log_lik(x, z) + log_standard_normal(z) + log_normal(z, mu, logvar)).mean(0)


def elbo_no_prior(log_lik, x, z, mu, logvar):  # forgot log p(z)
    return (log_lik(x, z) - log_normal(z, mu, logvar)).mean(0)


def elbo_wrong_axis(log_lik, x, z, mu, logvar):  # averaged over the batch instead of the samples
    return (log_lik(x, z) + log_standard_normal(z) - log_normal(z, mu, logvar)).mean(-1)


def test_right_implementations_pass(capsys):
    checks.kl_normal(kl_right)
    checks.elbo_from_samples(elbo_right)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [kl_reversed, kl_no_half, kl_wrong_sign_log, kl_wrong_axis])
def test_wrong_kl_normal_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.kl_normal(wrong)


@pytest.mark.parametrize("wrong", [elbo_wrong_sign, elbo_no_prior, elbo_wrong_axis])
def test_wrong_elbo_from_samples_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.elbo_from_samples(wrong)
