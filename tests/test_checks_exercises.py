"""The checks added so that every coding exercise of chapters 1–6 has one: their references against
independent answers (Monte Carlo, other formulas), right implementations passing, graded assertions failing
on what they must reject. The diagnoses these checks give are tested in test_checks_diagnoses.py."""

import math

import pytest
import torch

from course_code import checks, diagnostics, gradients


def square(z):
    return z**2


def test_sigma_variances_match_a_monte_carlo_measurement():
    mu, sigma = torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.3])
    eps = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(0))
    pathwise = gradients.pathwise(square, mu, sigma, eps)[1]
    score = gradients.score_function(square, mu, sigma, eps)[1]

    def formula(mu, sigma):
        return 4 * mu**2 + 8 * sigma**2, 2 * mu**4 / sigma**2 + 60 * mu**2 + 74 * sigma**2

    expected = formula(mu, sigma)
    # the variance of a sample variance of n draws is about (m4 − σ⁴)/n: a 5 % tolerance is many standard errors here
    assert torch.allclose(pathwise.var(0), expected[0], rtol=0.05)
    assert torch.allclose(score.var(0), expected[1], rtol=0.05)
    checks.sigma_gradient_variances(formula)


def test_best_baseline_minimizes_the_measured_variance():
    mu, sigma = torch.tensor([0.7]), torch.tensor([1.2])
    eps = torch.randn(400_000, 1, generator=torch.Generator().manual_seed(1))
    grid = torch.linspace(0.0, 8.0, 81)
    variances = torch.stack([gradients.score_function(square, mu, sigma, eps, baseline=b)[0].var() for b in grid])
    best = grid[variances.argmin()]
    assert abs(best - (mu**2 + 3 * sigma**2)) < 0.3
    assert math.isclose(variances.min().item(), (8 * mu**2 + 6 * sigma**2).item(), rel_tol=0.05)
    checks.best_baseline(lambda mu, sigma: (mu**2 + 3 * sigma**2, 8 * mu**2 + 6 * sigma**2))


def test_best_diagonal_variances_are_the_conditional_variances():
    """1/Λ_jj by the Schur complement, Σ_jj − Σ_j,rest Σ_rest⁻¹ Σ_rest,j, without inverting Σ."""

    def conditional(cov):
        d, out = len(cov), []
        for j in range(d):
            rest = [i for i in range(d) if i != j]
            s = cov[j, rest]
            out.append(cov[j, j] - s @ torch.linalg.solve(cov[rest][:, rest], s))
        return torch.stack(out)

    checks.best_diagonal_variances(conditional)


def test_linear_encoder_by_the_marginal_of_the_data():
    """The posterior mean by Woodbury, m = Wᵀ(WWᵀ + σ²I)⁻¹(x − b), and the variances by the Schur complement."""

    def encoder(x, W, b, var_x):
        D, d = W.shape
        mean = (x - b) @ torch.linalg.solve(W @ W.T + var_x * torch.eye(D), W)
        cov = torch.eye(d) - W.T @ torch.linalg.solve(W @ W.T + var_x * torch.eye(D), W)
        conditional = []
        for j in range(d):
            rest = [i for i in range(d) if i != j]
            s = cov[j, rest]
            conditional.append(cov[j, j] - (s @ torch.linalg.solve(cov[rest][:, rest], s) if rest else 0.0))
        return mean, torch.log(torch.stack(conditional)).expand_as(mean)

    checks.linear_encoder(encoder)


def test_lognormal_gradients_from_torch_distributions():
    def estimate(mu, sigma, eps):
        mu, sigma = mu.clone().requires_grad_(True), sigma.clone().requires_grad_(True)
        z = torch.distributions.transforms.ExpTransform()(mu + sigma * eps)
        return torch.autograd.grad(z.mean(), [mu, sigma])

    checks.lognormal_gradients(estimate)


def test_the_small_functions_pass_when_right():
    checks.best_noise_variance(lambda x, x_hat: torch.nn.functional.mse_loss(x_hat, x))
    checks.map_rescaling(lambda weight, z, c: (weight * (1 / c), z * c))
    checks.standardize(lambda eps: (eps - eps.mean(0)) / eps.std(0, correction=0))
    checks.difference_of_means(lambda a, b: (a.mean() - b.mean(), torch.hypot(a.std() / len(a) ** 0.5, b.std() / len(b) ** 0.5)))


def test_log_weight_and_analytic_elbo_with_torch_distributions():
    Normal = torch.distributions.Normal

    def both(log_lik, x, mu, logvar, eps):
        q = Normal(mu, (0.5 * logvar).exp())
        z = q.loc + q.scale * eps
        prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
        rec = log_lik(x, z)
        kl = torch.distributions.kl_divergence(q, prior).sum(-1)
        return rec + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1), rec - kl

    checks.log_weight_and_analytic_elbo(both)


# --- graded assertions ----------------------------------------------------------------------------

def test_binarize_accepts_bernoulli_draws_of_either_kind():
    checks.binarize(lambda x, generator: torch.bernoulli(x, generator=generator))
    checks.binarize(lambda x, generator: (torch.rand(x.shape, generator=generator) < x).to(x.dtype))


@pytest.mark.parametrize("wrong, words", [
    (lambda x, generator: (x > 0.5).to(x.dtype), "fraction"),  # a threshold, the static binarization
    (lambda x, generator: torch.bernoulli(x.sqrt(), generator=generator), "fraction"),  # the wrong probability
    (lambda x, generator: torch.bernoulli(x, generator=generator)[:10], "instead of"),
    (lambda x, generator: x, "other than 0 and 1"),
    (lambda x, generator: torch.bernoulli(x, generator=generator).tolist(), "not a torch tensor"),
])
def test_binarize_rejects(wrong, words):
    with pytest.raises(checks.CheckFailed, match=words):
        checks.binarize(wrong)


def codes(spread, logvar=0.0):
    return lambda n, d, generator: (spread**0.5 * torch.randn(n, d, generator=generator), torch.full((n, d), logvar))


def test_weakly_informative_codes():
    checks.weakly_informative_codes(codes(0.02))
    for wrong, words in [(codes(0.005), "units are active"), (codes(0.5), "the mutual information is"),
                         (codes(0.02, logvar=-6.0), "the mutual information is"),
                         (lambda n, d, generator: (torch.zeros(n, d + 1), torch.zeros(n, d + 1)), "instead of"),
                         (lambda n, d, generator: torch.zeros(n, d), "return two tensors")]:
        with pytest.raises(checks.CheckFailed, match=words):
            checks.weakly_informative_codes(wrong)
    assert diagnostics.active_units(codes(0.02)(1000, 4, torch.Generator().manual_seed(0))[0]) == 4
