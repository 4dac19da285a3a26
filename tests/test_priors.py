"""course_code.priors: densities against torch.distributions, the sampled KL against quadrature, the VampPrior's wiring, save/load."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from course_code import diagnostics, distributions, models, priors, tractable, training


def torch_mixture(mu, logvar, logits):
    """The same mixture, built from torch.distributions: the independent answer."""
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mu, (0.5 * logvar).exp()), 1))


def mixture_prior(z_dim=3, k=4, seed=0):
    torch.manual_seed(seed)
    prior = priors.MixturePrior(z_dim, k)
    with torch.no_grad():  # move away from the initial equal weights and unit variances
        prior.logvar.copy_(torch.randn(k, z_dim))
        prior.logits.copy_(torch.randn(k))
    return prior


def vamp_vae(x_dim=6, z_dim=2, k=5, seed=0):
    torch.manual_seed(seed)
    return models.VAE(x_dim=x_dim, z_dim=z_dim, hidden=(7,), prior=priors.VampPrior(x_dim, k))


@pytest.mark.parametrize("shape", [(5,), (4, 5)])
def test_mixture_log_prob_matches_torch_mixture_same_family(shape):
    prior = mixture_prior()
    z = 2 * torch.randn(*shape, 3, generator=torch.Generator().manual_seed(1))
    expected = torch_mixture(prior.mu, prior.logvar, prior.logits).log_prob(z)
    torch.testing.assert_close(prior.log_prob(z), expected)
    assert prior.log_prob(z).shape == shape


def test_log_mixture_normal_with_one_component_is_the_gaussian():
    g = torch.Generator().manual_seed(2)
    mu, logvar, z = torch.randn(1, 3, generator=g), torch.randn(1, 3, generator=g), torch.randn(6, 3, generator=g)
    torch.testing.assert_close(distributions.log_mixture_normal(z, mu, logvar, torch.zeros(1)),
                               Normal(mu[0], (0.5 * logvar[0]).exp()).log_prob(z).sum(-1))


def test_mixture_samples_have_the_mixtures_mean_and_variance():
    prior = mixture_prior(z_dim=2, k=3)
    n = 200_000
    z = prior.sample(n, torch.Generator().manual_seed(3))
    exact = torch_mixture(prior.mu, prior.logvar, prior.logits)
    se_mean = (exact.variance / n).sqrt()
    assert ((z.mean(0) - exact.mean).abs() < 4 * se_mean).all()
    assert ((z.var(0) / exact.variance - 1).abs() < 0.02).all()  # the variance's relative standard error is ≈ 0.005 here


def test_vamp_prior_density_is_the_average_of_the_encoders_gaussians_at_the_pseudo_inputs():
    vae = vamp_vae()
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        by_hand = []
        for u in vae.prior.pseudo_inputs:  # one component at a time, through the VAE's own encoder
            mu, logvar = vae.encode(u[None])
            by_hand.append(Normal(mu[0], (0.5 * logvar[0]).exp()).log_prob(z).sum(-1).exp())
        expected = torch.stack(by_hand).mean(0).log()
        torch.testing.assert_close(vae.log_prior(z), expected)


def test_vamp_prior_reaches_the_encoder_without_registering_it_twice():
    vae = vamp_vae()
    assert [name for name, _ in vae.named_modules() if name.startswith("prior")] == ["prior"]
    assert [key for key in vae.state_dict() if key.startswith("prior.")] == ["prior.pseudo_inputs"]
    assert sum(p.numel() for p in vae.parameters()) == sum(p.numel() for p in vae.encoder.parameters()) + \
        sum(p.numel() for p in vae.decoder.parameters()) + vae.prior.pseudo_inputs.numel()
    vae.log_prior(torch.randn(3, 2)).sum().backward()  # the prior's gradient reaches both
    assert vae.prior.pseudo_inputs.grad.abs().sum() > 0
    assert vae.encoder.head.weight.grad.abs().sum() > 0


def test_vamp_prior_samples_follow_its_density():
    vae = vamp_vae(k=2)
    n = 100_000
    z = vae.prior.sample(n, torch.Generator().manual_seed(5))
    with torch.no_grad():
        mu, logvar, _ = vae.prior.components()
        exact = torch_mixture(mu, logvar, torch.zeros(2))
        assert ((z.mean(0) - exact.mean).abs() < 4 * (exact.variance / n).sqrt()).all()


def test_the_sampled_kl_to_a_mixture_prior_is_unbiased():
    """E_q[log q(z|x) − log p(z)] by Monte Carlo against the same KL by quadrature (1-D latent), within 4 standard errors."""
    torch.manual_seed(6)
    vae = models.VAE(x_dim=5, z_dim=1, hidden=(6,), prior=mixture_prior(z_dim=1, k=3, seed=6))
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(7)).round()
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        z_grid = torch.linspace(-15, 15, 30001)[:, None, None]  # (G, 1, 1) against the batch's (B, 1)
        log_q_grid = Normal(mu, (0.5 * logvar).exp()).log_prob(z_grid).sum(-1)  # (G, B)
        log_p_grid = torch_mixture(vae.prior.mu, vae.prior.logvar, vae.prior.logits).log_prob(z_grid[:, 0])[:, None]  # (G, 1)
        exact = (log_q_grid.exp() * (log_q_grid - log_p_grid)).sum(0) * (z_grid[1] - z_grid[0]).squeeze()
        n = 20_000
        z, log_q = vae.posterior_sample(x, n, torch.Generator().manual_seed(8))
        samples = log_q - vae.log_prior(z)  # (n, B): one KL estimate per draw
        se = samples.std(0) / math.sqrt(n)
        assert ((samples.mean(0) - exact).abs() < 4 * se).all()
        torch.manual_seed(9)  # the model's own KL term uses the same estimator
        terms = vae(x, n_samples=n)
        torch.manual_seed(9)
        z, log_q = vae.posterior_sample(x, n)
        torch.testing.assert_close(terms.kl, (log_q - vae.log_prior(z)).mean(0))


def test_aggregate_kl_against_a_mixture_prior_is_unbiased():
    """diagnostics.aggregate_kl with a prior's log-density, repeated, against quadrature of the 1-D mixtures."""
    g = torch.Generator().manual_seed(10)
    mu, logvar = 2 * torch.randn(30, 1, generator=g), torch.randn(30, 1, generator=g) - 1
    prior = mixture_prior(z_dim=1, k=3, seed=11)
    with torch.no_grad():
        z = torch.linspace(-20, 20, 40001)[:, None]
        log_q = torch.logsumexp(Normal(mu[:, 0], (0.5 * logvar[:, 0]).exp()).log_prob(z), dim=1) - math.log(30)
        log_p = torch_mixture(prior.mu, prior.logvar, prior.logits).log_prob(z)
        exact = (log_q.exp() * (log_q - log_p)).sum() * (z[1, 0] - z[0, 0])
        estimates = torch.stack([diagnostics.aggregate_kl(mu, logvar, 50, torch.Generator().manual_seed(s), prior.log_prob)
                                 for s in range(200)])
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 0  # the bound is a real one: the estimates do vary


