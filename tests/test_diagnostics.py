"""Diagnostics on encoders built to have a known answer, and ELBO surgery against quadrature."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from course_code import diagnostics


def test_an_encoder_that_ignores_x_has_no_active_units_and_no_information():
    mu, logvar = torch.zeros(500, 4), torch.zeros(500, 4)  # q(z|x) = p(z) for every x
    assert diagnostics.active_units(mu) == 0
    mi = diagnostics.mutual_information(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert abs(mi.item()) < 1e-5  # both log-densities are taken at the same z
    assert abs(diagnostics.aggregate_kl(mu, logvar, 4, torch.Generator().manual_seed(0)).item()) < 1e-5


def test_an_encoder_that_copies_an_informative_code_is_fully_active():
    g = torch.Generator().manual_seed(1)
    code = torch.randn(400, 3, generator=g)  # distinct codes, nearly deterministic posteriors
    logvar = torch.full((400, 3), -12.0)
    assert diagnostics.active_units(code) == 3
    mi = diagnostics.mutual_information(code, logvar, generator=g)
    # Well-separated, near-deterministic posteriors identify the datapoint: I = log N.
    assert mi.item() == pytest.approx(math.log(400), abs=1e-3)


def test_active_units_counts_dimensions_above_the_threshold():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(1000, 3, generator=g) * torch.tensor([1.0, 0.05, 0.2])  # variances 1, 0.0025, 0.04
    torch.testing.assert_close(diagnostics.unit_variances(mu), torch.tensor([1.0, 0.0025, 0.04]), rtol=0.15, atol=0)
    assert diagnostics.active_units(mu) == 2
    assert diagnostics.active_units(mu, threshold=0.1) == 1
    with pytest.raises(ValueError, match="N ≥ 2"):
        diagnostics.active_units(torch.zeros(1, 3))


def test_kl_per_dim_is_the_average_kl_of_each_dimension():
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(diagnostics.kl_per_dim(mu, logvar), expected)


def test_elbo_surgery_identity_on_a_grid():
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(40, 1, generator=g, dtype=torch.float64)
    logvar = torch.randn(40, 1, generator=g, dtype=torch.float64) - 1.0
    terms = diagnostics.surgery_on_grid(mu, logvar)
    # E[KL] in closed form = I_q(x; z) + KL(q(z) ‖ p(z)), the last two integrated numerically.
    torch.testing.assert_close(terms["mean_kl"], terms["mutual_information"] + terms["aggregate_kl"], rtol=0, atol=1e-8)
    assert 0 < terms["mutual_information"] < math.log(40)
    assert terms["aggregate_kl"] > 0


def test_monte_carlo_estimators_agree_with_quadrature():
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(200, 1, generator=g, dtype=torch.float64)
    logvar = torch.full((200, 1), -1.0, dtype=torch.float64)
    terms = diagnostics.surgery_on_grid(mu, logvar)
    mi = torch.stack([diagnostics.mutual_information(mu, logvar, generator=g) for _ in range(50)]).mean()
    agg = diagnostics.aggregate_kl(mu, logvar, n_samples=200, generator=g)
    assert mi.item() == pytest.approx(terms["mutual_information"].item(), abs=0.02)
    assert agg.item() == pytest.approx(terms["aggregate_kl"].item(), abs=0.01)
    many = diagnostics.mutual_information(mu, logvar, generator=g, n_samples=50)
    assert many.item() == pytest.approx(terms["mutual_information"].item(), abs=0.02)


def test_more_draws_per_datapoint_make_the_mutual_information_less_noisy():
    g = torch.Generator().manual_seed(6)
    mu, logvar = torch.randn(100, 8, generator=g, dtype=torch.float64), torch.full((100, 8), -1.0, dtype=torch.float64)
    one = torch.stack([diagnostics.mutual_information(mu, logvar, g) for _ in range(40)])
    twenty = torch.stack([diagnostics.mutual_information(mu, logvar, g, n_samples=20) for _ in range(40)])
    assert twenty.std() < 0.4 * one.std()  # about 1/√20 ≈ 0.22 of it
    assert twenty.mean().item() == pytest.approx(one.mean().item(), abs=4 * one.std().item() / 40**0.5)
    mean_kl = diagnostics.kl_per_dim(mu, logvar).sum()
    assert twenty.max() <= mean_kl  # I_q ≤ E[KL] on the same data


def test_surgery_on_grid_needs_a_one_dimensional_latent():
    with pytest.raises(ValueError, match="1-D latent"):
        diagnostics.surgery_on_grid(torch.zeros(5, 2), torch.zeros(5, 2))


def test_the_aggregate_density_matches_the_mixture_written_out():
    g = torch.Generator().manual_seed(7)
    mu, logvar = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(30, 3, generator=g, dtype=torch.float64)
    z = 2 * torch.randn(11, 3, generator=g, dtype=torch.float64)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(30, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), 1),
    )
    torch.testing.assert_close(diagnostics._log_aggregate(z, mu, logvar), mixture.log_prob(z))
