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


def test_information_gaps_by_hand():
    information = torch.tensor([[0.9, 0.1], [0.3, 0.2], [0.0, 0.6]])  # d = 3 latent dimensions, K = 2 factors
    entropy = torch.tensor([1.2, 0.8])
    torch.testing.assert_close(disentanglement.information_gaps(information, entropy), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="entropy"):
        disentanglement.information_gaps(information, torch.ones(3))


def test_gaussian_total_correlation_in_two_dimensions_is_the_mutual_information():
    """For d = 2 the TC is I(z1; z2) = −½ log(1 − ρ²), whatever the two variances."""
    rho, s1, s2 = 0.6, 2.0, 0.5
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]])
    torch.testing.assert_close(disentanglement.gaussian_total_correlation(cov), torch.tensor(-0.5 * math.log(1 - rho**2)))


def test_gaussian_total_correlation_against_monte_carlo():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(4, 4, generator=g)
    cov = a @ a.T + 0.5 * torch.eye(4)
    joint = torch.distributions.MultivariateNormal(torch.zeros(4), cov)
    marginals = torch.distributions.Normal(torch.zeros(4), cov.diagonal().sqrt())
    torch.manual_seed(8)
    z = joint.sample((200_000,))
    estimate = (joint.log_prob(z) - marginals.log_prob(z).sum(-1)).mean()
    assert abs(disentanglement.gaussian_total_correlation(cov) - estimate) < 0.01
    batch = torch.stack([cov, torch.diag(cov.diagonal())])  # a diagonal covariance has no total correlation
    assert disentanglement.gaussian_total_correlation(batch)[1].abs() < 1e-12


def test_the_minibatch_estimate_is_exact_for_the_whole_dataset():
    mu, logvar = _posteriors(n=30, d=3, seed=9)
    z = distributions.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(10))
    log_q, log_q_dims = disentanglement.minibatch_log_aggregate(z, mu, logvar, dataset_size=30)
    from course_code.diagnostics import _log_aggregate

    torch.testing.assert_close(log_q, _log_aggregate(z, mu, logvar))
    torch.testing.assert_close(log_q_dims[:, 1], _log_aggregate(z[:, 1:2], mu[:, 1:2], logvar[:, 1:2]))


def test_the_minibatch_estimate_of_q_is_unbiased_over_every_batch():
    """N = 6 datapoints, batches of M = 3 holding datapoint 0: the estimates of q(z_0), averaged over
    every choice of the two other members, equal (1/N) Σ_n q(z_0|x_n)."""
    import itertools

    mu, logvar = _posteriors(n=6, d=2, seed=11)
    z0 = torch.tensor([0.3, -0.4])
    exact = distributions.log_normal(z0, mu, logvar).exp().mean()
    estimates = []
    for others in itertools.combinations(range(1, 6), 2):
        idx = torch.tensor([0, *others])
        z = torch.stack([z0, z0, z0])  # only row 0's estimate is used
        log_q, _ = disentanglement.minibatch_log_aggregate(z, mu[idx], logvar[idx], dataset_size=6)
        estimates.append(log_q[0].exp())
    torch.testing.assert_close(torch.stack(estimates).mean(), exact)


def test_the_tcvae_total_correlation_is_close_to_the_whole_data_decomposition():
    """Posteriors that overlap little, as after training: the batch estimate of TC stays near the exact one."""
    g = torch.Generator().manual_seed(12)
    mu = torch.randn(400, 4, generator=g) @ torch.tensor([[1.0, 0.8, 0, 0], [0, 0.6, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    logvar = torch.full_like(mu, -4.0)
    exact = disentanglement.kl_decomposition(mu, logvar, n_samples=2, generator=g)["total_correlation"]
    estimates = []
    for _ in range(20):
        idx = torch.randperm(400, generator=g)[:64]
        z = distributions.reparameterize(mu[idx], logvar[idx], generator=g)
        log_q, log_q_dims = disentanglement.minibatch_log_aggregate(z, mu[idx], logvar[idx], dataset_size=400)
        estimates.append((log_q - log_q_dims.sum(-1)).mean())
    assert abs(torch.stack(estimates).mean() - exact) < 0.15 * exact, (torch.stack(estimates).mean(), exact)
