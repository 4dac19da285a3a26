"""The chapter 5 checks accept right implementations and reject deliberately wrong ones."""

import pytest
import torch

from course_code import checks


def kl_to_prior(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)


def fixed_noise_elbo_right(log_lik, x, mu, logvar, eps):
    z = mu + torch.exp(0.5 * logvar) * eps
    return log_lik(x, z).mean(0) - kl_to_prior(mu, logvar)


def fixed_noise_elbo_variance_as_scale(log_lik, x, mu, logvar, eps):  # σ² where σ belongs
    return log_lik(x, mu + torch.exp(logvar) * eps).mean(0) - kl_to_prior(mu, logvar)


def fixed_noise_elbo_sum_over_samples(log_lik, x, mu, logvar, eps):
    return log_lik(x, mu + torch.exp(0.5 * logvar) * eps).sum(0) - kl_to_prior(mu, logvar)


def fixed_noise_elbo_kl_added(log_lik, x, mu, logvar, eps):
    return log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0) + kl_to_prior(mu, logvar)


def fixed_noise_elbo_no_kl(log_lik, x, mu, logvar, eps):  # the reconstruction term alone
    return log_lik(x, mu + torch.exp(0.5 * logvar) * eps).mean(0)


def gap_summary_right(log_px, elbo_best, elbo_amortized):
    gaps = torch.stack([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized])
    return torch.stack([gaps.mean(1), gaps.std(1) / len(log_px) ** 0.5], dim=1)


def gap_summary_population_std(log_px, elbo_best, elbo_amortized):
    gaps = torch.stack([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized])
    return torch.stack([gaps.mean(1), gaps.std(1, correction=0) / len(log_px) ** 0.5], dim=1)


def gap_summary_std_not_error(log_px, elbo_best, elbo_amortized):  # the spread, not the error of the mean
    gaps = torch.stack([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized])
    return torch.stack([gaps.mean(1), gaps.std(1)], dim=1)


def gap_summary_swapped_rows(log_px, elbo_best, elbo_amortized):
    gaps = torch.stack([elbo_best - elbo_amortized, log_px - elbo_best, log_px - elbo_amortized])
    return torch.stack([gaps.mean(1), gaps.std(1) / len(log_px) ** 0.5], dim=1)


def gap_summary_signs_flipped(log_px, elbo_best, elbo_amortized):
    gaps = torch.stack([elbo_best - log_px, elbo_amortized - elbo_best, elbo_amortized - log_px])
    return torch.stack([gaps.mean(1), gaps.std(1) / len(log_px) ** 0.5], dim=1)


def gap_summary_transposed(log_px, elbo_best, elbo_amortized):
    return gap_summary_right(log_px, elbo_best, elbo_amortized).T


def test_right_implementations_pass(capsys):
    checks.fixed_noise_elbo(fixed_noise_elbo_right)
    checks.gap_summary(gap_summary_right)
    out = capsys.readouterr().out
    assert "✔ fixed_noise_elbo" in out and "✔ gap_summary" in out


@pytest.mark.parametrize("wrong", [fixed_noise_elbo_variance_as_scale, fixed_noise_elbo_sum_over_samples,
                                   fixed_noise_elbo_kl_added, fixed_noise_elbo_no_kl])
def test_wrong_fixed_noise_elbo_fails(wrong):
    with pytest.raises(checks.CheckFailed, match="fixed_noise_elbo"):
        checks.fixed_noise_elbo(wrong)


@pytest.mark.parametrize("wrong", [gap_summary_population_std, gap_summary_std_not_error, gap_summary_swapped_rows,
                                   gap_summary_signs_flipped, gap_summary_transposed])
def test_wrong_gap_summary_fails(wrong):
    with pytest.raises(checks.CheckFailed, match="gap_summary"):
        checks.gap_summary(wrong)


def test_unattempted_exercise_is_not_a_failure():
    def stub(log_px, elbo_best, elbo_amortized):
        raise NotImplementedError

    with pytest.raises(NotImplementedError):
        checks.gap_summary(stub)
