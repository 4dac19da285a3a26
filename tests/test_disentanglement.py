"""The KL decomposition, the mutual information gap and β-TCVAE against independent answers (chapter 11)."""

import math

import pytest
import torch

from course_code import data, disentanglement, distributions


def test_sprites_hold_every_combination_of_factors_once():
    s = data.sprites()
    assert s.images.shape == (576, 256) and s.factor_sizes == (3, 3, 8, 8)
    assert len({tuple(f) for f in s.factors.tolist()}) == 576
    assert set(s.images.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(im) for im in s.images.tolist()}) == 576  # no two sprites look alike
    images = s.images.reshape(-1, 16, 16)
    # A larger scale covers more pixels, for every shape and position.
    area = images.sum((1, 2)).reshape(3, 3, 8, 8)
    assert (area[:, 1:] > area[:, :-1]).all()
    # Each step of x moves the shape's centre of mass to the right, 8 pixels in all (up to the pixel grid).
    cols = torch.arange(16.0) + 0.5
    centre_x = ((images.sum(1) * cols).sum(-1) / images.sum((1, 2))).reshape(3, 3, 8, 8)
    assert (centre_x.diff(dim=2) > 0).all()
    torch.testing.assert_close(centre_x[:, :, -1] - centre_x[:, :, 0], torch.full((3, 3, 8), 8.0), atol=1.0, rtol=0)


def test_sprites_refuse_shapes_that_leave_the_frame():
    with pytest.raises(ValueError, match=r"scales must be .* in \(0, 8\]"):
        data.sprites(scales=(4.0, 10.0))


def _posteriors(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 0.3 - 1.0


def test_the_three_parts_sum_to_the_mean_kl_at_the_same_samples():
    mu, logvar = _posteriors()
    parts = disentanglement.kl_decomposition(mu, logvar, n_samples=5, generator=torch.Generator().manual_seed(1))
    total = parts["mutual_information"] + parts["total_correlation"] + parts["dimension_kl"]
    torch.testing.assert_close(total, parts["mean_kl"], atol=1e-10, rtol=0)


def test_the_mean_kl_estimate_agrees_with_the_closed_form():
    mu, logvar = _posteriors()
    parts = disentanglement.kl_decomposition(mu, logvar, n_samples=4000, generator=torch.Generator().manual_seed(2))
    exact = distributions.kl_standard_normal(mu, logvar).mean()
    assert abs(parts["mean_kl"] - exact) < 0.03


def test_total_correlation_against_quadrature_in_two_dimensions():
    """TC of a 2-D mixture of Gaussians, by a fine grid: ∫ q(z) log q(z) / (q(z1) q(z2)) dz."""
    mu, logvar = _posteriors(n=6, d=2, seed=3)
    grid = torch.linspace(-7, 7, 701)
    dz = (grid[1] - grid[0]).item()
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)
    log_q_n = distributions.log_normal(points[:, None, :], mu[None], logvar[None])  # (G², N)
    log_q = torch.logsumexp(log_q_n, 1) - math.log(len(mu))
    per_dim = [
        torch.logsumexp(distributions.log_normal(grid[:, None, None], mu[None, :, j : j + 1], logvar[None, :, j : j + 1]), 1)
        - math.log(len(mu))
        for j in range(2)
    ]
    log_prod = (per_dim[0][:, None] + per_dim[1][None, :]).reshape(-1)
    tc = (log_q.exp() * (log_q - log_prod)).sum() * dz * dz
    parts = disentanglement.kl_decomposition(mu, logvar, n_samples=20000, generator=torch.Generator().manual_seed(4))
    assert abs(parts["total_correlation"] - tc) < 0.02, (parts["total_correlation"], tc)


def test_independent_posteriors_have_no_total_correlation():
    """Posteriors on a product grid of means with a shared variance: q(z) factorizes, so TC = 0."""
    levels = torch.linspace(-2, 2, 5)
    a, b = torch.meshgrid(levels, levels, indexing="ij")
    mu = torch.stack([a.reshape(-1), b.reshape(-1)], -1)
    logvar = torch.full_like(mu, -3.0)
    parts = disentanglement.kl_decomposition(mu, logvar, n_samples=400, generator=torch.Generator().manual_seed(5))
    assert abs(parts["total_correlation"]) < 0.01


def test_discrete_mutual_information_against_hand_counts():
    a = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(disentanglement.discrete_mutual_information(a, a), torch.tensor(math.log(2)))
    b = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(disentanglement.discrete_mutual_information(a, b), torch.tensor(0.0))
    with pytest.raises(TypeError, match="discretize it first"):
        disentanglement.discrete_mutual_information(a.double(), b)


def _factors():
    return data.sprites().factors


def test_a_perfectly_disentangled_code_has_mig_one():
    factors = _factors()
    latents = factors.to(torch.get_default_dtype()) * torch.tensor([1.0, -2.0, 0.5, 3.0])  # one dimension per factor
    result = disentanglement.mig(latents, factors)
    torch.testing.assert_close(result["gaps"], torch.ones(4))
    torch.testing.assert_close(result["mig"], torch.tensor(1.0))


def test_an_entangled_or_duplicated_code_has_a_small_mig():
    factors = _factors().to(torch.get_default_dtype())
    x, y = factors[:, 2], factors[:, 3]
    duplicated = torch.stack([x, x, y, y], -1)  # every factor carried twice: no gap at all
    assert disentanglement.mig(duplicated, _factors())["gaps"][2:].abs().max() < 1e-12
    rotated = torch.stack([x + y, x - y], -1)  # x and y mixed in both dimensions
    gaps = disentanglement.mig(rotated, _factors())["gaps"]
    assert gaps[2] < 0.1 and gaps[3] < 0.1


def test_mig_needs_two_latent_dimensions():
    with pytest.raises(ValueError, match="at least two latent dimensions"):
        disentanglement.mig(torch.zeros(576, 1), _factors())


def test_tcvae_with_weight_one_is_an_elbo_estimate_and_its_parts_add_up():
    torch.manual_seed(0)
    s = data.sprites()
    model = disentanglement.TCVAE(x_dim=256, z_dim=3, hidden=(16,), dataset_size=len(s.images))
    torch.manual_seed(1)
    loss, stats = model.loss(s.images[:64], beta=1.0)
    assert stats["elbo"] == pytest.approx(-loss.item())
    assert stats["elbo"] == pytest.approx(stats["rec"] - stats["kl"])
    torch.manual_seed(1)
    heavier, _ = model.loss(s.images[:64], beta=6.0)
    assert heavier.item() == pytest.approx(loss.item() + 5.0 * stats["tc"])
