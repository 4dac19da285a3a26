"""Score-function and pathwise estimators against analytic gradients and closed-form variances.

Every tolerance is a multiple of the estimate's own standard error, measured from the same samples.
"""

import math

import pytest
import torch

from course_code import gradients
from course_code.distributions import kl_standard_normal, log_normal

N = 200_000
Z_TOL = 5.0  # standard errors
MU = torch.tensor([-1.5, 0.0, 0.5, 2.0], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 1.0, 2.0, 0.8], dtype=torch.float64)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def noise(n, seed, like=None):
    like = MU if like is None else like
    return torch.randn(n, *like.shape, generator=gen(seed), dtype=like.dtype)


def square(z):
    return z**2


def assert_mean_close(samples, expected):
    """The sample mean along axis 0 agrees with ``expected`` within Z_TOL standard errors."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(len(samples))
    assert torch.all((mean - expected).abs() <= Z_TOL * se + 1e-6), (mean, expected, se)


def assert_variance_close(samples, expected):
    """The sample variance along axis 0 agrees with ``expected`` within Z_TOL standard errors of a variance."""
    centred = samples - samples.mean(0)
    var = (centred**2).mean(0)
    se = ((centred**4).mean(0) - var**2).sqrt() / math.sqrt(len(samples))
    assert torch.all((var - expected).abs() <= Z_TOL * se), (var, expected, se)


@pytest.mark.parametrize("estimator", [gradients.score_function, gradients.pathwise])
def test_unbiased_for_square(estimator):
    # E[z²] = μ² + σ², so d/dμ = 2μ and d/dσ = 2σ
    d_mu, d_sigma = estimator(square, MU, SIGMA, noise(N, 1))
    assert d_mu.shape == d_sigma.shape == (N, 4)
    assert_mean_close(d_mu, 2 * MU)
    assert_mean_close(d_sigma, 2 * SIGMA)


@pytest.mark.parametrize("estimator", [gradients.score_function, gradients.pathwise])
def test_unbiased_for_sine(estimator):
    # E[sin z] = sin μ · exp(−σ²/2)
    d_mu, d_sigma = estimator(torch.sin, MU, SIGMA, noise(N, 2))
    damping = torch.exp(-(SIGMA**2) / 2)
    assert_mean_close(d_mu, torch.cos(MU) * damping)
    assert_mean_close(d_sigma, -SIGMA * torch.sin(MU) * damping)


def test_baseline_keeps_the_mean():
    d_mu, _ = gradients.score_function(square, MU, SIGMA, noise(N, 3), baseline=MU**2 + SIGMA**2)
    assert_mean_close(d_mu, 2 * MU)


def test_pathwise_variance_matches_closed_form():
    d_mu, _ = gradients.pathwise(square, MU, SIGMA, noise(N, 4))
    assert_variance_close(d_mu, gradients.pathwise_variance_square(MU, SIGMA))
    # the pathwise estimate 2z of d/dμ E[z²] is exactly twice the sample
    torch.testing.assert_close(gradients.pathwise_variance_square(MU, SIGMA), 4 * SIGMA**2)


def test_score_function_variance_matches_closed_form():
    d_mu, _ = gradients.score_function(square, MU, SIGMA, noise(300_000, 5))
    assert_variance_close(d_mu, gradients.score_function_variance_square(MU, SIGMA))


def test_baseline_variance_matches_closed_form():
    d_mu, _ = gradients.score_function(square, MU, SIGMA, noise(N, 6), baseline=MU**2 + SIGMA**2)
    expected = gradients.score_function_variance_square(MU, SIGMA, baseline=True)
    assert_variance_close(d_mu, expected)
    assert torch.all(expected < gradients.score_function_variance_square(MU, SIGMA))


def test_score_function_always_noisier_for_square():
    mu = torch.linspace(-3, 3, 13)
    sigma = torch.full_like(mu, 0.7)
    assert torch.all(gradients.score_function_variance_square(mu, sigma) > gradients.pathwise_variance_square(mu, sigma))


@pytest.mark.parametrize("baseline", [0.0, 2.5])
def test_bernoulli_score_function_unbiased(baseline):
    # E[f(b)] = p f(1) + (1 − p) f(0), so d/dp = f(1) − f(0)
    def f(b):
        return 3.0 * b + 2.0

    p = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    est = gradients.score_function_bernoulli(f, p, N, baseline=baseline, generator=gen(7))
    assert est.shape == (N, 3)
    assert_mean_close(est, torch.full_like(p, 3.0))


def test_bernoulli_baseline_reduces_variance():
    def f(b):
        return b + 10.0

    p = torch.tensor([0.3])
    plain = gradients.score_function_bernoulli(f, p, 10_000, generator=gen(8)).var()
    centred = gradients.score_function_bernoulli(f, p, 10_000, baseline=10.3, generator=gen(8)).var()
    assert centred < plain / 100


def _gaussian_problem():
    # log p(x|z) = log N(x; z, I): E_q[log p(x|z)] = Σ −½ (log 2π + (x − μ)² + σ²) in closed form
    g = gen(9)
    x = torch.randn(3, 2, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    logvar = (0.3 * torch.randn(3, 2, generator=g, dtype=torch.float64)).requires_grad_(True)

    def log_lik(x, z):
        return log_normal(x, z, 0.0)

    exact = (-0.5 * (math.log(2 * math.pi) + (x - mu) ** 2 + logvar.exp())).sum(-1) - kl_standard_normal(mu, logvar)
    exact_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact.mean(), [mu, logvar])])
    return log_lik, x, mu, logvar, exact_grad


@pytest.mark.parametrize("estimator,baseline", [("pathwise", 0.0), ("score", 0.0), ("score", -3.0)])
def test_elbo_surrogate_gradient_unbiased(estimator, baseline):
    log_lik, x, mu, logvar, exact_grad = _gaussian_problem()
    g = gen(10)
    samples = gradients.gradient_samples(
        lambda: gradients.elbo_surrogate(log_lik, x, mu, logvar, estimator, 4000, baseline, g), [mu, logvar], 30
    )
    assert samples.shape == (30, 12)
    assert_mean_close(samples, exact_grad)


@pytest.mark.parametrize("estimator", ["pathwise", "score"])
def test_elbo_surrogate_value_is_the_monte_carlo_elbo(estimator):
    log_lik, x, mu, logvar, _ = _gaussian_problem()
    value = gradients.elbo_surrogate(log_lik, x, mu, logvar, estimator, 5, generator=gen(11))
    z = mu.detach() + (0.5 * logvar.detach()).exp() * torch.randn(5, *mu.shape, generator=gen(11), dtype=mu.dtype)
    expected = (log_lik(x, z).mean(0) - kl_standard_normal(mu, logvar)).mean()
    torch.testing.assert_close(value, expected)


def test_pathwise_works_under_no_grad():
    with torch.no_grad():
        d_mu, _ = gradients.pathwise(square, MU, SIGMA, noise(3, 12))
    torch.testing.assert_close(d_mu, 2 * (MU + SIGMA * noise(3, 12)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="sigma must be positive"):
        gradients.pathwise(square, torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="mu has shape"):
        gradients.score_function(square, torch.zeros(2), torch.ones(3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="eps must have shape"):
        gradients.score_function(square, torch.zeros(2), torch.ones(2), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        gradients.score_function(square, 0.0, torch.ones(1), torch.zeros(5, 1))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        gradients.score_function_bernoulli(square, torch.tensor([1.0]), 10)
    with pytest.raises(ValueError, match="unknown estimator"):
        gradients.elbo_surrogate(None, torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), "reinforce")
    with pytest.raises(ValueError, match="repeats"):
        gradients.gradient_samples(lambda: torch.zeros(()), [], 0)
