"""Tests for course_code.collapse: aggressive inference-network training and the run helper (chapter 6)."""

import math

import pytest
import torch

from course_code import collapse, models, training

CONFIG = dict(x_dim=8, z_dim=2, hidden=(16,), likelihood="autoregressive")


def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    logits = 2.0 * z * torch.linspace(-1, 1, 8)
    return torch.bernoulli(torch.sigmoid(logits), generator=g)


def tiny_vae(seed=0, **overrides):
    torch.manual_seed(seed)
    return models.VAE(**{**CONFIG, **overrides})


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_encoder_steps_leave_the_decoder_unchanged():
    model, x = tiny_vae(), tiny_data()
    decoder_before, encoder_before = params(model.decoder), params(model.encoder)
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-2)
    steps = collapse.encoder_steps(model, x, optimizer, torch.Generator().manual_seed(0), batch_size=16, max_steps=7, window=100)
    assert steps == 7  # the window is never complete: the cap stops the loop
    for before, after in zip(decoder_before, model.decoder.parameters()):
        assert torch.equal(before, after)
    assert any(not torch.equal(b, a) for b, a in zip(encoder_before, model.encoder.parameters()))
    assert all(p.requires_grad for p in model.decoder.parameters())  # unfrozen afterwards


def test_encoder_steps_stop_when_the_loss_stops_improving():
    model, x = tiny_vae(), tiny_data()
    # A loss that no step can change: every window averages exactly 5, so the second is no better than the first.
    model.loss = lambda batch: (5.0 + sum((0 * p).sum() for p in model.encoder.parameters()), {})
    optimizer = torch.optim.SGD(model.encoder.parameters(), lr=0.1)
    steps = collapse.encoder_steps(model, x, optimizer, torch.Generator().manual_seed(0), batch_size=96, max_steps=100, window=5)
    assert steps == 10
    with pytest.raises(ValueError, match="max_steps"):
        collapse.encoder_steps(model, x, optimizer, torch.Generator(), max_steps=0)


def test_without_aggressive_mode_it_is_the_standard_fit():
    x, x_test = tiny_data(), tiny_data(32, seed=1)
    a, b = tiny_vae(), tiny_vae()
    ours = collapse.aggressive_fit(a, x, x_test, aggressive=False, epochs=3, batch_size=32, seed=5)
    theirs = training.fit(b, x, epochs=3, batch_size=32, x_test=x_test, seed=5)
    for key in ("elbo", "rec", "kl", "kl_weight"):
        assert ours[key] == theirs[key]
    assert ours["val_elbo"] == theirs["test_elbo"]
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert ours["aggressive"] == [0.0] * 3 and ours["inner_steps"] == [0.0] * 3


def test_aggressive_training_runs_the_inner_loop_and_is_reproducible():
    x, x_test = tiny_data(), tiny_data(32, seed=1)
    runs = []
    for _ in range(2):
        model = tiny_vae()
        history = collapse.aggressive_fit(model, x, x_test, epochs=2, batch_size=32, max_inner_steps=20, window=5, seed=3)
        runs.append((history, params(model)))
    (h1, p1), (h2, p2) = runs
    assert h1["aggressive"][0] == 1.0
    assert 5 <= h1["inner_steps"][0] <= 20
    for key in h1:
        if key != "time":
            assert h1[key] == h2[key], key
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert all(0 <= au <= CONFIG["z_dim"] for au in h1["au"])


def test_aggressive_mode_is_switched_off_when_the_mutual_information_stops_rising(monkeypatch):
    mi = iter([0.5, 1.0, 0.9, 2.0, 3.0])
    monkeypatch.setattr(collapse, "latent_diagnostics", lambda model, x, generator=None: {"kl": 1.0, "mi": next(mi), "au": 1.0})
    history = collapse.aggressive_fit(tiny_vae(), tiny_data(), tiny_data(32, 1), epochs=5, batch_size=48, max_inner_steps=4, window=2)
    assert history["aggressive"] == [1.0, 1.0, 1.0, 0.0, 0.0]  # MI fell after epoch 3: never aggressive again
    assert history["inner_steps"][3:] == [0.0, 0.0]
    assert all(s >= 2 for s in history["inner_steps"][:3])


