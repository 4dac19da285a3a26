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


# --- pluggable prior and flow ---------------------------------------------------------------------------------------

class _StandardNormalPrior(torch.nn.Module):
    """N(0, I) written as a pluggable prior: a VAE using it must agree with the built-in prior."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.config = {"z_dim": z_dim}
        self.z_dim = z_dim

    def log_prob(self, z):
        return Normal(torch.zeros(()), torch.ones(())).log_prob(z).sum(-1)

    def sample(self, n, generator=None):
        return torch.randn(n, self.z_dim, generator=generator)


class _Shift(torch.nn.Module):
    """z = z0 + b (a flow with log-determinant 0 that still moves q)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.config = {"z_dim": z_dim}
        self.b = torch.nn.Parameter(torch.linspace(-0.5, 0.5, z_dim))

    def forward(self, z0, h):
        assert h.shape[:-1] == z0.shape[:-1]
        return z0 + self.b, torch.zeros(z0.shape[:-1])


@pytest.fixture
def parts(monkeypatch):
    """The two test parts, registered as if they lived in a course_code module (only those can be rebuilt)."""
    for cls in (_StandardNormalPrior, _Shift):
        monkeypatch.setattr(cls, "__module__", "course_code.models")
        monkeypatch.setattr(models, cls.__name__, cls, raising=False)
    return _StandardNormalPrior, _Shift


def test_a_standard_normal_prior_plugged_in_gives_the_standard_models_numbers(parts):
    prior_cls, _ = parts
    torch.manual_seed(0)
    plain = models.VAE(x_dim=6, z_dim=3, hidden=(5,))
    plugged = models.VAE(x_dim=6, z_dim=3, hidden=(5,), prior=prior_cls(3))
    plugged.load_state_dict(plain.state_dict())
    x = torch.rand(4, 6).round()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert not plugged.standard
    torch.testing.assert_close(plugged.log_px(x, 300, 100, g()), plain.log_px(x, 300, 100, g()))
    mu, logvar = plain.encode(x)
    expected = objectives.log_weights(plain.log_likelihood, x, mu, logvar, 7, g())
    torch.testing.assert_close(plugged.log_weights(x, 7, g()), expected)


def test_a_flow_moves_the_samples_and_its_log_q_is_the_base_density_minus_log_det(parts):
    _, shift = parts
    torch.manual_seed(0)
    vae = models.VAE(x_dim=6, z_dim=3, hidden=(5,), flow=shift(3))
    x = torch.rand(4, 6).round()
    z, log_q = vae.posterior_sample(x, 5, torch.Generator().manual_seed(2))
    mu, logvar = vae.encode(x)
    z0 = z - vae.flow.b
    torch.testing.assert_close(log_q, Normal(mu, (0.5 * logvar).exp()).log_prob(z0).sum(-1))
    torch.manual_seed(3)
    terms = vae(x, n_samples=2000)
    # The sampled KL of a shifted Gaussian against N(0, I) against its closed form (shift the mean).
    exact = distributions_kl(mu + vae.flow.b, logvar)
    assert (terms.kl - exact).abs().max() < 0.15
    torch.testing.assert_close(terms.elbo, terms.rec - terms.kl)


def distributions_kl(mu, logvar):
    q = Normal(mu, (0.5 * logvar).exp())
    return torch.distributions.kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)


def test_a_vae_with_parts_saves_and_loads(parts, tmp_path):
    prior_cls, shift = parts
    vae = models.VAE(x_dim=6, z_dim=3, hidden=(5,), prior=prior_cls(3), flow=shift(3), objective="iwae")
    with torch.no_grad():
        vae.flow.b.add_(1.0)
    loaded = training.load(training.save(vae, tmp_path / "m.pt"))
    assert loaded.config == vae.config and loaded.objective == "iwae"
    torch.testing.assert_close(loaded.flow.b, vae.flow.b)


def test_parts_from_outside_the_course_are_refused():
    with pytest.raises(TypeError, match="prior must be None or a course_code module"):
        models.VAE(prior=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="only classes of course_code modules"):
        models.VAE(flow={"class": "os.system", "config": {}})


def test_the_iwae_loss_with_one_sample_is_the_negative_sampled_elbo():
    torch.manual_seed(0)
    vae = models.VAE(x_dim=6, z_dim=3, hidden=(5,), objective="iwae")
    x = torch.rand(4, 6).round()
    torch.manual_seed(4)
    loss, stats = vae.loss(x, n_samples=1)
    mu, logvar = vae.encode(x)
    torch.manual_seed(4)
    terms = objectives.elbo(vae.log_likelihood, x, mu, logvar, 1, analytic_kl=False)
    torch.testing.assert_close(loss, -terms.elbo.mean())
    assert stats["iwae"] == pytest.approx(terms.elbo.mean().item())
    assert stats["elbo"] == pytest.approx(terms.elbo.mean().item())
    with pytest.raises(ValueError, match="no KL weight"):
        vae.loss(x, beta=0.5)


def test_the_iwae_loss_rises_with_k_on_average():
    torch.manual_seed(0)
    vae = models.VAE(x_dim=6, z_dim=3, hidden=(5,), objective="iwae")
    x = torch.rand(8, 6).round()
    means = []
    for k in (1, 10, 100):
        torch.manual_seed(5)
        means.append(torch.stack([-vae.loss(x, n_samples=k)[0] for _ in range(50)]).mean())
    assert means[0] < means[1] < means[2]


