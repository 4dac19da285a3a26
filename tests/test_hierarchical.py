"""The two-layer VAE against independent answers: hand computations, torch.distributions, closed-form marginals."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from course_code import hierarchical, models, objectives, training
from course_code.hierarchical import HierarchicalVAE

INFERENCE = ("top-down", "bottom-up")


def binary_batch(n=6, x_dim=10, seed=0):
    return torch.bernoulli(torch.full((n, x_dim), 0.4), generator=torch.Generator().manual_seed(seed))


def model(inference, seed=0, **kwargs):
    torch.manual_seed(seed)
    return HierarchicalVAE(**{"x_dim": 10, "z_dims": (3, 2), "hidden": (16,), "inference": inference, **kwargs})


def normal(mu, logvar):
    return Normal(mu, torch.exp(0.5 * logvar))


def test_precision_weighting_by_hand():
    # N(1, 1)·N(3, 3): precision 1 + 1/3 = 4/3, variance 3/4, mean 3/4 · (1/1 + 3/3) = 3/2
    mu, logvar = hierarchical.precision_weighted(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([math.log(3.0)]))
    assert mu.item() == pytest.approx(1.5, abs=1e-12)
    assert logvar.exp().item() == pytest.approx(0.75, abs=1e-12)


def test_precision_weighting_is_the_normalized_product_of_densities():
    grid = torch.linspace(-15, 15, 200_001)
    for mu_hat, var_hat, mu_p, var_p in ((0.3, 0.5, -1.0, 2.0), (2.0, 4.0, 1.0, 0.1)):
        product = normal(torch.tensor(mu_hat), torch.tensor(math.log(var_hat))).log_prob(grid).exp()
        product = product * normal(torch.tensor(mu_p), torch.tensor(math.log(var_p))).log_prob(grid).exp()
        weights = product / torch.trapezoid(product, grid)
        mean = torch.trapezoid(grid * weights, grid)
        var = torch.trapezoid((grid - mean) ** 2 * weights, grid)
        mu, logvar = hierarchical.precision_weighted(*(torch.tensor(v) for v in (mu_hat, math.log(var_hat), mu_p, math.log(var_p))))
        assert mu.item() == pytest.approx(mean.item(), abs=1e-7)
        assert logvar.exp().item() == pytest.approx(var.item(), abs=1e-7)


def test_top_down_posterior_combines_the_data_term_with_the_prior_by_precision():
    m, x = model("top-down"), binary_batch()
    layers = m.infer(x, 4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        mu_hat, logvar_hat = m.encoder1(x)  # the data term of z1
        mu_p, logvar_p = m.prior1(layers.z2)  # p(z1|z2) at the drawn z2
        precision = torch.exp(-logvar_hat) + torch.exp(-logvar_p)
        var = 1 / precision
        mean = var * (mu_hat / torch.exp(logvar_hat) + mu_p / torch.exp(logvar_p))
        mu2, logvar2 = m.encoder2(m.encoder1.body(x))  # q(z2|x) from the shared pass upwards
    torch.testing.assert_close(layers.q1[0], mean)
    torch.testing.assert_close(layers.q1[1].exp(), var)
    torch.testing.assert_close(layers.q2[0], mu2)
    torch.testing.assert_close(layers.q2[1], logvar2)


@pytest.mark.parametrize("inference", INFERENCE)
def test_sampled_layer_kls_sum_to_the_joint_kl_of_the_same_draws(inference):
    m, x = model(inference), binary_batch()
    terms = m.elbo(x, 7, analytic_kl=False, generator=torch.Generator().manual_seed(3))
    layers = m.infer(x, 7, torch.Generator().manual_seed(3))
    with torch.no_grad():
        log_q = normal(*layers.q1).log_prob(layers.z1).sum(-1) + normal(*layers.q2).log_prob(layers.z2).sum(-1)
        mu_p, logvar_p = m.prior1(layers.z2)
        log_p = normal(mu_p, logvar_p).log_prob(layers.z1).sum(-1) + Normal(0.0, 1.0).log_prob(layers.z2).sum(-1)
        rec = torch.distributions.Bernoulli(logits=m.decoder(layers.z1)).log_prob(x).sum(-1)
    torch.testing.assert_close(terms.kl_per_dim.sum(-1), (log_q - log_p).mean(0))
    torch.testing.assert_close(terms.kl, terms.kl_per_dim.sum(-1))
    torch.testing.assert_close(terms.elbo, (rec - log_q + log_p).mean(0))


@pytest.mark.parametrize("inference", INFERENCE)
def test_analytic_layer_kls_agree_with_the_sampled_total_in_expectation(inference):
    m, x = model(inference), binary_batch(3)
    with torch.no_grad():
        analytic = m.elbo(x, 20_000, generator=torch.Generator().manual_seed(4)).kl_per_dim
        layers = m.infer(x, 20_000, torch.Generator().manual_seed(5))
        log_ratio = (normal(*layers.q1).log_prob(layers.z1) - normal(*layers.p1).log_prob(layers.z1)).sum(-1)
        log_ratio += (normal(*layers.q2).log_prob(layers.z2) - Normal(0.0, 1.0).log_prob(layers.z2)).sum(-1)
    error = log_ratio.std(0) / math.sqrt(20_000)
    # the analytic version is itself averaged over 20,000 draws of what it is conditioned on
    assert ((analytic.sum(-1) - log_ratio.mean(0)).abs() < 5 * error + 1e-3).all()
    assert (analytic >= 0).all() or inference == "bottom-up"


def degenerate_upper_layer(m):
    """p(z1|z2) = N(0, I) and q(z2|·) = N(0, I): the upper layer carries nothing."""
    with torch.no_grad():
        for head in (m.prior1.head, m.encoder2.head):
            head.weight.zero_()
            head.bias.zero_()
    return m


def test_bottom_up_with_a_degenerate_upper_layer_is_the_one_layer_vae():
    m, x = degenerate_upper_layer(model("bottom-up")), binary_batch()
    vae = models.VAE(x_dim=10, z_dim=3, hidden=(16,))
    vae.encoder.load_state_dict(m.encoder1.state_dict())
    vae.decoder.load_state_dict(m.decoder.state_dict())
    torch.manual_seed(7)
    two = m.elbo(x, 5, analytic_kl=False)
    torch.manual_seed(7)
    one = vae.elbo(x, 5, analytic_kl=False)
    torch.testing.assert_close(two.kl_per_dim[:, 1], torch.zeros(len(x)))
    torch.testing.assert_close(two.elbo, one.elbo)
    torch.testing.assert_close(two.rec, one.rec)
    log_px_two = m.log_px(x, 200, generator=torch.Generator().manual_seed(8))
    log_px_one = vae.log_px(x, 200, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(log_px_two, log_px_one)


def test_top_down_with_a_degenerate_upper_layer_is_the_one_layer_elbo():
    m, x = degenerate_upper_layer(model("top-down")), binary_batch()
    with torch.no_grad():
        mu_hat, logvar_hat = m.encoder1(x)
        # combined with p(z1) = N(0, 1): precision 1/σ̂² + 1
        var = 1 / (torch.exp(-logvar_hat) + 1)
        mu = var * mu_hat / torch.exp(logvar_hat)
        one = objectives.elbo(m.decoder.log_likelihood, x, mu, var.log(), 5, generator=torch.Generator().manual_seed(9))
        two = m.elbo(x, 5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(two.kl_per_dim[:, 1], torch.zeros(len(x)))
    torch.testing.assert_close(two.elbo, one.elbo)
    torch.testing.assert_close(two.kl, one.kl)


def linear_model(inference, seed=0):
    """A random linear-Gaussian two-layer model whose inference network was fitted to its own samples."""
    torch.manual_seed(seed)
    m = HierarchicalVAE(x_dim=3, z_dims=(2, 1), hidden=(), likelihood="gaussian", inference=inference, decoder_logvar=math.log(0.3))
    with torch.no_grad():
        m.prior1.head.weight[2:] = 0.0  # Var(z1|z2) constant: a linear-Gaussian model
        m.prior1.head.weight[:2] *= 3.0
    m.prior1.requires_grad_(False)
    m.decoder.requires_grad_(False)
    mean, cov = hierarchical.linear_marginal(**hierarchical.linear_parts(m))
    x = MultivariateNormal(mean, cov).sample((200,))
    training.fit(m, x, epochs=60, batch_size=50, lr=1e-2, seed=seed, progress=False)  # q only: p stays as drawn
    return m


def test_linear_marginal_against_sampling():
    g = torch.Generator().manual_seed(10)
    A, a, W, b = torch.randn(2, 1, generator=g), torch.randn(2, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, generator=g)
    var1, var_x = torch.tensor([0.5, 2.0]), torch.tensor([0.1, 0.2, 0.3])
    mean, cov = hierarchical.linear_marginal(A, a, var1, W, b, var_x)
    z2 = torch.randn(400_000, 1, generator=g)
    z1 = z2 @ A.T + a + var1.sqrt() * torch.randn(400_000, 2, generator=g)
    x = z1 @ W.T + b + var_x.sqrt() * torch.randn(400_000, 3, generator=g)
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("inference", INFERENCE)
def test_log_px_by_importance_sampling_matches_the_exact_marginal(inference):
    m = linear_model(inference)
    mean, cov = hierarchical.linear_marginal(**hierarchical.linear_parts(m))
    x = MultivariateNormal(mean, cov).sample((4,)).detach()
    exact = MultivariateNormal(mean.detach(), cov.detach()).log_prob(x)
    estimate = m.log_px(x, 50_000, generator=torch.Generator().manual_seed(11))
    elbo = m.elbo(x, 5000, generator=torch.Generator().manual_seed(12)).elbo
    assert (elbo < exact).all()  # the bound is below, the estimate near, log p(x)
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0)


def test_linear_parts_refuses_a_nonlinear_model():
    with pytest.raises(ValueError, match="not linear-Gaussian"):
        hierarchical.linear_parts(model("top-down"))


def test_free_bits_are_per_layer_and_beta_weights_both_layers():
    m, x = model("top-down"), binary_batch()
    torch.manual_seed(13)
    loss, stats = m.loss(x, beta=0.5, free_bits=1.0)
    torch.manual_seed(13)
    terms = m.elbo(x)
    kl = terms.kl_per_dim.mean(0)
    expected = -(terms.rec.mean() - 0.5 * kl.clamp(min=1.0).sum())
    torch.testing.assert_close(loss, expected)
    assert stats["kl1"] + stats["kl2"] == pytest.approx(stats["kl"])
    assert stats["elbo"] == pytest.approx(stats["rec"] - stats["kl"])


@pytest.mark.parametrize("inference", INFERENCE)
def test_fit_with_warm_up_and_free_bits_then_save_and_load(inference, tmp_path):
    m, x = model(inference), binary_batch(40)
    history = training.fit(m, x, epochs=3, batch_size=10, beta=training.linear_warmup(8), free_bits=0.1, seed=0, progress=False)
    assert history["kl_weight"][0] < history["kl_weight"][-1] <= 1.0
    assert {"kl1", "kl2"} <= set(history)
    loaded = training.load(training.save(m, tmp_path / "h.pt"))
    assert isinstance(loaded, HierarchicalVAE) and loaded.config == m.config
    a = m.elbo(x, 3, generator=torch.Generator().manual_seed(14)).elbo
    b = loaded.elbo(x, 3, generator=torch.Generator().manual_seed(14)).elbo
    torch.testing.assert_close(a, b)


def test_posterior_means_and_samples_have_the_layer_shapes():
    m, x = model("bottom-up"), binary_batch()
    m1, m2 = m.posterior_means(x, 10)
    assert m1.shape == (6, 3) and m2.shape == (6, 2)
    images = m.sample(5, torch.Generator().manual_seed(0))
    assert images.shape == (5, 10) and ((images >= 0) & (images <= 1)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z_dims": (3,)}, "z_dims"),
        ({"z_dims": (3, 0)}, "z_dims"),
        ({"inference": "sideways"}, "inference"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"decoder_logvar": 0.0}, "decoder_logvar"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        HierarchicalVAE(**kwargs)


def test_bad_input_is_named():
    m = model("top-down")
    with pytest.raises(ValueError, match="features"):
        m.elbo(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="n_samples"):
        m.elbo(binary_batch(), 0)