def test_aggressive_mode_ends_after_its_epoch_budget_while_the_mutual_information_still_rises(monkeypatch):
    mi = iter([0.5, 1.0, 2.0, 3.0, 4.0])  # rising throughout: only the budget can end the aggressive mode
    monkeypatch.setattr(collapse, "latent_diagnostics", lambda model, x, generator=None: {"kl": 1.0, "mi": next(mi), "au": 1.0})
    history = collapse.aggressive_fit(tiny_vae(), tiny_data(), tiny_data(32, 1), epochs=5, batch_size=48, max_inner_steps=4,
                                      window=2, max_aggressive_epochs=2)
    assert history["aggressive"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert history["inner_steps"][2:] == [0.0, 0.0, 0.0]


def test_history_measures_kl_mi_and_active_units_on_the_validation_data():
    x, x_val = tiny_data(), tiny_data(64, seed=1)
    model = tiny_vae()
    history = collapse.aggressive_fit(model, x, x_val, aggressive=False, epochs=2, batch_size=32)
    with torch.no_grad():
        mu, logvar = model.encode(x_val)
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean().item()  # closed form, written out
    assert history["val_kl"][-1] == pytest.approx(kl, rel=1e-6)
    assert history["au"][-1] == float((mu.var(0) > 0.01).sum())
    assert history["val_elbo"][-1] <= 0
    # the same data on both sides of I_q ≤ E[KL], so the estimate stays below it up to Monte Carlo noise
    assert all(mi <= kl + 0.05 for mi, kl in zip(history["mi"], history["val_kl"]))


def test_leaving_aggressive_mode_looks_only_at_the_validation_data(monkeypatch):
    x, x_val = tiny_data(), tiny_data(32, 1)
    seen = []

    def diagnostics(model, data, generator=None):
        seen.append(data)
        return {"kl": 1.0, "mi": 1.0, "au": 1.0}

    monkeypatch.setattr(collapse, "latent_diagnostics", diagnostics)
    collapse.aggressive_fit(tiny_vae(), x, x_val, epochs=2, batch_size=48, max_inner_steps=2, window=1)
    assert len(seen) == 2 and all(d is x_val for d in seen)


@pytest.mark.parametrize("aggressive", [False, True], ids=["standard", "aggressive"])
def test_without_tracking_the_diagnostics_are_measured_only_while_aggressive_mode_needs_them(monkeypatch, aggressive):
    x, x_val = tiny_data(), tiny_data(32, 1)
    models_, histories = [], []
    for track in (True, False):
        mi = iter([0.5, 1.0, 0.9, 2.0])  # MI falls after epoch 3: aggressive mode ends there
        calls = []

        def diagnostics(model, data, generator=None):
            calls.append(1)
            return {"kl": 1.0, "mi": next(mi), "au": 1.0}

        monkeypatch.setattr(collapse, "latent_diagnostics", diagnostics)
        model = tiny_vae()
        histories.append(collapse.aggressive_fit(model, x, x_val, aggressive=aggressive, epochs=4, batch_size=48,
                                                 max_inner_steps=4, window=2, track=track))
        models_.append(params(model))
        histories[-1]["calls"] = len(calls)
    tracked, untracked = histories
    assert tracked["calls"] == 4 and untracked["calls"] == (3 if aggressive else 0)
    assert untracked.get("mi", []) == tracked["mi"][:untracked["calls"]]
    for key in ("elbo", "val_elbo", "aggressive", "inner_steps"):
        assert untracked[key] == tracked[key], key
    assert all(torch.equal(a, b) for a, b in zip(*models_)), "measuring does not change the training run"


def test_a_decoder_trained_with_its_code_stays_below_the_collapsed_optimum():
    pixels = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * 3)
    p_data = torch.softmax(torch.randn(8, generator=torch.Generator().manual_seed(0)), 0)
    fit = collapse.fit_on_grid(pixels, p_data, steps=300)
    best = (p_data * p_data.log()).sum().item()  # the collapsed pair reaches this exactly
    assert fit.elbo <= fit.log_px <= best
    # training did something: far above the untrained start, and close to the bound
    untrained = collapse.fit_on_grid(pixels, p_data, steps=0)
    assert fit.elbo > untrained.elbo + 0.1 and best - fit.log_px < 0.2
    # log p_θ(x) by an independent rule: self-normalized draws from the prior
    z = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(1))
    logits = fit.decoder(z)[:, None, :]
    log_lik = (pixels * logits - torch.nn.functional.softplus(logits)).sum(-1)
    reference = (p_data * (torch.logsumexp(log_lik, 0) - math.log(len(z)))).sum().item()
    assert fit.log_px == pytest.approx(reference, abs=5e-3)
    assert fit.mu.abs().max() > 0.1  # the fitted q do depend on x: the code is used


