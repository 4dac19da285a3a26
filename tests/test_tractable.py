"""The tractable models against independent answers: Gaussian conditioning, torch.distributions, Monte Carlo."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from course_code import objectives
from course_code.tractable import GridModel, LinearGaussian, elbo_on_grid


@pytest.fixture
def model():
    return LinearGaussian.random(x_dim=4, z_dim=2, noise_std=0.7, seed=3)


@pytest.fixture
def x(model):
    return model.sample(6, torch.Generator().manual_seed(0))[0]


def marginal_cov(model):
    return model.W @ model.W.T + model.var_x * torch.eye(model.x_dim, dtype=torch.float64)


def test_log_px_is_the_gaussian_marginal(model, x):
    expected = MultivariateNormal(model.b, marginal_cov(model)).log_prob(x)
    torch.testing.assert_close(model.log_px(x), expected)


def test_posterior_matches_gaussian_conditioning(model, x):
    # Condition the joint Gaussian of (z, x): mean Wᵀ C⁻¹ (x − b), covariance I − Wᵀ C⁻¹ W.
    C_inv = torch.linalg.inv(marginal_cov(model))
    mean, cov = model.posterior(x)
    torch.testing.assert_close(mean, (x - model.b) @ C_inv @ model.W)
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64) - model.W.T @ C_inv @ model.W)


def test_elbo_with_the_exact_posterior_is_log_px():
    # Orthogonal columns make the exact posterior diagonal, so a diagonal q can equal it.
    Q, _ = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    model = LinearGaussian(Q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64), torch.zeros(5, dtype=torch.float64), math.log(0.3))
    x, _ = model.sample(7, torch.Generator().manual_seed(2))
    mean, cov = model.posterior(x)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)))
    logvar = torch.log(torch.diagonal(cov)).expand_as(mean)
    torch.testing.assert_close(model.elbo(x, mean, logvar), model.log_px(x), rtol=0, atol=1e-10)


def test_gap_is_kl_to_the_posterior_for_any_q(model, x):
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(6, 2, dtype=torch.float64, generator=g)
    logvar = torch.randn(6, 2, dtype=torch.float64, generator=g)
    mean, cov = model.posterior(x)
    q = MultivariateNormal(mu, torch.diag_embed(torch.exp(logvar)))
    kl = kl_divergence(q, MultivariateNormal(mean, cov))
    torch.testing.assert_close(model.kl_to_posterior(x, mu, logvar), kl)
    torch.testing.assert_close(model.log_px(x) - model.elbo(x, mu, logvar), kl)
    assert (model.elbo(x, mu, logvar) < model.log_px(x)).all()


def test_closed_form_elbo_matches_monte_carlo(model, x):
    mu, logvar = torch.zeros(6, 2, dtype=torch.float64), torch.full((6, 2), -0.5, dtype=torch.float64)
    mc = objectives.elbo(model.log_likelihood, x, mu, logvar, n_samples=200_000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(mc.elbo, model.elbo(x, mu, logvar), rtol=0, atol=0.06)


def test_best_diagonal_q_is_optimal_and_its_gap_has_the_closed_form(model, x):
    mu, logvar = model.best_diagonal_q(x)
    mu, logvar = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    model.elbo(x, mu, logvar).sum().backward()
    assert mu.grad.abs().max() < 1e-10 and logvar.grad.abs().max() < 1e-10
    # For a Gaussian posterior with precision Λ, the best factorized q leaves ½(Σ log Λ_jj − log det Λ).
    precision = model.precision()
    gap = 0.5 * (torch.log(torch.diagonal(precision)).sum() - torch.logdet(precision))
    torch.testing.assert_close(model.kl_to_posterior(x, mu.detach(), logvar.detach()), gap.expand(6))
    assert gap > 0.01  # this posterior is correlated, so the gap cannot close


def test_iwae_bound_rises_with_k_towards_log_px(model, x):
    mu, logvar = torch.zeros(6, 2, dtype=torch.float64), torch.zeros(6, 2, dtype=torch.float64)  # q = prior
    bounds = [
        torch.stack([objectives.iwae_bound(model.log_likelihood, x, mu, logvar, k, generator=torch.Generator().manual_seed(s))
                     for s in range(20)]).mean()
        for k in (1, 10, 100, 1000)
    ]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    exact = model.log_px(x).mean()
    assert bounds[-1] < exact + 0.01 and exact - bounds[-1] < 0.05


def test_grid_model_reproduces_the_linear_gaussian(model, x):
    grid = GridModel(model.log_likelihood, z_dim=2, limit=7.0, n_points=161)
    torch.testing.assert_close(grid.log_px(x), model.log_px(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(grid.posterior_mean(x), model.posterior(x)[0], rtol=0, atol=1e-6)
    mu, logvar = model.best_diagonal_q(x)
    torch.testing.assert_close(grid.elbo(x, mu, logvar), model.elbo(x, mu, logvar), rtol=0, atol=1e-5)


def nonlinear_log_lik(x, z):
    """A 1-D latent decoded through a nonlinearity: x ~ N((sin 2z, z²/2 − 1), 0.3²)."""
    mean = torch.stack([torch.sin(2 * z[..., 0]), 0.5 * z[..., 0] ** 2 - 1], dim=-1)
    return Normal(mean, 0.3).log_prob(x).sum(-1)


def test_grid_log_px_agrees_with_large_k_importance_sampling():
    grid = GridModel(nonlinear_log_lik, z_dim=1, limit=6.0)
    x = torch.tensor([[0.5, -0.8], [-0.9, 0.4], [0.0, -1.0]], dtype=torch.float64)
    weights = grid.posterior_weights(x)
    mean = weights @ grid.grid
    var = weights @ grid.grid**2 - mean**2
    # A proposal wider than the posterior keeps the importance weights well behaved.
    estimate = objectives.log_px_estimate(nonlinear_log_lik, x, mean, torch.log(4 * var), n_samples=50_000,
                                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(grid.log_px(x), estimate, rtol=0, atol=0.03)


def test_grid_elbo_matches_monte_carlo_and_is_differentiable():
    grid = GridModel(nonlinear_log_lik, z_dim=1)
    x = torch.tensor([[0.5, -0.8]], dtype=torch.float64)
    mu = torch.tensor([[0.3]], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    exact = grid.elbo(x, mu, logvar)
    mc = objectives.elbo(nonlinear_log_lik, x, mu, logvar, n_samples=400_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(exact, mc.elbo, rtol=0, atol=0.01)
    exact.sum().backward()
    assert torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0
    assert (exact <= grid.log_px(x)).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="1-D or 2-D"):
        GridModel(nonlinear_log_lik, z_dim=3)
    with pytest.raises(ValueError, match=r"W must be \(D, d\)"):
        LinearGaussian(torch.zeros(3), torch.zeros(3), 0.0)


@pytest.mark.parametrize("z_dim", [1, 2])
def test_elbo_on_grid(z_dim):
    model = LinearGaussian.random(x_dim=4, z_dim=z_dim, noise_std=0.8, seed=2)
    x, _ = model.sample(5, torch.Generator().manual_seed(3))
    grid = GridModel(model.log_likelihood, z_dim=z_dim, limit=7.0, n_points=1401 if z_dim == 1 else 141)
    log_joint = grid.log_joint(x) + grid.log_cell
    torch.testing.assert_close(torch.logsumexp(log_joint, 0), model.log_px(x), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(8)
    mu = torch.randn(5, z_dim, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, z_dim, generator=g, dtype=torch.float64) - 1.0
    logvar = logvar.clamp(-2.0, 0.0)  # wide enough for the grid to resolve, narrow enough to fit inside it
    torch.testing.assert_close(elbo_on_grid(log_joint, grid.grid, mu, logvar), model.elbo(x, mu, logvar), atol=1e-5, rtol=0)
    # however narrow q is, the discretized gap stays a KL divergence: never negative
    narrow = torch.full_like(mu, -12.0)
    assert (torch.logsumexp(log_joint, 0) - elbo_on_grid(log_joint, grid.grid, mu, narrow) >= 0).all()


def test_chi_square_against_monte_carlo_and_the_exact_posterior():
    """χ²(p(z|x) ‖ q) = E_q[w²]/p(x)² − 1: against the sample mean of w²/p(x)² under q, and 0 when q is the posterior."""
    model = LinearGaussian.random(x_dim=5, z_dim=2, noise_std=1.0, seed=1)
    x = model.sample(3, torch.Generator().manual_seed(2))[0]
    mean, _ = model.posterior(x)
    mu, logvar = mean + 0.2, torch.full_like(mean, -0.3)
    n = 400_000
    ratio = torch.exp(2 * (objectives.log_weights(model.log_likelihood, x, mu, logvar, n, torch.Generator().manual_seed(3)) - model.log_px(x)))
    se = ratio.std(0) / math.sqrt(n)
    assert torch.all((ratio.mean(0) - 1 - model.chi_square(x, mu, logvar)).abs() < 5 * se)
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(4, 2, generator=g))
    diagonal = LinearGaussian(q * torch.tensor([2.0, 0.5]), torch.randn(4, generator=g), 0.0)  # diagonal posterior
    x = diagonal.sample(3, g)[0]
    mean, cov = diagonal.posterior(x)
    assert torch.allclose(diagonal.chi_square(x, mean, torch.diagonal(cov).log().expand_as(mean)), torch.zeros(3), atol=1e-10)


def test_chi_square_is_infinite_when_q_is_too_narrow(model, x):
    mean, _ = model.posterior(x)
    assert torch.isinf(model.chi_square(x, mean, torch.full_like(mean, -8.0))).all()


def test_iwae_gap_falls_as_chi_square_over_2k():
    """The delta method: log p(x) − E[L_K] ≈ χ²(p(z|x) ‖ q)/(2K) when χ² is small against K."""
    model = LinearGaussian.random(x_dim=5, z_dim=2, noise_std=1.0, seed=1)
    x = model.sample(1, torch.Generator().manual_seed(2))[0]
    mean, cov = model.posterior(x)
    mu, logvar = mean, torch.diagonal(cov).log().expand_as(mean) + 0.5
    K, repeats = 20, 20_000
    bounds = objectives.iwae_bound(model.log_likelihood, x.expand(repeats, -1), mu.expand(repeats, -1),
                                   logvar.expand(repeats, -1), K, generator=torch.Generator().manual_seed(3))
    gap, se = model.log_px(x) - bounds.mean(), bounds.std() / math.sqrt(repeats)
    predicted = model.chi_square(x, mu, logvar) / (2 * K)
    assert 0.1 < model.chi_square(x, mu, logvar) < 0.5  # small enough that the next order (χ²/K)² is negligible
    assert (gap - predicted).abs() < 4 * se + 0.05 * predicted, (gap, predicted, se)


# ---- the best full-covariance q (chapter 8) ---------------------------------------------------

def test_best_full_q_is_the_posterior_and_closes_the_gap(model, x):
    mean, L = model.best_full_q(x)
    post_mean, post_cov = model.posterior(x)
    torch.testing.assert_close(mean, post_mean)
    torch.testing.assert_close(L @ L.transpose(-2, -1), post_cov.expand(len(x), 2, 2))
    torch.testing.assert_close(model.elbo_full(x, mean, L), model.log_px(x))  # KL(q ‖ p(z|x)) = 0


def test_elbo_full_is_log_px_minus_the_kl_to_the_posterior(model, x):
    g = torch.Generator().manual_seed(4)
    mu, A = torch.randn(len(x), 2, generator=g), torch.randn(len(x), 2, 2, generator=g)
    L = torch.linalg.cholesky(A @ A.transpose(-2, -1) + 0.1 * torch.eye(2))
    post_mean, post_cov = model.posterior(x)
    kl = kl_divergence(MultivariateNormal(mu, scale_tril=L), MultivariateNormal(post_mean, post_cov))
    torch.testing.assert_close(model.elbo_full(x, mu, L), model.log_px(x) - kl)


def test_elbo_full_with_a_diagonal_factor_is_the_diagonal_elbo(model, x):
    mu, logvar = model.best_diagonal_q(x)
    torch.testing.assert_close(model.elbo_full(x, mu, torch.diag_embed(torch.exp(0.5 * logvar))), model.elbo(x, mu, logvar))


def test_elbo_on_grid_log_q_of_a_gaussian_is_elbo_on_grid():
    from course_code.distributions import log_normal
    from course_code.tractable import elbo_on_grid_log_q

    grid_model = GridModel(lambda x, z: -(((x - z) ** 2).sum(-1)), z_dim=1, n_points=201)
    x = torch.tensor([[0.3], [-1.0]])
    log_joint = grid_model.log_joint(x) + grid_model.log_cell
    mu, logvar = torch.tensor([[0.1], [-0.5]]), torch.tensor([[-1.0], [0.2]])
    log_q = log_normal(grid_model.grid[:, None, :], mu, logvar)
    torch.testing.assert_close(elbo_on_grid_log_q(log_joint, log_q), elbo_on_grid(log_joint, grid_model.grid, mu, logvar))
    with pytest.raises(ValueError, match="log_q must have the shape"):
        elbo_on_grid_log_q(log_joint, log_q[:, :1])