def test_aggregate_kl_on_grid_is_the_closed_form_kl_for_one_gaussian():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 0.3]])  # q(z) = one Gaussian, p = N(0, I)
    axis = torch.linspace(-8, 8, 401)
    grid = torch.cartesian_prod(axis, axis)
    kl = diagnostics.aggregate_kl_on_grid(mu, logvar, grid, distributions.log_standard_normal(grid))
    torch.testing.assert_close(kl, distributions.kl_standard_normal(mu, logvar)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one per point"):
        diagnostics.aggregate_kl_on_grid(mu, logvar, grid, torch.zeros(3))


def test_kl_on_grid_is_the_kl_between_the_normalized_grid_distributions():
    g = torch.Generator().manual_seed(21)
    log_q, log_p = 2 * torch.randn(50, generator=g), 2 * torch.randn(50, generator=g)
    expected = torch.distributions.kl_divergence(Categorical(logits=log_q), Categorical(logits=log_p))
    torch.testing.assert_close(diagnostics.kl_on_grid(log_q + 3.0, log_p - 1.0), expected)  # constants do not matter
    assert diagnostics.kl_on_grid(log_p, log_p).abs() < 1e-12
    with pytest.raises(ValueError, match="same points"):
        diagnostics.kl_on_grid(log_q, log_p[:10])


def test_bernoulli_log_lik_table_matches_the_decoder_pixel_by_pixel():
    g = torch.Generator().manual_seed(12)
    logits, x = 3 * torch.randn(7, 5, generator=g), torch.rand(4, 5, generator=g)
    expected = distributions.log_bernoulli(x[None], logits[:, None])  # (7, 4) by broadcasting
    torch.testing.assert_close(tractable.bernoulli_log_lik_table(logits, x), expected)


@pytest.mark.parametrize("make", [lambda: priors.StandardNormal(2), lambda: mixture_prior(2, 3), lambda: priors.VampPrior(6, 4)])
def test_a_vae_with_each_prior_saves_and_loads(make, tmp_path):
    torch.manual_seed(13)
    vae = models.VAE(x_dim=6, z_dim=2, hidden=(7,), prior=make())
    with torch.no_grad():
        for p in vae.prior.parameters():
            p.add_(0.3)  # not the values a fresh build would give
    loaded = training.load(training.save(vae, tmp_path / "vae.pt"))
    assert type(loaded.prior) is type(vae.prior) and loaded.config == vae.config
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(14))
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(15)).round()
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prior(z), vae.log_prior(z))
        torch.testing.assert_close(loaded.log_px(x, 50, 50, torch.Generator().manual_seed(16)),
                                   vae.log_px(x, 50, 50, torch.Generator().manual_seed(16)))
    if isinstance(loaded.prior, priors.VampPrior):
        assert loaded.prior._encoder[0] is loaded.encoder