def test_callback_sees_epoch_zero_and_every_epoch_without_changing_training():
    x, x_test = tiny_data(), tiny_data(32, seed=1)
    seen = []
    with_cb = collapse.aggressive_fit(tiny_vae(), x, x_test, aggressive=False, epochs=2, batch_size=32,
                                      callback=lambda epoch, model: seen.append((epoch, torch.is_grad_enabled())))
    without = collapse.aggressive_fit(tiny_vae(), x, x_test, aggressive=False, epochs=2, batch_size=32)
    assert seen == [(0, False), (1, False), (2, False)]
    assert with_cb["elbo"] == without["elbo"]


def test_posterior_means_match_self_normalized_importance_sampling():
    model = tiny_vae(z_dim=1)
    x = tiny_data(5)
    quadrature, encoder_mean = collapse.posterior_means(model, x, limit=7.0, n_points=1001)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 1, 1, generator=g).expand(-1, len(x), 1)  # draws from the prior
    with torch.no_grad():
        weights = torch.softmax(model.log_likelihood(x, z), dim=0)
        reference = (weights * z[..., 0]).sum(0)
    torch.testing.assert_close(quadrature, reference, atol=0.01, rtol=0)
    torch.testing.assert_close(encoder_mean, model.encode(x)[0][:, 0].detach())
    with pytest.raises(ValueError, match="1-D latent"):
        collapse.posterior_means(tiny_vae(), x)


def test_run_reports_sensible_diagnostics():
    x, x_val, x_test = tiny_data(), tiny_data(48, seed=2), tiny_data(64, seed=1)
    result = collapse.run(x, x_val, x_test, CONFIG, epochs=3, seed=0, n_samples=200, batch_size=32)
    assert result.nll > 0 and math.isfinite(result.nll)
    assert result.nll <= -result.elbo + 0.5  # importance sampling is at least as tight as the ELBO, up to noise
    assert result.kl >= 0 and 0 <= result.au <= CONFIG["z_dim"] and result.time > 0
    assert -0.2 <= result.mi <= math.log(len(x_test))  # the estimator cannot exceed log N
    assert result.mi <= result.kl + 0.05  # measured on the same digits
    assert result.history["mi"][-1] == pytest.approx(result.mi, abs=0.3)
    assert len(result.history["val_elbo"]) == 3
    assert result.snapshots == {}


def test_run_snapshots_and_weighted_objectives():
    x, x_test = tiny_data(), tiny_data(64, seed=1)
    config = {**CONFIG, "z_dim": 1}
    result = collapse.run(x, x_test[:32], x_test[32:], config, epochs=2, seed=0, n_samples=50, batch_size=32,
                          snapshot_x=x_test[:10], snapshot_epochs=(0, 2))
    assert sorted(result.snapshots) == [0, 2]
    model_mean, encoder_mean = result.snapshots[2]
    assert model_mean.shape == encoder_mean.shape == (10,)
    annealed = collapse.run(x, x_test[:32], x_test[32:], config, epochs=2, beta=training.linear_warmup(4), n_samples=50, batch_size=32)
    assert annealed.history["kl_weight"][0] < annealed.history["kl_weight"][1] <= 1.0
    assert "mi" not in annealed.history and math.isfinite(annealed.mi) and len(annealed.history["val_elbo"]) == 2
    with pytest.raises(ValueError, match="plain ELBO"):
        collapse.run(x, x_test, x_test, config, epochs=1, beta=0.5, aggressive=True)


def test_table_shows_mean_and_standard_deviation():
    runs = [collapse.Run(None, {}, elbo=-1.0, nll=v, kl=2 * v, mi=0.0, au=1.0, time=1.0) for v in (1.0, 2.0, 3.0)]
    assert collapse.summary(runs, "nll") == (2.0, 1.0)
    text = collapse.table({"VAE": runs}, columns=("nll", "kl"))
    assert "2.00 (1.00)" in text and "4.00 (2.00)" in text and "NLL" in text
    with pytest.raises(ValueError, match="unknown columns"):
        collapse.table({"VAE": runs}, columns=("bleu",))


def test_synthetic_one_latent_samples_one_fixed_model():
    from course_code import data

    x, z = data.synthetic_one_latent(4000, seed=0)
    x_again, z_again = data.synthetic_one_latent(4000, seed=0)
    x_other, _ = data.synthetic_one_latent(4000, seed=1)
    assert x.shape == (4000, 20) and z.shape == (4000, 1)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x, x_again) and torch.equal(z, z_again) and not torch.equal(x, x_other)
    torch.testing.assert_close(x.mean(0), x_other.mean(0), atol=0.05, rtol=0)  # the same model behind both seeds
    # the first value depends on z alone: its frequency differs between z < 0 and z > 0
    assert abs(x[z[:, 0] > 0, 0].mean() - x[z[:, 0] < 0, 0].mean()) > 0.1
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        data.synthetic_one_latent(0)
