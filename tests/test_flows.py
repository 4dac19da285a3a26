"""course_code.flows against independent answers: autograd Jacobians, quadrature of densities, round trips through inverses."""

import math

import pytest
import torch

from course_code import flows, models, training
from course_code.distributions import log_standard_normal


def jacobian_log_det(f, z: torch.Tensor) -> torch.Tensor:
    """log |det ∂f/∂z| of a map of single points z (d,), by autograd, for each row of a batch (B, d)."""
    return torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(f, row))[1] for row in z])


def planar_params(d: int, steps: int, seed: int, batch=()):
    g = torch.Generator().manual_seed(seed)
    u = 2 * torch.randn(steps, *batch, d, generator=g)
    w = torch.randn(steps, *batch, d, generator=g)
    return u, w, torch.randn(steps, *batch, generator=g)


# ---- planar flows -----------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 3])
def test_planar_log_det_matches_the_autograd_jacobian(d):
    u, w, b = planar_params(d, 1, seed=d)
    z = 2 * torch.randn(6, d, generator=torch.Generator().manual_seed(10 + d))
    _, log_det = flows.planar(z, u[0], w[0], b[0])
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: flows.planar(v, u[0], w[0], b[0])[0], z))


def test_planar_chain_log_det_is_the_sum_over_steps_and_matches_autograd():
    u, w, b = planar_params(3, 4, seed=0)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    out, log_det = flows.planar_chain(z, u, w, b)
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: flows.planar_chain(v, u, w, b)[0], z))
    step_by_step, total = z, torch.zeros(5)
    for k in range(4):
        step_by_step, step = flows.planar(step_by_step, u[k], w[k], b[k])
        total = total + step
    torch.testing.assert_close(out, step_by_step)
    torch.testing.assert_close(log_det, total)


def test_invertible_u_keeps_w_dot_u_above_minus_one_and_leaves_large_ones_nearly_alone():
    w = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0))
    w = w / w.norm(dim=-1, keepdim=True)
    u = -4 * w + 0.5 * torch.randn(1000, 3, generator=torch.Generator().manual_seed(1))  # wᵀu well below −1
    assert ((w * flows.invertible_u(u, w)).sum(-1) > -1).all()
    u = 3 * w  # wᵀu large: m(a) = softplus(a) − 1 ≈ a − 1
    wu_hat = (w * flows.invertible_u(u, w)).sum(-1)
    torch.testing.assert_close(wu_hat, torch.nn.functional.softplus(3 * (w**2).sum(-1)) - 1)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_planar_inverse_undoes_the_step(d):
    u, w, b = planar_params(d, 1, seed=20 + d)
    u = -4 * w  # a step that would fold space without the constraint on û
    z0 = 3 * torch.randn(50, d, generator=torch.Generator().manual_seed(d))
    z, _ = flows.planar(z0, u[0], w[0], b[0])
    torch.testing.assert_close(flows.planar_inverse(z, u[0], w[0], b[0]), z0, atol=1e-10, rtol=0)


def test_planar_density_integrates_to_one_in_1d_and_2d():
    """q(z) = N(z₀) / |det ∂f/∂z₀| with z₀ = f⁻¹(z), summed over a fine grid of z."""
    for d, n_points, limit in ((1, 4001, 12.0), (2, 301, 9.0)):
        u, w, b = planar_params(d, 1, seed=30 + d)
        axis = torch.linspace(-limit, limit, n_points)
        z = torch.cartesian_prod(*[axis] * d).reshape(-1, d)
        z0 = flows.planar_inverse(z, u[0], w[0], b[0])
        log_q = log_standard_normal(z0) - flows.planar(z0, u[0], w[0], b[0])[1]
        cell = (axis[1] - axis[0]) ** d
        assert abs(log_q.exp().sum() * cell - 1) < 1e-6, d


def test_a_density_read_through_a_planar_chain_integrates_to_one_in_1d_and_2d():
    """The chapter's grid family q(z) = N(f(z); μ, σ²) |det ∂f/∂z| is normalized whatever the steps."""
    for d, n_points, limit in ((1, 4001, 15.0), (2, 301, 10.0)):
        u, w, b = planar_params(d, 3, seed=40 + d)
        axis = torch.linspace(-limit, limit, n_points)
        z = torch.cartesian_prod(*[axis] * d).reshape(-1, d)
        f, log_det = flows.planar_chain(z, u, w, b)
        log_q = -0.5 * (((f - 0.3) / 0.8) ** 2 + math.log(2 * math.pi * 0.64)).sum(-1) + log_det
        assert abs(log_q.exp().sum() * (axis[1] - axis[0]) ** d - 1) < 1e-6, d


def test_planar_rejects_mismatched_parameters():
    with pytest.raises(ValueError, match="u must have z's last dimension 2"):
        flows.planar(torch.zeros(3, 2), torch.zeros(3), torch.zeros(2), torch.zeros(()))


