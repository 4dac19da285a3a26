"""The conditional VAE and the M2 model against independent answers: the unlabelled bound by enumeration and by
sampling the label, the closed-form KL against torch.distributions, shapes, gradients and training."""

import math

import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from course_code import semisupervised as ss

X_DIM, N_CLASSES, Z_DIM, BATCH = 6, 4, 3, 5  # every axis a different size, so a wrong axis shows


def random_model(seed: int = 0, alpha: float = 1.0) -> ss.M2:
    torch.manual_seed(seed)
    return ss.M2(X_DIM, N_CLASSES, Z_DIM, hidden=(8,), classifier_hidden=(7,), alpha=alpha)


def images(n: int = BATCH, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed))


def test_one_hot_and_rows():
    y = torch.tensor([2, 0, 3])
    assert torch.equal(ss.one_hot(y, 4), torch.eye(4)[y])
    x = images(3)
    data = ss.rows(x, y, N_CLASSES)
    assert data.shape == (3, X_DIM + N_CLASSES)
    back_x, back_y = ss.split_rows(data, X_DIM, N_CLASSES)
    assert torch.equal(back_x, x) and torch.equal(back_y.argmax(-1), y)
    assert torch.equal(ss.rows(x, None, N_CLASSES)[:, X_DIM:], torch.zeros(3, N_CLASSES))


def test_labelled_subset_draws_the_same_number_of_every_class():
    y = torch.arange(50) % 4
    chosen = ss.labelled_subset(y, 3, seed=5)
    assert torch.equal(torch.bincount(y[chosen]), torch.full((4,), 3)) and len(chosen.unique()) == 12
    assert torch.equal(chosen, ss.labelled_subset(y, 3, seed=5)) and not torch.equal(chosen, ss.labelled_subset(y, 3, seed=6))
    with pytest.raises(ValueError, match="fewer than per_class"):
        ss.labelled_subset(y, 13)


