"""Tests of course_code.discrete against independent answers: chi-square tests of the samplers, closed-form
gradients, enumeration, hand-computed VQ losses, and counted priors."""

import math

import pytest
import torch
from scipy import stats
from torch.nn import functional as F

from course_code import discrete, distributions, training

LOGITS = torch.tensor([1.0, -0.5, 0.2, 2.0, -1.5], dtype=torch.float64)


def chi_square_p_value(counts: torch.Tensor, p: torch.Tensor) -> float:
    expected = counts.sum() * p
    statistic = ((counts - expected) ** 2 / expected).sum().item()
    return stats.chi2.sf(statistic, len(p) - 1)


def test_gumbel_noise_is_standard_gumbel():
    g = discrete.gumbel_noise((200000,), torch.Generator().manual_seed(0), torch.float64)
    assert g.dtype == torch.float64
    assert abs(g.mean().item() - 0.5772156649) < 0.01  # the Euler–Mascheroni constant
    assert abs(g.var().item() - math.pi**2 / 6) < 0.03
    assert stats.kstest(g.numpy(), stats.gumbel_r.cdf).pvalue > 0.01


def test_gumbel_max_draws_follow_the_categorical():
    draws = discrete.gumbel_max(LOGITS, 100000, torch.Generator().manual_seed(1))
    assert draws.shape == (100000,)
    assert chi_square_p_value(discrete.code_usage(draws, 5), torch.softmax(LOGITS, -1)) > 0.01


def test_gumbel_max_detects_wrong_probabilities():
    """The chi-square test has power: the same draws are refused against probabilities slightly off."""
    draws = discrete.gumbel_max(LOGITS, 100000, torch.Generator().manual_seed(1))
    wrong = torch.softmax(LOGITS * 1.05, -1)
    assert chi_square_p_value(discrete.code_usage(draws, 5), wrong) < 1e-6


def test_gumbel_max_batched_logits():
    logits = torch.stack([LOGITS, LOGITS.flip(0)])
    draws = discrete.gumbel_max(logits, 50000, torch.Generator().manual_seed(2))
    assert draws.shape == (50000, 2)
    for row in range(2):
        assert chi_square_p_value(discrete.code_usage(draws[:, row], 5), torch.softmax(logits[row], -1)) > 0.01


def test_gumbel_softmax_argmax_frequencies_are_the_categorical_at_every_temperature():
    for tau in (5.0, 1.0, 0.1):
        y = discrete.gumbel_softmax(LOGITS, tau, 50000, torch.Generator().manual_seed(3))
        assert torch.allclose(y.sum(-1), torch.ones(50000, dtype=y.dtype))
        counts = discrete.code_usage(y.argmax(-1), 5)
        assert chi_square_p_value(counts, torch.softmax(LOGITS, -1)) > 0.01


def test_low_temperature_samples_converge_to_one_hot_categorical_draws():
    """As τ falls the draws approach the corners, and the mean draw approaches p (eq-gumbel-softmax)."""
    p = torch.softmax(LOGITS, -1)
    distance_to_corner, distance_to_p = [], []
    for tau in (2.0, 0.5, 0.1, 0.01):
        y = discrete.gumbel_softmax(LOGITS, tau, 50000, torch.Generator().manual_seed(4))
        distance_to_corner.append((1 - y.max(-1).values).mean().item())
        distance_to_p.append((y.mean(0) - p).abs().max().item())
    assert all(a > b for a, b in zip(distance_to_corner, distance_to_corner[1:]))
    assert distance_to_corner[-1] < 0.01 and distance_to_p[0] > 0.05 and distance_to_p[-1] < 0.01
    # at τ = 0.01 (the last y) nearly every draw rounds to a corner, and the corners pass the chi-square test
    corners = y.round()
    assert (corners.sum(-1) == 1).double().mean() > 0.999
    assert chi_square_p_value(corners.sum(0), p) > 0.01


def test_gumbel_softmax_hard_is_one_hot_with_the_soft_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    hard = discrete.gumbel_softmax(logits, 0.5, 7, torch.Generator().manual_seed(6), hard=True)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    weights = torch.randn(7, 5, dtype=torch.float64)
    (grad_hard,) = torch.autograd.grad((weights * hard).sum(), logits)
    soft = discrete.gumbel_softmax(logits, 0.5, 7, torch.Generator().manual_seed(6))
    (grad_soft,) = torch.autograd.grad((weights * soft).sum(), logits)
    assert torch.allclose(grad_hard, grad_soft, atol=1e-12)


