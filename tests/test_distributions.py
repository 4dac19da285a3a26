"""course_code.distributions against torch.distributions, large-sample Monte Carlo and the moments of N(μ, σ²)."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from course_code import distributions as D


def gaussian_pair(seed: int = 0, shape=(5, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def normal(mu, logvar):
    return Normal(mu, torch.exp(0.5 * torch.as_tensor(logvar, dtype=torch.float64)))


# ---- closed-form KL ---------------------------------------------------------------------------

def test_kl_normal_per_dim_equals_torch_distributions():
    (mu_q, logvar_q), (mu_p, logvar_p) = gaussian_pair(0), gaussian_pair(1)
    expected = kl_divergence(normal(mu_q, logvar_q), normal(mu_p, logvar_p))
    torch.testing.assert_close(D.kl_normal_per_dim(mu_q, logvar_q, mu_p, logvar_p), expected)
    torch.testing.assert_close(D.kl_normal(mu_q, logvar_q, mu_p, logvar_p), expected.sum(-1))


def test_kl_standard_normal_equals_torch_distributions_and_kl_normal_default():
    mu, logvar = gaussian_pair(2)
    expected = kl_divergence(normal(mu, logvar), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(D.kl_standard_normal(mu, logvar), expected)
    torch.testing.assert_close(D.kl_normal(mu, logvar), expected)  # the default p is N(0, I)


def test_kl_of_a_distribution_to_itself_is_zero():
    mu, logvar = gaussian_pair(3)
    torch.testing.assert_close(D.kl_normal(mu, logvar, mu, logvar), torch.zeros(5, dtype=torch.float64))


def test_kl_normal_matches_a_large_sample_monte_carlo_estimate():
    mu_q, logvar_q = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.5, 0.3, 0.0])
    mu_p, logvar_p = torch.tensor([0.0, 0.5, 1.5]), torch.tensor([0.2, -0.4, 0.5])
    torch.manual_seed(0)
    z = normal(mu_q, logvar_q).sample((400_000,))  # KL = E_q[log q(z) − log p(z)]
    log_ratio = normal(mu_q, logvar_q).log_prob(z) - normal(mu_p, logvar_p).log_prob(z)
    estimate, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    exact = D.kl_normal_per_dim(mu_q.double(), logvar_q.double(), mu_p.double(), logvar_p.double())
    assert ((estimate - exact).abs() < 5 * stderr).all(), (estimate, exact, stderr)


# ---- log-densities ----------------------------------------------------------------------------

def test_log_normal_equals_torch_normal_log_prob_sum():
    (x, mu), (logvar, _) = gaussian_pair(4), gaussian_pair(5)
    torch.testing.assert_close(D.log_normal(x, mu, logvar), normal(mu, logvar).log_prob(x).sum(-1))


def test_log_normal_with_a_fixed_float_variance_and_broadcasting():
    x, mu = gaussian_pair(6, shape=(4, 7, 3))
    mu = mu[0]  # (7, 3) broadcasts against (4, 7, 3), as a decoder mean against K samples
    expected = normal(mu, -1.3).log_prob(x).sum(-1)
    torch.testing.assert_close(D.log_normal(x, mu, -1.3), expected)


def test_log_standard_normal_equals_torch_normal():
    z, _ = gaussian_pair(7)
    torch.testing.assert_close(D.log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "grey"])
def test_log_bernoulli_equals_torch_bernoulli_log_prob_sum(binary):
    g = torch.Generator().manual_seed(8)
    logits = 3 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    x = torch.rand(6, 10, generator=g, dtype=torch.float64)
    if binary:
        x = x.round()
    # Bernoulli.log_prob is the continuous cross-entropy x log p + (1 − x) log(1 − p) for grey x too
    expected = Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)
    torch.testing.assert_close(D.log_bernoulli(x, logits), expected)


def test_log_bernoulli_is_stable_for_extreme_logits():
    x = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[200.0, -200.0]])
    torch.testing.assert_close(D.log_bernoulli(x, logits), torch.tensor([0.0]))
    assert torch.isfinite(D.log_bernoulli(1 - x, logits)).all()


# ---- reparameterization -----------------------------------------------------------------------

def test_reparameterize_has_the_right_mean_and_variance():
    mu, logvar = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([0.0, 1.0, -2.0])
    z = D.reparameterize(mu, logvar, n_samples=200_000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (200_000, 3)
    var = logvar.exp()
    stderr_mean = (var / len(z)).sqrt()
    stderr_var = var * math.sqrt(2 / len(z))  # Var of the sample variance of a Gaussian
    assert ((z.mean(0) - mu).abs() < 5 * stderr_mean).all()
    assert ((z.var(0) - var).abs() < 5 * stderr_var).all()


def test_reparameterize_without_sample_axis_and_with_a_generator_is_reproducible():
    mu, logvar = gaussian_pair(9)
    a = D.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    b = D.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    assert a.shape == mu.shape and torch.equal(a, b)


def test_gradients_flow_to_mu_and_logvar():
    mu = torch.tensor([0.5, -1.0], requires_grad=True)
    logvar = torch.tensor([0.2, -0.3], requires_grad=True)
    eps_gen = torch.Generator().manual_seed(3)
    z = D.reparameterize(mu, logvar, generator=eps_gen)
    z.sum().backward()
    eps = torch.randn(2, generator=torch.Generator().manual_seed(3))  # the same ε
    # z = μ + exp(½ logvar) ε:  ∂z/∂μ = 1,  ∂z/∂logvar = ½ exp(½ logvar) ε
    torch.testing.assert_close(mu.grad, torch.ones(2))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


# ---- bad input --------------------------------------------------------------------------------

def test_non_tensor_input_is_a_type_error():
    mu = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        D.kl_standard_normal([[0.0, 0.0, 0.0]], mu)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        D.log_normal([0.0, 0.0, 0.0], mu, 0.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        D.log_bernoulli(1, mu)


@pytest.mark.parametrize(
    "call",
    [
        lambda bad, ok: D.kl_standard_normal(bad, ok),
        lambda bad, ok: D.kl_normal(ok, ok, bad, ok),
        lambda bad, ok: D.log_normal(ok, bad, ok),
        lambda bad, ok: D.log_standard_normal(bad),
        lambda bad, ok: D.log_bernoulli(ok.sigmoid(), bad),
        lambda bad, ok: D.reparameterize(ok, bad),
    ],
    ids=["kl_standard_normal", "kl_normal", "log_normal", "log_standard_normal", "log_bernoulli", "reparameterize"],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_input_is_a_value_error_naming_it(call, value):
    ok = torch.zeros(2, 3)
    bad = ok.clone()
    bad[1, 2] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(bad, ok)


def test_mismatched_shapes_are_a_value_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"mu has shape \(2, 3\) and logvar has shape \(2, 4\)"):
        D.kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x has shape \(5, 3\) and mu has shape \(4, 3\)"):
        D.log_normal(torch.zeros(5, 3), torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match="x has shape"):
        D.log_bernoulli(torch.zeros(2, 3), torch.zeros(2, 2))


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_bernoulli_targets_outside_unit_interval_are_a_value_error(value):
    x = torch.full((2, 3), 0.5)
    x[0, 1] = value
    with pytest.raises(ValueError, match=r"Bernoulli targets must lie in \[0, 1\]"):
        D.log_bernoulli(x, torch.zeros(2, 3))


# ---- full-covariance Gaussians (chapter 8) ----------------------------------------------------

def random_tril(d: int, seed: int, batch=()):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, d, d, generator=g)
    return torch.linalg.cholesky(A @ A.transpose(-2, -1) + 0.5 * torch.eye(d))


def test_log_normal_full_equals_torch_multivariate_normal():
    from torch.distributions import MultivariateNormal

    mu, L = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), random_tril(3, 1, (5,))
    x = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(2))  # a sample axis in front
    expected = MultivariateNormal(mu, scale_tril=L).log_prob(x)
    torch.testing.assert_close(D.log_normal_full(x, mu, L), expected)
    torch.testing.assert_close(D.log_normal_full(x, mu, random_tril(3, 3)), MultivariateNormal(mu, scale_tril=random_tril(3, 3)).log_prob(x))


def test_log_normal_full_with_a_diagonal_factor_is_log_normal():
    mu, logvar = gaussian_pair(4)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(D.log_normal_full(x, mu, torch.diag_embed(torch.exp(0.5 * logvar))), D.log_normal(x, mu, logvar))


def test_kl_normal_full_equals_torch_distributions_with_and_without_a_prior():
    from torch.distributions import MultivariateNormal

    mu_q, L_q = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), random_tril(4, 1, (6,))
    mu_p, L_p = torch.randn(4, generator=torch.Generator().manual_seed(2)), random_tril(4, 3)
    q = MultivariateNormal(mu_q, scale_tril=L_q)
    torch.testing.assert_close(D.kl_normal_full(mu_q, L_q, mu_p, L_p), kl_divergence(q, MultivariateNormal(mu_p, scale_tril=L_p)))
    standard = MultivariateNormal(torch.zeros(4), torch.eye(4))
    torch.testing.assert_close(D.kl_normal_full(mu_q, L_q), kl_divergence(q, standard))


def test_reparameterize_full_has_the_mean_and_covariance_of_the_gaussian():
    mu, L = torch.tensor([1.0, -2.0]), random_tril(2, 7)
    z = D.reparameterize_full(mu, L, 200_000, torch.Generator().manual_seed(8))
    assert z.shape == (200_000, 2)
    cov = L @ L.T
    se_mean = (cov.diagonal() / 200_000).sqrt()
    assert ((z.mean(0) - mu).abs() < 5 * se_mean).all()
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.03 * cov.abs().max().item(), rtol=0)


def test_full_covariance_functions_name_a_bad_factor():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="scale_tril must have shape"):
        D.log_normal_full(mu, mu, torch.eye(2))
    with pytest.raises(ValueError, match="positive diagonal"):
        D.kl_normal_full(mu, -torch.eye(3))
