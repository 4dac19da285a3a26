"""The chapter 9 checks accept right implementations and reject deliberately wrong ones, with the hint that names the fix."""

import math

import pytest
import torch

from course_code import checks


def log_normal_table(z, mu, logvar):  # (B, K): every point against every component
    return -0.5 * (math.log(2 * math.pi) + logvar + (z[:, None, :] - mu[None]) ** 2 / logvar.exp()).sum(-1)


def mixture_right(z, mu, logvar, logits):
    return torch.logsumexp(logits.log_softmax(-1) + log_normal_table(z, mu, logvar), dim=-1)


def mixture_by_exp(z, mu, logvar, logits):  # right, computed the unstable way: a near miss that must pass
    return (logits.softmax(-1) * log_normal_table(z, mu, logvar).exp()).sum(-1).log()


def mixture_unnormalized_logits(z, mu, logvar, logits):  # log π taken as the raw logits
    return torch.logsumexp(logits + log_normal_table(z, mu, logvar), dim=-1)


def mixture_sum_of_logs(z, mu, logvar, logits):  # Σ_k instead of log Σ_k
    return (logits.log_softmax(-1) + log_normal_table(z, mu, logvar)).sum(-1)


def mixture_std_as_variance(z, mu, logvar, logits):  # σ where σ² belongs
    table = -0.5 * (math.log(2 * math.pi) + logvar + (z[:, None, :] - mu[None]) ** 2 / (0.5 * logvar).exp()).sum(-1)
    return torch.logsumexp(logits.log_softmax(-1) + table, dim=-1)


def mixture_uniform_weights(z, mu, logvar, logits):  # the logits ignored
    return torch.logsumexp(log_normal_table(z, mu, logvar), dim=-1) - math.log(len(mu))


def holes_right(log_q, log_p, ratio):
    log_q, log_p = log_q.log_softmax(0), log_p.log_softmax(0)
    return log_p.exp()[log_q < log_p - math.log(ratio)].sum()


def holes_not_normalized(log_q, log_p, ratio):
    return (log_p.exp() / log_p.exp().sum())[log_q < log_p - math.log(ratio)].sum()


def holes_mass_of_q(log_q, log_p, ratio):  # the aggregated posterior's mass instead of the prior's
    log_q, log_p = log_q.log_softmax(0), log_p.log_softmax(0)
    return log_q.exp()[log_q < log_p - math.log(ratio)].sum()


def holes_ratio_ignored(log_q, log_p, ratio):
    log_q, log_p = log_q.log_softmax(0), log_p.log_softmax(0)
    return log_p.exp()[log_q < log_p].sum()


def test_right_implementations_pass(capsys):
    checks.mixture_log_prob(mixture_right)
    checks.mixture_log_prob(mixture_by_exp)
    checks.prior_mass_in_holes(holes_right)
    out = capsys.readouterr().out
    assert out.count("✔ mixture_log_prob") == 2 and "✔ prior_mass_in_holes" in out


@pytest.mark.parametrize("wrong", [mixture_unnormalized_logits, mixture_sum_of_logs, mixture_std_as_variance, mixture_uniform_weights])
def test_wrong_mixture_log_prob_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="mixture_log_prob") as failure:
        checks.mixture_log_prob(wrong)
    assert "softmax(logits)" in str(failure.value) and "logsumexp" in str(failure.value)


@pytest.mark.parametrize("wrong", [holes_not_normalized, holes_mass_of_q, holes_ratio_ignored])
def test_wrong_prior_mass_in_holes_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="prior_mass_in_holes") as failure:
        checks.prior_mass_in_holes(wrong)
    assert "normalize both over the grid" in str(failure.value)


def test_unattempted_exercise_is_not_a_failure():
    def stub(z, mu, logvar, logits):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checks.mixture_log_prob(stub)


def vamp_right(encoder, pseudo_inputs, z):
    mu, logvar = encoder(pseudo_inputs)
    return mixture_right(z, mu, logvar, torch.zeros(len(mu)))


def vamp_weights_left_out(encoder, pseudo_inputs, z):  # Σ_k instead of (1/K) Σ_k
    mu, logvar = encoder(pseudo_inputs)
    return torch.logsumexp(log_normal_table(z, mu, logvar), dim=-1)


def vamp_mean_of_logs(encoder, pseudo_inputs, z):  # (1/K) Σ_k log N instead of log (1/K) Σ_k N
    mu, logvar = encoder(pseudo_inputs)
    return log_normal_table(z, mu, logvar).mean(-1)


def vamp_std_as_variance(encoder, pseudo_inputs, z):
    mu, logvar = encoder(pseudo_inputs)
    return mixture_std_as_variance(z, mu, logvar, torch.zeros(len(mu)))


def test_right_vamp_log_prior_passes(capsys):
    checks.vamp_log_prior(vamp_right)
    assert "✔ vamp_log_prior" in capsys.readouterr().out


@pytest.mark.parametrize("wrong", [vamp_weights_left_out, vamp_mean_of_logs, vamp_std_as_variance])
def test_wrong_vamp_log_prior_fails_with_the_hint(wrong):
    with pytest.raises(checks.CheckFailed, match="vamp_log_prior") as failure:
        checks.vamp_log_prior(wrong)
    assert "minus log K" in str(failure.value)