def test_straight_through_value_and_identity_gradient():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    q = torch.round(x.detach())
    out = discrete.straight_through(x, q)
    assert torch.allclose(out, q, atol=1e-15)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad((upstream * out).sum(), x)
    assert torch.equal(grad, upstream)  # the identity on the quantized path, bit for bit
    with pytest.raises(ValueError, match="quantized has shape"):
        discrete.straight_through(x, q[:2])


def decoder_f(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(6, k, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    x = (torch.rand(6, generator=g, dtype=torch.float64) > 0.5).to(torch.float64)
    return lambda z: distributions.log_bernoulli(x, z @ W.T + b)


def test_exact_gradient_closed_form_against_autograd_of_the_enumeration():
    f = decoder_f(5)
    by_autograd = torch.autograd.functional.jacobian(lambda t: discrete.exact_expectation(f, t), LOGITS)
    assert torch.allclose(discrete.exact_gradient(f, LOGITS), by_autograd, atol=1e-12)


def test_exact_gradient_of_a_linear_function_in_closed_form():
    """f(z) = a·z: E[f] = a·p and ∂/∂θ_j = p_j (a_j − a·p), written out without the course's code."""
    a = torch.tensor([0.3, -2.0, 1.0, 4.0, 0.0], dtype=torch.float64)
    p = torch.exp(LOGITS) / torch.exp(LOGITS).sum()
    expected = p * (a - (a * p).sum())
    assert torch.allclose(discrete.exact_gradient(lambda z: z @ a, LOGITS), expected, atol=1e-14)
    assert abs(discrete.exact_expectation(lambda z: z @ a, LOGITS).item() - (a * p).sum().item()) < 1e-14


def test_score_function_is_unbiased_and_its_variance_matches_the_enumeration():
    f = decoder_f(5)
    exact = discrete.exact_gradient(f, LOGITS)
    for baseline in (0.0, discrete.exact_expectation(f, LOGITS).item()):
        samples = discrete.gradient_estimates(f, LOGITS, "score", 40000, baseline=baseline, generator=torch.Generator().manual_seed(7))
        assert samples.shape == (40000, 5)
        error = (samples.mean(0) - exact).abs() / (samples.std(0) / 200)
        assert (error < 4).all()
        enumerated = discrete.score_function_variance(f, LOGITS, baseline)
        assert torch.allclose(samples.var(0), enumerated, rtol=0.05)


def test_score_function_variance_against_a_hand_count():
    """K = 2, f(e_1) = 1, f(e_2) = 0, θ = 0: the estimate of ∂/∂θ_1 is 1·(1 − 1/2) = 1/2 or 0, each with probability
    1/2, so its variance is 1/8 − 1/16 = 1/16; that of ∂/∂θ_2 is −1/2 or 0, the same variance."""
    variance = discrete.score_function_variance(lambda z: z[:, 0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(variance, torch.full((2,), 1 / 16, dtype=torch.float64))


def test_relaxations_converge_to_the_exact_gradient_only_in_the_limit():
    f = decoder_f(5)
    exact = discrete.exact_gradient(f, LOGITS)
    biases = []
    for tau in (2.0, 0.5, 0.05):
        s = discrete.gradient_estimates(f, LOGITS, "gumbel_softmax", 40000, temperature=tau, generator=torch.Generator().manual_seed(8))
        biases.append(discrete.bias_and_variance(s, exact))
    assert biases[0]["bias"] > 10 * biases[0]["noise"]  # biased at a high temperature
    assert biases[-1]["bias"] < biases[0]["bias"] / 3
    assert biases[-1]["variance"] > biases[0]["variance"]


def test_straight_through_estimator_is_f_at_the_corner_differentiated_through_y():
    f = decoder_f(5)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    samples = discrete.gradient_estimates(f, LOGITS, "straight_through", 3, temperature=0.7, generator=g1)
    noise = discrete.gumbel_noise((3, 5), g2, torch.float64)
    rows = []
    for g in noise:
        theta = LOGITS.clone().requires_grad_(True)
        y = torch.softmax((theta + g) / 0.7, -1)
        z = F.one_hot(y.argmax(), 5).to(y.dtype)
        z_dir = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], z)  # f' at the corner
        rows.append(torch.autograd.grad((z_dir * y).sum(), theta)[0])
    assert torch.allclose(samples, torch.stack(rows), atol=1e-12)


def test_gradient_estimates_refuses_bad_input():
    f = decoder_f(5)
    with pytest.raises(ValueError, match="unknown estimator"):
        discrete.gradient_estimates(f, LOGITS, "reinforce", 3)
    with pytest.raises(ValueError, match="temperature must be positive"):
        discrete.gradient_estimates(f, LOGITS, "gumbel_softmax", 3, temperature=0.0)
    with pytest.raises(ValueError, match="logits must have 1 dimension"):
        discrete.gradient_estimates(f, LOGITS[None], "score", 3)
    with pytest.raises(ValueError, match="at least 2 categories"):
        discrete.gumbel_max(torch.zeros(1), 3)


def test_quantize_picks_the_nearest_code_by_hand():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    z_e = torch.tensor([[[0.4, 0.0], [0.6, 0.1]], [[0.2, 2.0], [-1.0, -1.0]]], dtype=torch.float64)
    indices, z_q = discrete.quantize(z_e, codebook)
    assert indices.tolist() == [[0, 1], [2, 0]]
    assert torch.equal(z_q, codebook[indices])


def test_quantize_is_not_the_largest_dot_product():
    codebook = torch.tensor([[1.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    z_e = torch.tensor([[[1.5, 0.0]]], dtype=torch.float64)
    assert discrete.quantize(z_e, codebook)[0].item() == 0  # the dot product would pick the long code


def test_vq_losses_by_hand():
    z_e = torch.tensor([[[0.4, 0.0], [1.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    _, z_q = discrete.quantize(z_e, codebook)
    codebook_loss, commitment_loss = discrete.vq_losses(z_e, z_q)
    assert torch.allclose(codebook_loss, torch.tensor([0.16 + 1.0], dtype=torch.float64))  # 0.4² + (2 − 1)²
    assert torch.allclose(commitment_loss, codebook_loss)
    grad_e, grad_book = torch.autograd.grad(codebook_loss.sum(), (z_e, codebook), allow_unused=True, materialize_grads=True)
    assert torch.equal(grad_e, torch.zeros_like(grad_e))
    assert torch.allclose(grad_book, torch.tensor([[-0.8, 0.0], [0.0, -2.0]], dtype=torch.float64))
    grad_e, grad_book = torch.autograd.grad(commitment_loss.sum(), (z_e, codebook), allow_unused=True, materialize_grads=True)
    assert torch.allclose(grad_e, torch.tensor([[[0.8, 0.0], [0.0, 2.0]]], dtype=torch.float64))
    assert torch.equal(grad_book, torch.zeros_like(grad_book))


def test_code_usage_and_perplexity():
    counts = discrete.code_usage(torch.tensor([[0, 2], [2, 2]]), 4)
    assert counts.tolist() == [1, 0, 3, 0]
    p = torch.tensor([0.25, 0.75], dtype=torch.float64)
    assert abs(discrete.perplexity(counts.to(torch.float64)).item() - math.exp(-(p * p.log()).sum().item())) < 1e-12
    assert abs(discrete.perplexity(torch.ones(8, dtype=torch.float64)).item() - 8) < 1e-12


def tiny_vqvae(n_codes=6):
    torch.manual_seed(0)
    return discrete.VQVAE(x_dim=5, n_latents=3, code_dim=2, n_codes=n_codes, hidden=(7,))


def test_vqvae_loss_is_its_three_terms_and_reaches_every_part():
    vq = tiny_vqvae()
    x = (torch.rand(4, 5) > 0.5).to(torch.get_default_dtype())
    loss, stats_ = vq.loss(x)
    z_e = vq.encode(x)
    z_q = vq.codebook[discrete.quantize(z_e, vq.codebook)[0]]
    rec = distributions.log_bernoulli(x, vq.decoder(z_q.reshape(4, -1)))
    expected = (-rec + ((z_e - z_q) ** 2).sum((1, 2)) * (1 + vq.commitment)).mean()
    assert torch.allclose(loss, expected)
    assert abs(stats_["rec"] - rec.mean().item()) < 1e-12
    loss.backward()
    for name, parameter in vq.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="no KL weight"):
        vq.loss(x, beta=0.5)


def test_vqvae_trains_with_fit_and_restarts_revive_dead_codes():
    torch.manual_seed(0)
    x = (torch.rand(200, 5) > 0.5).to(torch.get_default_dtype())
    vq = tiny_vqvae(n_codes=40)
    history = training.fit(vq, x, epochs=5, batch_size=50, lr=1e-2, progress=False)
    assert history["rec"][-1] > history["rec"][0]
    dead = (discrete.code_usage(vq.codes(x), 40) == 0).sum().item()
    assert dead > 0
    assert discrete.restart_dead_codes(vq, x, torch.Generator().manual_seed(0)) == dead
    assert (discrete.code_usage(vq.codes(x), 40) == 0).sum().item() < dead


def test_code_prior_by_counting():
    codes = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 0]])
    markov = discrete.CodePrior(2, 2, order=1, smoothing=1.0).fit(codes)
    # p(c1 = 0) = (3 + 1) / (4 + 2); p(c2 = 1 | c1 = 0) = (2 + 1) / (3 + 2)
    assert abs(markov.log_prob(torch.tensor([[0, 1]])).item() - math.log(4 / 6 * 3 / 5)) < 1e-12
    independent = discrete.CodePrior(2, 2, order=0, smoothing=1.0).fit(codes)
    # p(c1 = 0) = 4/6, p(c2 = 1) = (2 + 1) / (4 + 2)
    assert abs(independent.log_prob(torch.tensor([[0, 1]])).item() - math.log(4 / 6 * 3 / 6)) < 1e-12
    every = torch.cartesian_prod(torch.arange(2), torch.arange(2))
    for prior in (markov, independent):
        assert abs(prior.log_prob(every).exp().sum().item() - 1) < 1e-12


def test_code_prior_samples_follow_its_probabilities():
    codes = torch.randint(3, (500, 3), generator=torch.Generator().manual_seed(0))
    codes[:, 1] = (codes[:, 0] + 1) % 3  # a dependence the Markov chain can learn
    prior = discrete.CodePrior(3, 3, order=1, smoothing=0.5).fit(codes)
    samples = prior.sample(30000, torch.Generator().manual_seed(1))
    every = torch.cartesian_prod(torch.arange(3), torch.arange(3), torch.arange(3))
    index = samples[:, 0] * 9 + samples[:, 1] * 3 + samples[:, 2]
    counts = torch.bincount(index, minlength=27).to(torch.float64)
    assert chi_square_p_value(counts, prior.log_prob(every).exp()) > 0.01
    with pytest.raises(ValueError, match="order must be 0"):
        discrete.CodePrior(3, 3, order=2)
    with pytest.raises(ValueError, match="codes must lie in"):
        prior.log_prob(torch.tensor([[0, 1, 3]]))


def test_two_categories_give_chapter_3s_bernoulli_estimator_times_dp_dtheta():
    """Logits (0, θ): z_2 is Bernoulli(σ(θ)), and (f − c)(z − p)_2 = (f − c)(b/p − (1 − b)/(1 − p))·p(1 − p)."""
    from course_code import gradients

    theta = torch.tensor([0.0, -0.4], dtype=torch.float64)
    p = torch.sigmoid(theta[1])
    ours = discrete.gradient_estimates(lambda z: 2.0 * z[:, 1] + 0.5, theta, "score", 100000, baseline=1.0,
                                       generator=torch.Generator().manual_seed(10))[:, 1]
    bernoulli = gradients.score_function_bernoulli(lambda b: 2.0 * b + 0.5, p, 100000, baseline=1.0,
                                                   generator=torch.Generator().manual_seed(11)) * p * (1 - p)
    exact = 2.0 * p * (1 - p)  # p(1 − p)(f(e_2) − f(e_1))
    for estimates in (ours, bernoulli):
        assert abs(estimates.mean() - exact) < 4 * estimates.std() / 100000**0.5
    assert abs(ours.var() / bernoulli.var() - 1) < 0.03
    assert torch.allclose(discrete.exact_gradient(lambda z: 2.0 * z[:, 1] + 0.5, theta)[1], exact)


def test_vqvae_refuses_data_it_cannot_use():
    vq = tiny_vqvae()
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        vq.loss(torch.zeros(2, 5, dtype=torch.float32))
    with pytest.raises(ValueError, match="x has 4 features"):
        vq.encode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="n_codes must be at least 2"):
        discrete.VQVAE(n_codes=1)
    with pytest.raises(ValueError, match="codebook's width"):
        discrete.quantize(torch.zeros(3, 4), torch.zeros(5, 2))