def test_unlabelled_bound_is_the_expectation_of_the_labelled_bound_plus_the_entropy():
    """Enumerate the classes one by one with the same noise: U = Σ_y q(y|x) L(x, y) + H(q(y|x)) to rounding."""
    model = random_model()
    x = images()
    eps = torch.randn(7, BATCH, Z_DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        q = Categorical(logits=model.classifier(x))
        expected = q.entropy()
        for c in range(N_CLASSES):
            y = torch.zeros(BATCH, N_CLASSES)
            y[:, c] = 1
            expected = expected + q.probs[:, c] * model.labelled_bound(x, y, eps)
        got = model.unlabelled_bound(x, eps)
    assert got.shape == (BATCH,)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_unlabelled_bound_is_the_elbo_with_the_label_sampled():
    """Draw y ~ q(y|x) and z ~ q(z|x, y): the mean of log p(x, y, z) − log q(y, z | x) converges to U (4 standard errors)."""
    model = random_model(3)
    x = images(2)
    n = 20_000
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        exact = model.unlabelled_bound(x, n_samples=20_000)  # every class, many z: its own error is far smaller
        logits = model.classifier(x)
        y = torch.multinomial(logits.softmax(-1), n, replacement=True, generator=g).T  # (n, B)
        x_rep = x.repeat(n, 1)
        y_rep = ss.one_hot(y.reshape(-1), N_CLASSES)
        mu, logvar = model.cvae.encode(x_rep, y_rep)
        q_z = Normal(mu, (0.5 * logvar).exp())
        z = q_z.sample()
        log_joint = (model.cvae.log_likelihood(x_rep, y_rep, z[None])[0] + Normal(0.0, 1.0).log_prob(z).sum(-1)
                     - math.log(N_CLASSES))
        log_q = q_z.log_prob(z).sum(-1) + logits.log_softmax(-1).repeat(n, 1).gather(1, y.reshape(-1, 1))[:, 0]
        draws = (log_joint - log_q).reshape(n, 2)
    error = draws.std(0) / math.sqrt(n)
    assert ((draws.mean(0) - exact).abs() < 4 * error).all()


def test_labelled_bound_uses_the_closed_form_kl_and_the_uniform_label_prior():
    model = random_model(5)
    x, y = images(), ss.one_hot(torch.tensor([0, 1, 2, 3, 1]), N_CLASSES)
    eps = torch.zeros(1, BATCH, Z_DIM)
    with torch.no_grad():
        mu, logvar = model.cvae.encode(x, y)
        kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
        rec = model.cvae.log_likelihood(x, y, mu[None])[0]  # ε = 0: z is the mean
        terms = model.cvae.elbo(x, y, eps)
        torch.testing.assert_close(terms.kl, kl)
        torch.testing.assert_close(model.labelled_bound(x, y, eps), rec - kl - math.log(N_CLASSES))


def test_labelled_bounds_table_matches_one_class_at_a_time():
    model = random_model(6)
    x = images()
    eps = torch.randn(2, BATCH, Z_DIM)
    with torch.no_grad():
        table = model.labelled_bounds(x, eps)
        assert table.shape == (N_CLASSES, BATCH)
        for c in range(N_CLASSES):
            y = ss.one_hot(torch.full((BATCH,), c), N_CLASSES)
            torch.testing.assert_close(table[c], model.labelled_bound(x, y, eps), rtol=0, atol=1e-12)


def test_gradients_reach_the_classifier_through_the_unlabelled_bound():
    model = random_model(7, alpha=0.0)  # no cross-entropy term: only U can move the classifier
    loss, stats = model.loss(ss.rows(images(), None, N_CLASSES))
    loss.backward()
    grads = [p.grad for p in model.classifier.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert stats["cross_entropy"] == 0.0


def test_loss_mixes_labelled_and_unlabelled_rows():
    model = random_model(8, alpha=2.5)
    x, y = images(), torch.tensor([1, 0, 3, 2, 2])
    data = torch.cat([ss.rows(x[:2], y[:2], N_CLASSES), ss.rows(x[2:], None, N_CLASSES)])
    torch.manual_seed(9)
    loss, stats = model.loss(data)
    torch.manual_seed(9)  # the same noise: the labelled rows draw first, then the unlabelled ones
    with torch.no_grad():
        labelled = model.labelled_bound(x[:2], ss.one_hot(y[:2], N_CLASSES)).sum()
        unlabelled = model.unlabelled_bound(x[2:]).sum()
        cross_entropy = torch.nn.functional.cross_entropy(model.classifier(x[:2]), y[:2], reduction="sum")
    torch.testing.assert_close(loss.detach(), (2.5 * cross_entropy - labelled - unlabelled) / BATCH)
    assert math.isclose(stats["bound"], ((labelled + unlabelled) / BATCH).item(), rel_tol=1e-12)


def test_shapes_of_generation_and_prediction():
    model = random_model(10)
    z = torch.randn(3, Z_DIM)
    images_out = model.cvae.decode(z, torch.tensor([0, 3, 1]))
    assert images_out.shape == (3, X_DIM) and ((images_out >= 0) & (images_out <= 1)).all()
    assert model.predict(images()).shape == (BATCH,)
    assert 0.0 <= ss.accuracy(model, images(), torch.zeros(BATCH, dtype=torch.long)) <= 1.0


def test_training_raises_the_validation_accuracy_and_keeps_the_best_epoch():
    """Two well separated classes of images: a few labels and training must classify held-out images."""
    g = torch.Generator().manual_seed(11)
    y = torch.arange(200) % 2
    x = (0.8 * y[:, None].double() + 0.1 + 0.1 * torch.rand(200, X_DIM, generator=g)).clamp(0, 1)
    x[:, : X_DIM // 2] = 1 - x[:, : X_DIM // 2]  # images of class 0 and 1 differ in every pixel
    torch.manual_seed(12)
    model = ss.M2(X_DIM, 2, 2, hidden=(8,), alpha=5.0)
    data = torch.cat([ss.rows(x[:4], y[:4], 2), ss.rows(x[4:150], None, 2)])
    history = ss.fit_keeping_best(model, data, x[150:], y[150:], epochs=30, batch_size=64, lr=1e-2, seed=0)
    assert max(history["val_accuracy"]) == history["val_accuracy"][history["best_epoch"][0] - 1]
    assert ss.accuracy(model, x[150:], y[150:]) == max(history["val_accuracy"]) > 0.9


def test_conditional_vae_trains_and_needs_labels():
    torch.manual_seed(13)
    cvae = ss.ConditionalVAE(X_DIM, N_CLASSES, Z_DIM, hidden=(8,))
    x, y = images(40, seed=14), torch.arange(40) % N_CLASSES
    loss, stats = cvae.loss(ss.rows(x, y, N_CLASSES))
    assert loss.shape == () and math.isclose(stats["elbo"], stats["rec"] - stats["kl"], rel_tol=1e-9)
    with pytest.raises(ValueError, match="needs a label for every row"):
        cvae.loss(ss.rows(x, None, N_CLASSES))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ss.one_hot(torch.tensor([0, 4]), 4), "labels in 0, …, 3"),
        (lambda: ss.one_hot(torch.tensor([0.0, 1.0]), 4), "integer class labels"),
        (lambda: ss.rows(images(3), torch.tensor([0, 1]), N_CLASSES), "one label per image"),
        (lambda: random_model().loss(images()), "semisupervised.rows"),
        (lambda: random_model().loss(ss.rows(images(), None, N_CLASSES), beta=0.5), "no KL weight"),
        (lambda: ss.unlabelled_bound(torch.zeros(BATCH, N_CLASSES), torch.zeros(BATCH, N_CLASSES)), "shape \\(C, B\\)"),
        (lambda: random_model().labelled_bound(images(), torch.zeros(BATCH, 3)), "one-hot labels of shape"),
        (lambda: ss.M2(X_DIM, N_CLASSES, alpha=-1.0), "alpha must be non-negative"),
        (lambda: ss.ConditionalVAE(likelihood="autoregressive"), "unknown likelihood"),
    ],
)
def test_bad_inputs_get_clear_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
