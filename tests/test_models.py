"""course_code.models: building, shapes, the autoregressive masks (by autograd), likelihoods against torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from course_code import models, objectives, training

X_DIM, Z_DIM, HIDDEN = 12, 3, (16,)


def build(likelihood: str, seed: int = 0, **kwargs) -> models.VAE:
    torch.manual_seed(seed)
    return models.VAE(X_DIM, Z_DIM, HIDDEN, likelihood=likelihood, **kwargs)


def batch(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)).round()


@pytest.mark.parametrize("likelihood", models.LIKELIHOODS)
def test_shapes_of_encode_decode_sample_reconstruct(likelihood):
    vae, x = build(likelihood), batch()
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (5, Z_DIM)
    g = torch.Generator().manual_seed(0)
    assert vae.decode(torch.zeros(4, Z_DIM), generator=g).shape == (4, X_DIM)
    assert vae.sample(7, generator=g).shape == (7, X_DIM)
    assert vae.reconstruct(x, generator=g).shape == (5, X_DIM)
    assert vae.log_likelihood(x, torch.zeros(9, 5, Z_DIM)).shape == (9, 5)


@pytest.mark.parametrize("likelihood", models.LIKELIHOODS)
def test_elbo_loss_and_log_px(likelihood):
    vae, x = build(likelihood), batch()
    terms = vae(x, n_samples=4)
    assert isinstance(terms, objectives.ElboTerms)
    assert terms.elbo.shape == terms.rec.shape == terms.kl.shape == (5,)
    torch.testing.assert_close(terms.elbo, terms.rec - terms.kl)
    loss, stats = vae.loss(x)
    assert loss.shape == () and loss.requires_grad and set(stats) == {"elbo", "rec", "kl"}
    log_px = vae.log_px(x, n_samples=64, chunk_size=20, generator=torch.Generator().manual_seed(0))
    assert log_px.shape == (5,) and not log_px.requires_grad


def test_bernoulli_decoder_log_likelihood_equals_torch_distributions():
    vae, x = build("bernoulli"), batch()
    z = torch.randn(3, 5, Z_DIM, generator=torch.Generator().manual_seed(1))
    expected = Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    torch.testing.assert_close(vae.log_likelihood(x, z), expected)
    torch.testing.assert_close(vae.decode(z[0]), torch.sigmoid(vae.decoder(z[0])))


@pytest.mark.parametrize("fixed_logvar", [None, -1.5], ids=["learned-variance", "fixed-variance"])
def test_gaussian_decoder_log_likelihood_equals_torch_normal(fixed_logvar):
    torch.manual_seed(0)
    decoder = models.GaussianDecoder(Z_DIM, X_DIM, HIDDEN, logvar=fixed_logvar)
    if fixed_logvar is None:
        with torch.no_grad():  # a per-pixel variance that is not all ones
            decoder.logvar.copy_(torch.linspace(-2, 1, X_DIM))
        assert decoder.logvar.requires_grad
    else:
        assert not any(p is decoder.logvar for p in decoder.parameters())
    x = torch.randn(5, X_DIM, generator=torch.Generator().manual_seed(2))
    z = torch.randn(3, 5, Z_DIM, generator=torch.Generator().manual_seed(3))
    expected = Normal(decoder(z), torch.exp(0.5 * decoder.logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(decoder.log_likelihood(x, z), expected)


def test_gaussian_decoder_variance_is_floored():
    decoder = models.GaussianDecoder(Z_DIM, X_DIM, HIDDEN, logvar=-20.0, min_logvar=-6.0)
    x, z = torch.zeros(2, X_DIM), torch.zeros(2, Z_DIM)
    expected = Normal(decoder(z), torch.exp(torch.tensor(0.5 * -6.0))).log_prob(x).sum(-1)
    torch.testing.assert_close(decoder.log_likelihood(x, z), expected)


def autoregressive_jacobians(seed: int = 0):
    torch.manual_seed(seed)
    decoder = models.AutoregressiveDecoder(Z_DIM, X_DIM, hidden=(40, 40))
    with torch.no_grad():  # random biases so that no ReLU is dead everywhere and every allowed path is live
        for layer in decoder.layers:
            layer.bias.normal_()
    x = torch.rand(X_DIM, generator=torch.Generator().manual_seed(1))
    z = torch.randn(Z_DIM, generator=torch.Generator().manual_seed(2))
    d_logits_dx = torch.autograd.functional.jacobian(lambda x_: decoder(x_, z), x)  # (X_DIM, X_DIM)
    d_logits_dz = torch.autograd.functional.jacobian(lambda z_: decoder(x, z_), z)  # (X_DIM, Z_DIM)
    return d_logits_dx, d_logits_dz


def test_autoregressive_logit_i_ignores_pixels_i_and_after():
    d_logits_dx, _ = autoregressive_jacobians()
    upper = torch.triu(torch.ones(X_DIM, X_DIM, dtype=torch.bool))  # j ≥ i
    assert (d_logits_dx[upper] == 0).all()


def test_autoregressive_logit_i_depends_on_earlier_pixels_and_on_z():
    d_logits_dx, d_logits_dz = autoregressive_jacobians()
    strictly_lower = torch.tril(torch.ones(X_DIM, X_DIM, dtype=torch.bool), diagonal=-1)  # j < i
    assert (d_logits_dx[strictly_lower] != 0).float().mean() > 0.9  # the masks allow every j < i
    assert (d_logits_dx[1:, 0] != 0).all()  # the first pixel reaches every later logit
    assert (d_logits_dz.abs().sum(1) > 0).all()  # every logit depends on z


def test_autoregressive_likelihood_and_sampling():
    vae, x = build("autoregressive"), batch()
    z = torch.randn(2, 5, Z_DIM, generator=torch.Generator().manual_seed(4))
    expected = Bernoulli(logits=vae.decoder(x, z)).log_prob(x).sum(-1)
    torch.testing.assert_close(vae.log_likelihood(x, z), expected)
    a = vae.sample(3, generator=torch.Generator().manual_seed(5))
    b = vae.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}


def test_autoregressive_decoder_broadcasts_the_data_over_the_samples_of_z():
    vae, x = build("autoregressive", decoder_hidden=(16, 8)), batch()
    z = torch.randn(4, 5, Z_DIM, generator=torch.Generator().manual_seed(6))
    one_by_one = torch.stack([vae.decoder(x, z[k]) for k in range(4)])  # one sample of z per datapoint at a time
    torch.testing.assert_close(vae.decoder(x, z), one_by_one, rtol=0, atol=1e-12)
    assert vae.decoder(x[:1], z).shape == (4, 5, X_DIM), "one datapoint broadcasts against a batch of codes"


def test_autoencoder_shapes_and_loss():
    torch.manual_seed(0)
    ae, x = models.Autoencoder(X_DIM, Z_DIM, HIDDEN), batch()
    assert ae.encode(x).shape == (5, Z_DIM) and ae(x).shape == (5, X_DIM)
    loss, stats = ae.loss(x)
    torch.testing.assert_close(loss, ((ae(x) - x) ** 2).sum(-1).mean())
    assert stats == {"sq_error": pytest.approx(loss.item())}


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "z_dim, error, message",
    [(0, ValueError, "at least 1, got 0"), (-2, ValueError, "at least 1, got -2"),
     (2.5, TypeError, "an integer, got 2.5"), (True, TypeError, "an integer, got True")],
)
def test_latent_size_must_be_a_positive_integer(z_dim, error, message):
    with pytest.raises(error, match=f"z_dim must be {message}"):
        models.VAE(X_DIM, z_dim)
    with pytest.raises(error, match=f"z_dim must be {message}"):
        models.Autoencoder(X_DIM, z_dim)


def test_unknown_likelihood_names_the_choices():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'.*bernoulli"):
        models.VAE(X_DIM, Z_DIM, likelihood="poisson")


def test_autoregressive_decoder_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="decoder_hidden must hold at least one width"):
        models.VAE(X_DIM, Z_DIM, likelihood="autoregressive", decoder_hidden=())


@pytest.mark.parametrize("likelihood", models.LIKELIHOODS)
def test_wrong_input_width_is_a_value_error(likelihood):
    vae = build(likelihood)
    with pytest.raises(ValueError, match=f"x has {X_DIM + 1} features.*expects {X_DIM}"):
        vae.loss(torch.zeros(4, X_DIM + 1))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_is_a_value_error(value):
    vae, x = build("bernoulli"), batch()
    x[2, 3] = value
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        vae.encode(x)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        build("bernoulli").encode([[0.0] * X_DIM])


def test_a_vae_can_fix_the_gaussian_decoders_variance(tmp_path):
    model = models.VAE(x_dim=6, z_dim=2, hidden=(8,), likelihood="gaussian", decoder_logvar=-2.0)
    assert not any(p is model.decoder.logvar for p in model.parameters())  # a constant, not trained
    x, z = torch.rand(3, 6), torch.randn(3, 2)
    expected = torch.distributions.Normal(model.decoder(z), math.exp(-1.0)).log_prob(x).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, z), expected)
    again = training.load(training.save(model, tmp_path / "fixed.pt"))
    assert torch.equal(again.decoder.logvar, model.decoder.logvar)
    with pytest.raises(ValueError, match="decoder_logvar"):
        models.VAE(likelihood="bernoulli", decoder_logvar=0.0)