def test_the_standard_normal_prior_gives_the_built_in_models_numbers():
    torch.manual_seed(17)
    plain = models.VAE(x_dim=6, z_dim=2, hidden=(7,))
    plugged = models.VAE(x_dim=6, z_dim=2, hidden=(7,), prior=priors.StandardNormal(2))
    plugged.load_state_dict(plain.state_dict())
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(18)).round()
    torch.testing.assert_close(plugged.log_px(x, 200, 100, torch.Generator().manual_seed(19)),
                               plain.log_px(x, 200, 100, torch.Generator().manual_seed(19)))


def test_priors_follow_the_models_dtype():
    for prior in (priors.StandardNormal(2), priors.MixturePrior(2, 3)):
        vae = models.VAE(x_dim=6, z_dim=2, hidden=(7,), prior=prior).to(torch.float32)
        assert vae.prior.sample(4).dtype == torch.float32
        assert vae.sample(4).dtype == torch.float32
    vae = vamp_vae().to(torch.float32)
    assert vae.prior.sample(4).dtype == torch.float32


def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="VampPrior\\(x_dim=vae.x_dim"):
        models.VAE(x_dim=6, z_dim=2, prior=priors.VampPrior(5, 3))
    with pytest.raises(RuntimeError, match="plug it into a VAE"):
        priors.VampPrior(6, 3).log_prob(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="n_components must be at least 1"):
        priors.MixturePrior(2, 0)
    with pytest.raises(ValueError, match="same K components"):
        distributions.log_mixture_normal(torch.zeros(2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="latent axis of size d = 2"):
        priors.MixturePrior(2, 3).log_prob(torch.zeros(4, 3))
    with pytest.raises(TypeError, match="log_prior must be a function"):
        diagnostics.aggregate_kl(torch.zeros(2, 1), torch.zeros(2, 1), log_prior=3.0)
