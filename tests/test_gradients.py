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


# --- The gradient of the importance-weighted bound: standard and doubly reparameterized (chapter 7) ---

from course_code import objectives  # noqa: E402
from course_code.distributions import log_standard_normal  # noqa: E402
from course_code.tractable import LinearGaussian  # noqa: E402


def iwae_setup(seed=0, z_dim=2):
    """A linear-Gaussian decoder whose W is a parameter, two datapoints, and a q that is not the posterior."""
    model = LinearGaussian.random(x_dim=4, z_dim=z_dim, noise_std=0.8, seed=seed)
    x = model.sample(2, gen(seed + 1))[0]
    W = model.W.clone().requires_grad_(True)
    mean, _ = model.posterior(x)
    mu = (mean + 0.3).requires_grad_(True)
    logvar = torch.full_like(mean, -0.5).requires_grad_(True)

    def log_lik(x, z):
        return log_normal(x, z @ W.T + model.b, model.logvar_x)

    return model, x, log_lik, W, mu, logvar


def encoder_gradients(surrogate, n_samples, repeats, seed=0, setup=None):
    """``repeats`` independent estimates of the gradient in (μ, log σ²), one row each, from one vectorized call.

    Every datapoint is repeated ``repeats`` times with its own copy of (μ, log σ²), so the gradient in
    a copy is the estimate of one draw; the same seed gives the same draws to every estimator (paired).
    """
    model, x, log_lik, W, mu, logvar = setup or iwae_setup()
    mu_r, logvar_r = (t.detach().repeat(repeats, 1).requires_grad_(True) for t in (mu, logvar))
    value = surrogate(log_lik, x.repeat(repeats, 1), mu_r, logvar_r, n_samples, gen(seed)).sum()
    return torch.cat([g.reshape(repeats, -1) for g in torch.autograd.grad(value, [mu_r, logvar_r])], dim=1)


def estimator(name):
    return lambda log_lik, x, mu, logvar, n_samples, generator: gradients.iwae_surrogate(
        log_lik, x, mu, logvar, n_samples, name, generator
    )


def sticking_the_landing(log_lik, x, mu, logvar, n_samples, generator):
    """Σ_k w̃_k log w_k with log q held fixed in φ (Roeder et al., 2017): unbiased for K = 1 only."""
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n_samples, *mu.shape, generator=generator)
    log_w = log_lik(x, z) + log_standard_normal(z) - log_normal(z, mu.detach(), logvar.detach())
    return (torch.softmax(log_w.detach(), dim=0) * log_w).sum(0)





@pytest.mark.parametrize("estimator", gradients.IWAE_ESTIMATORS)
def test_iwae_surrogate_value_is_the_bound(estimator):
    _, x, log_lik, _, mu, logvar = iwae_setup()
    value = gradients.iwae_surrogate(log_lik, x, mu, logvar, 7, estimator, gen(3))
    bound = objectives.iwae_bound(log_lik, x, mu, logvar, 7, generator=gen(3))
    assert torch.allclose(value, bound, atol=1e-12)


def test_dreg_is_unbiased_for_the_iwae_gradient_and_leaves_the_decoder_alone():
    """Paired draws (the same seed): the mean difference of the two estimators is zero within 4 standard errors."""
    repeats, K = 20_000, 5
    standard, dreg = encoder_gradients(estimator("iwae"), K, repeats), encoder_gradients(estimator("dreg"), K, repeats)
    difference = dreg - standard
    se = difference.std(0) / math.sqrt(repeats)
    assert torch.all(difference.mean(0).abs() <= 4 * se), (difference.mean(0), se)
    assert torch.all(dreg.var(0) < standard.var(0))  # and here it is less noisy
    _, x, log_lik, W, mu, logvar = iwae_setup()
    for_decoder = {}
    for name in gradients.IWAE_ESTIMATORS:  # the decoder's gradient is the standard one, draw by draw
        g = gen(1)
        for_decoder[name] = gradients.gradient_samples(
            lambda: gradients.iwae_surrogate(log_lik, x, mu, logvar, K, name, g).sum(), [W], 20
        )
    assert torch.allclose(for_decoder["iwae"], for_decoder["dreg"], atol=1e-10)


def test_the_same_bound_detects_a_biased_encoder_gradient():
    """Sticking the landing drops a term that DReG keeps: for K = 5 its mean is off by many standard errors."""
    repeats, K = 20_000, 5
    difference = encoder_gradients(sticking_the_landing, K, repeats) - encoder_gradients(estimator("iwae"), K, repeats)
    se = difference.std(0) / math.sqrt(repeats)
    assert (difference.mean(0).abs() > 4 * se).any()


def test_dreg_with_one_sample_is_unbiased_for_the_closed_form_elbo_gradient():
    """K = 1: the bound is the ELBO, whose gradient in (μ, log σ²) the linear-Gaussian model gives exactly."""
    model, x, log_lik, W, mu, logvar = iwae_setup()
    exact = torch.cat([g.reshape(-1) for g in torch.autograd.grad(model.elbo(x, mu, logvar).sum(), [mu, logvar])])
    for name in gradients.IWAE_ESTIMATORS:
        assert_mean_close(encoder_gradients(estimator(name), 1, 20_000), exact)


def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior():
    """With q = p(z|x) every log w_k equals log p(x): DReG's encoder gradient is 0 for every draw, the standard one is not."""
    g = gen(5)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=g))
    model = LinearGaussian(q * torch.tensor([2.0, 0.7]), torch.randn(4, generator=g), math.log(0.5))  # diagonal posterior
    x = model.sample(3, g)[0]
    mean, cov = model.posterior(x)
    mu = mean.clone().requires_grad_(True)
    logvar = torch.diagonal(cov).log().expand_as(mean).clone().requires_grad_(True)
    setup = (model, x, model.log_likelihood, None, mu, logvar)
    grads = {name: encoder_gradients(estimator(name), 10, 50, setup=setup) for name in gradients.IWAE_ESTIMATORS}
    assert grads["dreg"].abs().max() < 1e-10
    assert grads["iwae"].abs().max() > 1e-3


def test_gradient_snr():
    samples = torch.tensor([[1.0, -2.0], [3.0, -2.0 + 1e-3], [2.0, -2.0 - 1e-3]])
    expected = torch.tensor([2.0 / 1.0, 2.0 / 1e-3])
    assert torch.allclose(gradients.gradient_snr(samples), expected, rtol=1e-6)
    assert gradients.gradient_snr(torch.zeros(4, 2)).isnan().all()  # a parameter the objective never reaches


def test_iwae_gradient_bad_inputs():
    _, x, log_lik, _, mu, logvar = iwae_setup()
    with pytest.raises(ValueError, match="estimator"):
        gradients.iwae_surrogate(log_lik, x, mu, logvar, 3, "reinforce")
    with pytest.raises(ValueError, match="n_samples"):
        gradients.iwae_surrogate(log_lik, x, mu, logvar, 0)
    with pytest.raises(ValueError, match="at least 2"):
        gradients.gradient_snr(torch.ones(1, 3))
    with pytest.raises(ValueError, match="samples"):
        gradients.gradient_snr(torch.ones(3))
