"""The chapter 6 checks accept a right implementation and reject deliberately wrong ones."""

import math

import pytest
import torch

from course_code import checks
from course_code.distributions import kl_normal_per_dim, log_normal, reparameterize


def kl_matrix(mu, logvar):  # KL of each datapoint and dimension, written out
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar)


def free_bits_right(mu, logvar, free_bits):
    return kl_matrix(mu, logvar).mean(0).clamp(min=free_bits).sum()


def free_bits_per_datapoint(mu, logvar, free_bits):  # the floor applied before averaging over the batch
    return kl_matrix(mu, logvar).clamp(min=free_bits).mean(0).sum()


def free_bits_on_total(mu, logvar, free_bits):  # one floor on the summed KL instead of one per dimension
    return kl_matrix(mu, logvar).mean(0).sum().clamp(min=free_bits)


def free_bits_batch_sum(mu, logvar, free_bits):  # summed over the batch instead of averaged
    return kl_matrix(mu, logvar).sum(0).clamp(min=free_bits).sum()


def log_mixture(z, mu, logvar):  # log (1/N) Σ_m q(z_n | x_m) for every n
    return torch.logsumexp(log_normal(z[:, None, :], mu[None], logvar[None]), dim=1) - math.log(len(mu))


def mi_right(mu, logvar, generator):
    z = reparameterize(mu, logvar, generator=generator)
    return (log_normal(z, mu, logvar) - log_mixture(z, mu, logvar)).mean()


def mi_no_log_n(mu, logvar, generator):  # forgot to divide the mixture by N
    return mi_right(mu, logvar, generator) - math.log(len(mu))


def mi_own_component(mu, logvar, generator):  # q(z_n) replaced by q(z_n | x_n): always zero
    z = reparameterize(mu, logvar, generator=generator)
    return (log_normal(z, mu, logvar) - log_normal(z, mu, logvar)).mean()


def mi_prior_instead_of_aggregate(mu, logvar, generator):  # log p(z) instead of log q(z): that estimates the mean KL
    z = reparameterize(mu, logvar, generator=generator)
    return (log_normal(z, mu, logvar) - log_normal(z, torch.zeros_like(z), torch.zeros_like(z))).mean()


def mi_sums_over_batch(mu, logvar, generator):  # a total over the datapoints instead of an average
    z = reparameterize(mu, logvar, generator=generator)
    return (log_normal(z, mu, logvar) - log_mixture(z, mu, logvar)).sum()


def test_right_implementations_pass(capsys):
    checks.free_bits_kl(free_bits_right)
    checks.mutual_information(mi_right)
    assert "✔ free_bits_kl" in capsys.readouterr().out


def test_free_bits_reference_is_the_formula():
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    torch.testing.assert_close(kl_normal_per_dim(mu, logvar), kl_matrix(mu, logvar))


@pytest.mark.parametrize("wrong", [free_bits_per_datapoint, free_bits_on_total, free_bits_batch_sum])
def test_wrong_free_bits_fail(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.free_bits_kl(wrong)


@pytest.mark.parametrize("wrong", [mi_no_log_n, mi_own_component, mi_prior_instead_of_aggregate, mi_sums_over_batch])
def test_wrong_mutual_information_fails(wrong):
    with pytest.raises(checks.CheckFailed):
        checks.mutual_information(wrong)


def test_not_a_function_is_reported():
    with pytest.raises(checks.CheckFailed, match="needs your function"):
        checks.mutual_information(0.5)
