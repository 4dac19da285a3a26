"""Per-datapoint inference against the linear-Gaussian model, whose best diagonal q and ELBO are known in closed form."""

import math

import numpy as np
import pytest
import torch

from course_code import inference
from course_code.tractable import GridModel, LinearGaussian


@pytest.fixture
def model():
    return LinearGaussian.random(x_dim=5, z_dim=3, noise_std=0.5, seed=0)


@pytest.fixture
def x(model):
    return model.sample(8, torch.Generator().manual_seed(1))[0]


def random_q(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype) - 1.0


def test_standardized_noise_has_exact_moments():
    eps = inference.standardized_noise(20, torch.Size([6, 3]), torch.Generator().manual_seed(0), torch.float64)
    assert eps.shape == (20, 6, 3)
    torch.testing.assert_close(eps.mean(0), torch.zeros(6, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    cov = torch.einsum("kbi,kbj->bij", eps, eps) / 20
    torch.testing.assert_close(cov, torch.eye(3, dtype=torch.float64).expand(6, 3, 3), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="more samples than latent dimensions"):
        inference.standardized_noise(3, torch.Size([6, 3]), torch.Generator())


@pytest.mark.parametrize("n_samples", [4, 16, 64])
def test_standardized_noise_biases_the_fourth_moment(n_samples):
    # For d = 1 the standardized draws are a sample divided by its own standard deviation, and the
    # expected sample kurtosis of normal draws is 3(K − 1)/(K + 1), not 3: moment matching makes
    # the fixed-noise ELBO consistent, with an O(1/K) bias, rather than unbiased.
    eps = inference.standardized_noise(n_samples, torch.Size([20_000, 1]), torch.Generator().manual_seed(0), torch.float64)
    fourth = (eps**4).mean(0)  # one sample kurtosis per column
    expected = 3 * (n_samples - 1) / (n_samples + 1)
    assert abs(fourth.mean().item() - expected) < 5 * fourth.std().item() / 20_000**0.5
    plain = torch.randn(n_samples, 20_000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs((plain**4).mean().item() - 3) < 0.1  # i.i.d. draws: unbiased


def test_fixed_noise_elbo_is_exact_for_a_quadratic_log_likelihood(model, x):
    # log p(x|z) is quadratic in z, so matching the first two moments of ε makes the average exact.
    mu, logvar = random_q((8, 3), seed=2)
    eps = inference.standardized_noise(10, mu.shape, torch.Generator().manual_seed(3), torch.float64)
    torch.testing.assert_close(inference.fixed_noise_elbo(model.log_likelihood, x, mu, logvar, eps), model.elbo(x, mu, logvar))


def five_standard_errors(model, x, mu, logvar, n_samples):
    z = mu + torch.exp(0.5 * logvar) * torch.randn(4000, *mu.shape, generator=torch.Generator().manual_seed(9), dtype=mu.dtype)
    return 5 * model.log_likelihood(x, z).std(0) / math.sqrt(n_samples)


def test_fixed_noise_elbo_with_many_plain_draws_is_the_elbo(model, x):
    mu, logvar = random_q((8, 3), seed=4)
    eps = torch.randn(50_000, 8, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = inference.fixed_noise_elbo(model.log_likelihood, x, mu, logvar, eps)
    assert ((got - model.elbo(x, mu, logvar)).abs() < five_standard_errors(model, x, mu, logvar, 50_000)).all()
    with pytest.raises(ValueError, match="eps must have shape"):
        inference.fixed_noise_elbo(model.log_likelihood, x, mu, logvar, eps[:, :4])


def test_svi_with_the_exact_elbo_reaches_the_best_diagonal_q(model, x):
    result = inference.svi(None, x, 3, exact_elbo=model.elbo, lr=0.2, tol=1e-7, window=20, max_steps=5000)
    mu_best, logvar_best = model.best_diagonal_q(x)
    assert result.converged and result.steps < 5000
    torch.testing.assert_close(result.mu, mu_best, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.logvar, logvar_best, atol=1e-2, rtol=0)
    torch.testing.assert_close(model.elbo(x, result.mu, result.logvar), model.elbo(x, mu_best, logvar_best), atol=1e-6, rtol=0)


def test_svi_with_monte_carlo_reaches_the_best_diagonal_elbo(model, x):
    result = inference.svi(model.log_likelihood, x, 3, n_samples=16, lr=0.2, tol=1e-7, window=20, max_steps=5000)
    best = model.elbo(x, *model.best_diagonal_q(x))
    torch.testing.assert_close(model.elbo(x, result.mu, result.logvar), best, atol=1e-4, rtol=0)
    assert result.trace[-1] == pytest.approx(best.mean().item(), abs=1e-4)


@pytest.mark.parametrize("lr", [0.01, 1.0])
def test_refinement_never_lowers_the_elbo(model, x, lr):
    # A poor "encoder": the best q shifted and too wide. lr=1.0 makes Adam overshoot on its first steps.
    mu_best, logvar_best = model.best_diagonal_q(x)
    mu0, logvar0 = mu_best + 0.3, logvar_best + 1.0
    for max_steps in (1, 3, 30):
        result = inference.optimize_q(None, x, mu0, logvar0, exact_elbo=model.elbo, lr=lr, max_steps=max_steps)
        assert (model.elbo(x, result.mu, result.logvar) >= model.elbo(x, mu0, logvar0)).all()
        assert all(b >= a for a, b in zip(result.trace, result.trace[1:]))
        assert result.trace[0] == pytest.approx(model.elbo(x, mu0, logvar0).mean().item())
        assert len(result.trace) == result.steps + 1


def test_each_datapoint_follows_its_own_path(model, x):
    # The batch objective is a sum and Adam is coordinate-wise: optimizing x[2] alone gives the same q.
    options = dict(exact_elbo=model.elbo, tol=0.0, max_steps=100)
    batch = inference.svi(None, x, 3, **options)
    alone = inference.svi(None, x[2:3], 3, **options)
    torch.testing.assert_close(batch.mu[2:3], alone.mu)
    torch.testing.assert_close(batch.logvar[2:3], alone.logvar)


def test_stopping_rule(model, x):
    quick = inference.svi(None, x, 3, exact_elbo=model.elbo, tol=1e9, window=7)
    assert quick.converged and quick.steps == 7
    never = inference.svi(None, x, 3, exact_elbo=model.elbo, tol=0.0, max_steps=40)
    assert not never.converged and never.steps == 40 and len(never.trace) == 41


def test_bad_arguments(model, x):
    with pytest.raises(ValueError, match="log_lik"):
        inference.svi(None, x, 3)
    with pytest.raises(ValueError, match="shape"):
        inference.optimize_q(model.log_likelihood, x, torch.zeros(8, 3), torch.zeros(8, 2))
    with pytest.raises(ValueError, match="window"):
        inference.svi(model.log_likelihood, x, 3, window=0)


def test_elbo_estimate_matches_the_closed_form(model, x):
    mu, logvar = random_q((8, 3), seed=6)
    got = inference.elbo_estimate(model.log_likelihood, x, mu, logvar, n_samples=20_000, chunk_size=3000,
                                  generator=torch.Generator().manual_seed(7))
    assert ((got - model.elbo(x, mu, logvar)).abs() < five_standard_errors(model, x, mu, logvar, 20_000)).all()


def test_gap_summary_against_numpy():
    g = torch.Generator().manual_seed(0)
    log_px = torch.randn(30, generator=g) - 20
    elbo_best = log_px - torch.rand(30, generator=g)
    elbo_amortized = elbo_best - 2 * torch.rand(30, generator=g)
    table = inference.gap_summary(log_px, elbo_best, elbo_amortized)
    for row, gap in enumerate([log_px - elbo_best, elbo_best - elbo_amortized, log_px - elbo_amortized]):
        values = gap.numpy().astype(np.float64)
        assert table[row, 0].item() == pytest.approx(values.mean(), abs=1e-5)
        assert table[row, 1].item() == pytest.approx(values.std(ddof=1) / math.sqrt(30), abs=1e-5)
    with pytest.raises(ValueError, match="same length"):
        inference.gap_summary(log_px, elbo_best[:5], elbo_amortized)