# ---- inverse autoregressive flow --------------------------------------------------------------

@pytest.fixture
def iaf():
    torch.manual_seed(0)
    flow = flows.IAF(z_dim=3, n_steps=3, context_dim=5, hidden=(16,))
    for step in flow.steps:  # move the gates away from their initial value, so every term matters
        torch.nn.init.normal_(step.s.bias, std=1.0)
        torch.nn.init.normal_(step.m.weight, std=1.0)
    return flow


def test_iaf_step_is_autoregressive_with_a_triangular_jacobian(iaf):
    step, h = iaf.steps[0], torch.randn(5)
    z = torch.randn(3)
    J = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)
    torch.testing.assert_close(J, torch.tril(J))  # output i depends on inputs 1..i only
    m_jacobian = torch.autograd.functional.jacobian(lambda v: step.shift_and_gate(v, h)[0], z)
    torch.testing.assert_close(m_jacobian, torch.tril(m_jacobian, diagonal=-1))  # m_i on inputs before i only
    torch.testing.assert_close(step(z, h)[1], torch.log(J.diagonal()).sum())


def test_iaf_log_det_matches_the_autograd_jacobian(iaf):
    z, h = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    _, log_det = iaf(z, h)
    expected = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda v: iaf(v, h[n])[0], z[n]))[1] for n in range(6)])
    torch.testing.assert_close(log_det, expected)


def test_iaf_inverse_undoes_the_flow_and_its_density_integrates_to_one(iaf):
    h = torch.randn(5, generator=torch.Generator().manual_seed(3))
    z0 = torch.randn(40, 3, generator=torch.Generator().manual_seed(4))
    z, _ = iaf(z0, h.expand(40, 5))
    torch.testing.assert_close(iaf.inverse(z, h.expand(40, 5)), z0)
    torch.manual_seed(1)
    flat = flows.IAF(z_dim=2, n_steps=2, context_dim=5, hidden=(8,))
    axis = torch.linspace(-9, 9, 241)
    grid = torch.cartesian_prod(axis, axis)
    h_grid = h.expand(len(grid), 5)
    grid0 = flat.inverse(grid, h_grid)
    log_q = log_standard_normal(grid0) - flat(grid0, h_grid)[1]
    assert abs(log_q.exp().sum() * (axis[1] - axis[0]) ** 2 - 1) < 1e-4  # a wrong log-determinant misses by far more


def test_made_masks_give_the_autoregressive_decoder_the_masks_it_had():
    decoder = models.AutoregressiveDecoder(z_dim=2, x_dim=5, hidden=(7, 6))
    *hidden_masks, out_mask = models.made_masks(5, (7, 6))
    for layer, mask in zip(decoder.layers, hidden_masks):
        torch.testing.assert_close(layer.mask, mask.double())
    torch.testing.assert_close(decoder.out.mask, out_mask.double())
    degrees = torch.arange(1, 6)
    reach = out_mask.double() @ hidden_masks[1].double() @ hidden_masks[0].double()  # paths from input j to output i
    assert ((reach > 0) <= (degrees[:, None] > degrees[None, :])).all()


# ---- flows inside the VAE ---------------------------------------------------------------------

@pytest.mark.parametrize("flow", [flows.PlanarFlow(z_dim=2, n_steps=3, context_dim=16), flows.IAF(z_dim=2, n_steps=2, context_dim=16, hidden=(8,))])
def test_a_vae_with_a_flow_reports_log_q_of_its_samples(flow):
    torch.manual_seed(0)
    vae = models.VAE(x_dim=6, z_dim=2, hidden=(16,), flow=flow)
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    g = torch.Generator().manual_seed(2)
    z, log_q = vae.posterior_sample(x, 3, g)
    g = torch.Generator().manual_seed(2)
    h = vae.encoder.body(x)
    mu, logvar = vae.encoder.head(h).chunk(2, dim=-1)
    z0 = mu + torch.exp(0.5 * logvar) * torch.randn(3, 4, 2, generator=g)
    expected_z, log_det = flow(z0, h.expand(3, 4, 16))
    torch.testing.assert_close(z, expected_z)
    normal = -0.5 * (((z0 - mu) ** 2) / logvar.exp() + logvar + math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(log_q, normal - log_det)


def test_a_vae_with_a_flow_is_saved_and_rebuilt(tmp_path):
    torch.manual_seed(0)
    vae = models.VAE(x_dim=6, z_dim=2, hidden=(16,), flow=flows.IAF(z_dim=2, n_steps=2, context_dim=16, hidden=(8,)))
    path = tmp_path / "vae.pt"
    training.save(vae, path)
    again = training.load(path)
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(1))
    a = vae.log_weights(x, 4, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again.log_weights(x, 4, torch.Generator().manual_seed(5)), a)
