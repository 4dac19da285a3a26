"""The chapter 7 checks accept right implementations, reject typical mistakes with a diagnosis, and tell near misses apart."""

import pytest
import torch

from course_code import checks, distributions, objectives


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


def bounds_right(lg, x, mu, logvar, k, repeats, generator):
    draws = objectives.iwae_bound(lg.log_likelihood, x.expand(repeats, -1), mu.expand(repeats, -1),
                                  logvar.expand(repeats, -1), k, generator=generator)
    return lg.elbo(x, mu, logvar).item(), draws.mean().item(), draws.std().item() / repeats**0.5


def bounds_one_sample(lg, x, mu, logvar, k, repeats, generator):  # draws of the ELBO, K = 1, whatever k is
    return bounds_right(lg, x, mu, logvar, 1, repeats, generator)


def bounds_standard_deviation(lg, x, mu, logvar, k, repeats, generator):  # the spread of the draws, not its error
    elbo, bound, error = bounds_right(lg, x, mu, logvar, k, repeats, generator)
    return elbo, bound, error * repeats**0.5


def bounds_mean_of_log_weights(lg, x, mu, logvar, k, repeats, generator):  # mean of log w_k instead of log of mean w_k
    z = mu + (0.5 * logvar).exp() * torch.randn(repeats, k, mu.shape[-1], generator=generator)
    log_w = (lg.log_likelihood(x.expand(repeats * k, -1), z.reshape(-1, mu.shape[-1])).reshape(repeats, k)
             + distributions.log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
             - distributions.log_normal(z, mu.expand_as(z), logvar.expand_as(z)))
    draws = log_w.mean(1)
    return lg.elbo(x, mu, logvar).item(), draws.mean().item(), draws.std().item() / repeats**0.5


def bounds_estimated_elbo(lg, x, mu, logvar, k, repeats, generator):  # the ELBO as the mean of 2,000 one-sample draws
    _, elbo, _ = bounds_right(lg, x, mu, logvar, 1, repeats, generator)
    return (elbo,) + bounds_right(lg, x, mu, logvar, k, repeats, generator)[1:]


def test_elbo_and_bound_passes_right_answers_with_other_random_numbers(capsys):
    for seed in range(5):
        checks.elbo_and_bound(lambda *args, seed=seed: bounds_right(*args[:-1], torch.Generator().manual_seed(100 + seed)))
    assert capsys.readouterr().out.count("✔ elbo_and_bound: passed") == 5


@pytest.mark.parametrize("wrong, message", [
    (bounds_one_sample, "standard error"),
    (bounds_standard_deviation, "standard error"),
    (bounds_mean_of_log_weights, "L_50"),
    (bounds_estimated_elbo, "exact ELBO"),
])
def test_wrong_elbo_and_bound_fails(wrong, message):
    with pytest.raises(checks.CheckFailed, match=message):
        checks.elbo_and_bound(wrong)