def test_an_iwae_model_trains_and_reports_its_elbo_on_test_data():
    torch.manual_seed(0)
    x = torch.rand(32, 6).round()
    vae = models.VAE(x_dim=6, z_dim=2, hidden=(5,), objective="iwae")
    history = training.fit(vae, x, epochs=2, batch_size=16, n_samples=5, x_test=x)
    assert {"iwae", "elbo", "test_elbo"} <= set(history)
    # On the same samples, mean log w ≤ log mean w (Jensen), batch by batch, so also on average.
    assert all(e <= b for e, b in zip(history["elbo"], history["iwae"]))


def test_unknown_objective_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown objective 'vi'.*'elbo', 'iwae'"):
        models.VAE(objective="vi")


# --- the hidden layers' activation ----------------------------------------------------------------------------------

HAND_ACTIVATIONS = {  # each written from its definition, not through torch.nn
    "relu": lambda a: torch.where(a > 0, a, torch.zeros_like(a)),
    "elu": lambda a: torch.where(a > 0, a, torch.exp(a) - 1),
    "tanh": lambda a: (torch.exp(a) - torch.exp(-a)) / (torch.exp(a) + torch.exp(-a)),
    "softplus": lambda a: torch.log(1 + torch.exp(a)),
}


def by_hand(linears: list[torch.nn.Linear], x: torch.Tensor, act, final: bool) -> torch.Tensor:
    """The same network computed from its weights: x Wᵀ + b, then the activation between layers."""
    for i, layer in enumerate(linears):
        x = x @ layer.weight.T + layer.bias
        if i < len(linears) - 1 or final:
            x = act(x)
    return x


def linear_layers(net: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("activation", tuple(models.ACTIVATIONS))
def test_the_encoder_and_decoder_use_the_chosen_activation(activation):
    assert set(HAND_ACTIVATIONS) == set(models.ACTIVATIONS)
    torch.manual_seed(0)
    vae = models.VAE(X_DIM, Z_DIM, (16, 8), activation=activation)
    x, z = batch(), torch.randn(5, Z_DIM, generator=torch.Generator().manual_seed(1))
    act = HAND_ACTIVATIONS[activation]
    h = by_hand(linear_layers(vae.encoder.body), x, act, final=True)
    mu, logvar = vae.encode(x)
    torch.testing.assert_close(torch.cat([mu, logvar], -1), h @ vae.encoder.head.weight.T + vae.encoder.head.bias)
    torch.testing.assert_close(vae.decoder(z), by_hand(linear_layers(vae.decoder.net), z, act, final=False))


@pytest.mark.parametrize("activation", ["elu", "tanh"])
def test_the_gaussian_and_autoregressive_decoders_use_the_chosen_activation(activation):
    act, z = HAND_ACTIVATIONS[activation], torch.randn(5, Z_DIM, generator=torch.Generator().manual_seed(1))
    gaussian = build("gaussian", activation=activation).decoder
    torch.testing.assert_close(gaussian(z), by_hand(linear_layers(gaussian.net), z, act, final=False))
    ar, x = build("autoregressive", activation=activation).decoder, batch()
    h = x
    for i, layer in enumerate(ar.layers):  # masked layers, and z added to the first
        h = act(h @ (layer.weight * layer.mask).T + layer.bias + (z @ ar.z_in.weight.T + ar.z_in.bias if i == 0 else 0))
    expected = h @ (ar.out.weight * ar.out.mask).T + ar.out.bias + z @ ar.z_out.weight.T + ar.z_out.bias
    torch.testing.assert_close(ar(x, z), expected)


def test_the_activation_changes_the_function_not_the_weights():
    relu, elu = build("bernoulli"), build("bernoulli", activation="elu")  # same seed: same weights
    assert all(torch.equal(a, b) for a, b in zip(relu.state_dict().values(), elu.state_dict().values()))
    x = batch()
    assert not torch.allclose(relu.encode(x)[0], elu.encode(x)[0])


def test_the_config_names_the_activation_only_when_it_is_not_relu(tmp_path):
    assert "activation" not in build("bernoulli").config  # models saved before the option load unchanged
    assert "activation" not in build("bernoulli", activation="relu").config
    model = build("gaussian", activation="softplus")
    assert model.config["activation"] == "softplus"
    loaded = training.load(training.save(model, tmp_path / "softplus.pt"))
    assert loaded.config == model.config and isinstance(loaded.encoder.body[1], torch.nn.Softplus)
    x, z = batch(), torch.randn(2, 5, Z_DIM, generator=torch.Generator().manual_seed(0))
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), model.encode(x)))
    assert torch.equal(loaded.log_likelihood(x, z), model.log_likelihood(x, z))


def test_a_checkpoint_without_an_activation_loads_as_relu(tmp_path):
    model = build("bernoulli")
    path = training.save(model, tmp_path / "old.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert "activation" not in checkpoint["config"]
    loaded = training.load(path)
    assert all(isinstance(m, torch.nn.ReLU) for m in (*loaded.encoder.body[1::2], *loaded.decoder.net[1::2]))


@pytest.mark.parametrize("make", [lambda: models.mlp([3, 4, 2], activation="gelu"), lambda: build("bernoulli", activation="gelu"),
                                  lambda: models.Encoder(3, 2, (4,), activation="ReLU")], ids=["mlp", "vae", "encoder"])
def test_an_unknown_activation_names_the_argument_and_the_choices(make):
    with pytest.raises(ValueError, match=r"unknown activation '(gelu|ReLU)'; choose one of \('relu', 'elu', 'tanh', 'softplus'\)"):
        make()
