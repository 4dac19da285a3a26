"""course_code.objectives on a linear-Gaussian model whose log p(x) and posterior are known in closed form.

The model is built here from torch.distributions alone: z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D)
with orthogonal columns in W, so that p(x) = N(b, W Wᵀ + s² I) and the exact posterior
p(z|x) = N(Σ Wᵀ(x − b)/s², Σ), Σ = (I + WᵀW/s²)⁻¹, is a diagonal Gaussian.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from course_code import objectives

D_X, D_Z, NOISE_STD = 6, 3, 0.7


class LinearGaussian:
    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D_X, D_Z, generator=g, dtype=torch.float64))
        self.W = q * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)  # orthogonal columns
        self.b = torch.randn(D_X, generator=g, dtype=torch.float64)

    def sample_x(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, D_Z, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + NOISE_STD * torch.randn(n, D_X, generator=g, dtype=torch.float64)

    def log_px(self, x):
        cov = self.W @ self.W.T + NOISE_STD**2 * torch.eye(D_X, dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x):
        precision = torch.eye(D_Z, dtype=torch.float64) + self.W.T @ self.W / NOISE_STD**2
        cov = torch.linalg.inv(precision)
        assert torch.allclose(cov, torch.diag(torch.diagonal(cov)))  # diagonal, so q can equal it
        mu = (x - self.b) @ self.W @ cov / NOISE_STD**2
        return mu, torch.diagonal(cov).log().expand_as(mu)

    def log_lik(self, x, z):
        return Normal(z @ self.W.T + self.b, NOISE_STD).log_prob(x).sum(-1)


@pytest.fixture(scope="module")
def model():
    return LinearGaussian()


@pytest.fixture(scope="module")
def x(model):
    return model.sample_x(8, seed=1)


def worse_q(model, x):
    """A diagonal Gaussian q that is not the posterior: shifted mean, doubled variance."""
    mu, logvar = model.posterior(x)
    return mu + 0.5, logvar + math.log(2.0)


def test_elbo_with_the_exact_posterior_equals_log_px(model, x):
    mu, logvar = model.posterior(x)
    # every importance weight p(x, z) / q(z|x) equals p(x): the sampled-KL ELBO is exact for any sample
    terms = objectives.elbo(model.log_lik, x, mu, logvar, n_samples=3, analytic_kl=False)
    torch.testing.assert_close(terms.elbo, model.log_px(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.elbo, terms.rec - terms.kl)
    # with the analytic KL only the reconstruction term is random: exact on average
    terms = objectives.elbo(model.log_lik, x, mu, logvar, n_samples=20_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms.elbo, model.log_px(x), rtol=0, atol=0.02)


def test_elbo_of_any_other_q_is_lower_by_kl_to_the_posterior(model, x):
    mu, logvar = worse_q(model, x)
    terms = objectives.elbo(model.log_lik, x, mu, logvar, n_samples=20_000, generator=torch.Generator().manual_seed(0))
    post_mu, post_logvar = model.posterior(x)
    kl_to_posterior = kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(post_mu, torch.exp(0.5 * post_logvar))
    ).sum(-1)
    assert (kl_to_posterior > 0.1).all()
    torch.testing.assert_close(model.log_px(x) - terms.elbo, kl_to_posterior, rtol=0, atol=0.03)


def test_analytic_and_sampled_kl_agree_in_expectation(model, x):
    mu, logvar = worse_q(model, x)
    runs = {
        analytic: objectives.elbo(
            model.log_lik, x, mu, logvar, n_samples=40_000, analytic_kl=analytic, generator=torch.Generator().manual_seed(1)
        )
        for analytic in (True, False)
    }
    assert runs[True].kl_per_dim.shape == mu.shape and runs[False].kl_per_dim is None
    torch.testing.assert_close(runs[True].elbo, runs[False].elbo, rtol=0, atol=0.05)
    torch.testing.assert_close(runs[True].kl, runs[False].kl, rtol=0, atol=0.05)


def test_iwae_increases_with_k_on_average_and_approaches_log_px(model):
    x = model.sample_x(300, seed=2)
    mu, logvar = model.posterior(x)
    mu, logvar = mu + 0.3, logvar + math.log(1.5)  # a q close to, but not at, the posterior
    g = torch.Generator().manual_seed(3)
    log_px = model.log_px(x)
    elbo_gap = log_px - objectives.elbo(model.log_lik, x, mu, logvar, n_samples=200, generator=g).elbo
    gap_1 = log_px - objectives.iwae_bound(model.log_lik, x, mu, logvar, 1, generator=g)
    # K = 1 is the ELBO in expectation
    assert abs(gap_1.mean() - elbo_gap.mean()) < 4 * (gap_1 - elbo_gap).std() / len(x) ** 0.5
    gaps = [elbo_gap.mean()]
    gaps += [(log_px - objectives.iwae_bound(model.log_lik, x, mu, logvar, k, generator=g)).mean() for k in (10, 100, 1000)]
    # ELBO ≤ IWAE(10) ≤ IWAE(100) ≤ IWAE(1000) ≈ log p(x): the average gap shrinks towards 0
    assert gaps[0] > 0.5 and gaps[0] > gaps[1] > gaps[2] > 0, gaps
    assert abs(gaps[3]) < 0.01, gaps


def test_iwae_with_the_exact_posterior_is_exact_for_every_k(model, x):
    mu, logvar = model.posterior(x)
    for k in (1, 7, 300):
        torch.testing.assert_close(objectives.iwae_bound(model.log_lik, x, mu, logvar, k), model.log_px(x), rtol=0, atol=1e-10)


def reference_iwae(log_lik, x, mu, logvar, k, seed):
    eps = torch.randn((k, *mu.shape), generator=torch.Generator().manual_seed(seed), dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    q = Normal(mu, torch.exp(0.5 * logvar))
    log_w = log_lik(x, z) + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
    return torch.logsumexp(log_w, 0) - math.log(k)


@pytest.mark.parametrize("chunk_size", [1000, 300, 7, 3])
def test_chunked_iwae_equals_the_unchunked_bound_with_the_same_random_numbers(model, chunk_size):
    # 4 datapoints × 4 latent dimensions: each chunk draws whole blocks of torch's normal sampler,
    # so the chunks concatenate to the same ε as one draw of all K samples
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(4, 4, generator=g, dtype=torch.float64)
    logvar = 0.3 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    W = torch.randn(5, 4, generator=g, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)

    def log_lik(x, z):
        return Normal(z @ W.T, 1.0).log_prob(x).sum(-1)

    expected = reference_iwae(log_lik, x, mu, logvar, 1000, seed=11)
    got = objectives.iwae_bound(
        log_lik, x, mu, logvar, 1000, chunk_size=chunk_size, generator=torch.Generator().manual_seed(11)
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_log_px_estimate_is_the_iwae_bound_without_gradients(model, x):
    mu, logvar = worse_q(model, x)
    mu = mu.clone().requires_grad_()
    estimate = objectives.log_px_estimate(model.log_lik, x, mu, logvar, 500, generator=torch.Generator().manual_seed(0))
    assert not estimate.requires_grad
    torch.testing.assert_close(estimate, reference_iwae(model.log_lik, x, mu.detach(), logvar, 500, seed=0))


# ---- the weighted loss: β and free bits ---------------------------------------------------------

@pytest.fixture
def terms():
    kl_per_dim = torch.tensor([[0.5, 0.5], [2.9, 0.1]], requires_grad=True)
    rec = torch.tensor([-10.0, -20.0])
    kl = kl_per_dim.sum(-1)
    return objectives.ElboTerms(rec - kl, rec, kl, kl_per_dim)


def test_weighted_loss_with_beta(terms):
    # batch means: rec = −15, KL = 2
    torch.testing.assert_close(objectives.weighted_loss(terms), torch.tensor(17.0))
    torch.testing.assert_close(objectives.weighted_loss(terms, beta=0.5), torch.tensor(16.0))
    torch.testing.assert_close(objectives.weighted_loss(terms, beta=0.0), torch.tensor(15.0))


def test_free_bits_clamp_the_batch_mean_kl_of_each_dimension(terms):
    # per-dimension batch means (1.7, 0.3): the second is raised to λ = 1 → KL term 2.7
    # (clamping each datapoint instead would give 1.95 + 1.0 = 2.95)
    loss = objectives.weighted_loss(terms, beta=1.0, free_bits=1.0)
    torch.testing.assert_close(loss, torch.tensor(17.7))
    loss.backward()
    # the clamped dimension gets no gradient: nothing pushes its KL below λ
    torch.testing.assert_close(terms.kl_per_dim.grad, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    torch.testing.assert_close(objectives.weighted_loss(terms, beta=2.0, free_bits=1.0), torch.tensor(15 + 2 * 2.7))


def test_weighted_loss_errors(terms):
    with pytest.raises(ValueError, match="non-negative"):
        objectives.weighted_loss(terms, beta=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        objectives.weighted_loss(terms, free_bits=-0.5)
    sampled = terms._replace(kl_per_dim=None)
    with pytest.raises(ValueError, match="per-dimension KL"):
        objectives.weighted_loss(sampled, free_bits=0.5)


@pytest.mark.parametrize("n_samples", [0, -3])
def test_fewer_than_one_sample_is_a_value_error(model, x, n_samples):
    mu, logvar = model.posterior(x)
    for bound in (objectives.elbo, objectives.iwae_bound):
        with pytest.raises(ValueError, match="n_samples must be at least 1"):
            bound(model.log_lik, x, mu, logvar, n_samples)


def test_mismatched_q_and_x_are_value_errors(model, x):
    mu, logvar = model.posterior(x)
    with pytest.raises(ValueError, match="logvar has shape"):
        objectives.elbo(model.log_lik, x, mu, logvar[:, :2])
    with pytest.raises(ValueError, match="batch shape"):
        objectives.elbo(model.log_lik, x[:3], mu, logvar)


def test_effective_sample_size():
    """(Σ w)²/Σ w² computed directly, unchanged by a common shift of the log-weights, and its two extremes."""
    log_w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = log_w.exp()
    assert torch.allclose(objectives.effective_sample_size(log_w), w.sum(0) ** 2 / (w**2).sum(0))
    assert torch.allclose(objectives.effective_sample_size(log_w - 1000.0), objectives.effective_sample_size(log_w))
    assert torch.allclose(objectives.effective_sample_size(torch.zeros(5, 2)), torch.full((2,), 5.0))
    assert torch.allclose(objectives.effective_sample_size(torch.tensor([[0.0], [-800.0]])), torch.ones(1))
    with pytest.raises(ValueError, match="log_w"):
        objectives.effective_sample_size(torch.zeros(5))

