"""course_code.training: the fit loop on the digits, reproducibility, divergence, schedules, saving and loading."""

import math

import pytest
import torch
from torch import nn

from course_code import data, models, training


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: one thread is faster than two, and does not slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits(binarize="threshold")


def small_vae(seed: int = 0, **kwargs) -> models.VAE:
    torch.manual_seed(seed)
    return models.VAE(64, 2, (32,), **kwargs)


def quick_fit(model, x, **kwargs):
    return training.fit(model, x, **{"epochs": 2, "batch_size": 256, "progress": False, **kwargs})


def test_fit_lowers_the_loss_on_the_digits(digits):
    model = small_vae()
    before = training.evaluate(model, digits.x_test)["elbo"]
    history = quick_fit(model, digits.x_train, epochs=5, lr=3e-3, x_test=digits.x_test)
    after = training.evaluate(model, digits.x_test)["elbo"]
    assert history["elbo"][-1] > history["elbo"][0] + 5
    assert after > before + 5  # nats per image, on held-out digits
    assert history["test_elbo"][-1] == pytest.approx(after, abs=0.5)  # one sample of z per image: a little noise
    assert not model.training  # fit leaves the model in evaluation mode


def test_history_keys_and_lengths(digits):
    history = quick_fit(small_vae(), digits.x_train, epochs=3, x_test=digits.x_test)
    assert set(history) == {"elbo", "rec", "kl", "kl_weight", "time", "test_elbo"}
    assert all(len(values) == 3 for values in history.values())
    assert history["time"] == sorted(history["time"])  # cumulative wall time
    for e, r, k in zip(history["elbo"], history["rec"], history["kl"]):
        assert e == pytest.approx(r - k)
    assert "test_elbo" not in quick_fit(small_vae(), digits.x_train, epochs=1)


def test_same_seed_gives_bit_for_bit_the_same_run(digits):
    runs = []
    for _ in range(2):
        model = small_vae(seed=3)
        history = quick_fit(model, digits.x_train, seed=7, dynamic_binarization=True, x_test=digits.x_test)
        history.pop("time")
        runs.append((model.state_dict(), history))
    (state_a, history_a), (state_b, history_b) = runs
    assert history_a == history_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    other = small_vae(seed=3)
    quick_fit(other, digits.x_train, seed=8, dynamic_binarization=True)
    assert not torch.equal(other.state_dict()["encoder.head.weight"], state_a["encoder.head.weight"])


def test_on_epoch_sees_each_record_as_the_history_stores_it(digits):
    seen = []
    history = quick_fit(small_vae(), digits.x_train, epochs=3, on_epoch=lambda epoch, record: seen.append((epoch, dict(record))))
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert {key: [record[key] for _, record in seen] for key in history} == history


def test_log_px_in_batches_equals_the_model_scoring_all_rows_at_once(digits):
    model = small_vae()
    x = digits.x_test[:30]
    batched = training.log_px(model, x, n_samples=40, seed=5, batch_size=7)
    whole = model.log_px(x, n_samples=40, generator=torch.Generator().manual_seed(5))
    assert batched.shape == (30,)
    # Batches draw the same standard normals in another order, so the estimates agree within Monte Carlo error
    assert abs(batched.mean() - whole.mean()) < 3 * (batched - whole).std() / math.sqrt(len(x)) + 1e-9
    assert not batched.equal(whole)  # (and are not the same numbers, so the comparison above is not vacuous)
    assert training.log_px(model, x, n_samples=40, seed=5, batch_size=7).equal(batched)  # the seed fixes it


def test_linear_warmup():
    schedule = training.linear_warmup(10)
    assert [schedule(s) for s in (0, 5, 10, 25)] == [0.0, 0.5, 1.0, 1.0]
    schedule = training.linear_warmup(4, start=0.2, end=0.6)
    assert [schedule(s) for s in (0, 2, 4, 9)] == pytest.approx([0.2, 0.4, 0.6, 0.6])
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        training.linear_warmup(0)


def test_fit_applies_the_schedule_per_step(digits):
    # 1,437 images in batches of 256: 6 steps per epoch; weights are averaged per image
    history = quick_fit(small_vae(), digits.x_train, epochs=2, beta=training.linear_warmup(12))
    sizes = [256] * 5 + [len(digits.x_train) - 5 * 256]
    expected = [sum(s / 12 * n for s, n in zip(range(e * 6, e * 6 + 6), sizes)) / len(digits.x_train) for e in (0, 1)]
    assert history["kl_weight"] == pytest.approx(expected)
    assert quick_fit(small_vae(), digits.x_train, epochs=1, beta=0.25)["kl_weight"] == pytest.approx([0.25])


def test_a_diverging_run_stops_naming_the_step(digits):
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+\. Try a smaller learning rate \(now 1e\+06\)"):
        quick_fit(small_vae(), digits.x_train, lr=1e6)


class NaNAfter(nn.Module):
    """A model whose loss becomes NaN at a given step."""

    config: dict = {}

    def __init__(self, bad_step: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls, self.bad_step = 0, bad_step

    def loss(self, x, beta=1.0, free_bits=0.0, n_samples=1):
        value = self.w * x.mean()
        if self.calls == self.bad_step:
            value = value * float("nan")
        self.calls += 1
        return value, {"value": value.item()}


def test_a_nan_loss_stops_training_naming_epoch_and_step(digits):
    # 6 steps per epoch: step 8 is the third step of epoch 2
    with pytest.raises(FloatingPointError, match=r"the loss became nan at epoch 2, step 8"):
        quick_fit(NaNAfter(bad_step=8), digits.x_train, epochs=3)


def test_bad_arguments(digits):
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0, 64\)\)"):
        training.fit(small_vae(), torch.zeros(0, 64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        training.fit(small_vae(), digits.x_train.numpy())
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        training.fit(small_vae(), digits.x_train, epochs=0)
    x = digits.x_train.clone()
    x[3, 5] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):  # bad data is a ValueError, not a divergence
        quick_fit(small_vae(), x)


# ---- saving and loading -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bernoulli", "gaussian", "autoregressive", "autoencoder"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, digits, kind):
    torch.manual_seed(0)
    model = models.Autoencoder(64, 3, (16,)) if kind == "autoencoder" else models.VAE(64, 3, (16,), likelihood=kind)
    path = training.save(model, tmp_path / "sub" / "model.pt")
    assert path == tmp_path / "sub" / "model.pt" and path.exists()
    loaded = training.load(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    x = digits.x_test[:10]
    model.eval()
    if kind == "autoencoder":
        assert torch.equal(loaded(x), model(x))
    else:
        assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x), model.encode(x)))
        z = torch.randn(4, 10, 3, generator=torch.Generator().manual_seed(0))
        assert torch.equal(loaded.log_likelihood(x, z), model.log_likelihood(x, z))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["model.pt"]


def test_an_interrupted_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    old, new = small_vae(seed=0), small_vae(seed=1)
    path = training.save(old, tmp_path / "model.pt")
    before = path.read_bytes()

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.save(new, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    with pytest.raises(KeyboardInterrupt):
        training.save(new, tmp_path / "fresh.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no half-written file either
    monkeypatch.undo()
    assert torch.equal(training.load(path).encoder.head.weight, old.encoder.head.weight)


def test_load_rejects_an_unknown_model_class(tmp_path):
    torch.save({"class": "Transformer", "config": {}, "state": {}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="unknown model class 'Transformer'"):
        training.load(tmp_path / "odd.pt")


# ---- progress bar -----------------------------------------------------------------------------

def test_progress_bar_is_off_under_course_progress_0_and_on_when_forced(digits, monkeypatch, capsys):
    x = digits.x_train[:300]
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    training.fit(small_vae(), x, epochs=2)
    assert capsys.readouterr().err == ""
    training.fit(small_vae(), x, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "VAE" in err and "2/2" in err
    monkeypatch.setenv("COURSE_PROGRESS", "1")
    assert training.show_progress(None) and not training.show_progress(False)


def test_evaluate_averages_over_the_whole_set(digits):
    model = small_vae()
    x = digits.x_test[:250]
    chunked = training.evaluate(model, x, batch_size=100)
    mu, logvar = model.encode(x)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1).mean().item()  # the analytic KL: no sampling noise
    assert chunked["kl"] == pytest.approx(kl, rel=1e-5)
    assert math.isfinite(chunked["elbo"]) and set(chunked) == {"elbo", "rec", "kl"}
    assert model.training  # evaluate restores the mode it found


def test_validation_split_is_a_seeded_partition_of_the_rows():
    x = torch.arange(50.0)[:, None]
    train, val = training.validation_split(x, 0.2, seed=3)
    assert len(train) == 40 and len(val) == 10
    assert sorted(torch.cat([train, val])[:, 0].tolist()) == x[:, 0].tolist()
    again, _ = training.validation_split(x, 0.2, seed=3)
    assert torch.equal(train, again)
    with pytest.raises(ValueError, match="fraction"):
        training.validation_split(x, 0.0)


# ---- learning-rate schedule and time budget -----------------------------------------------------

def test_cosine_lr_closed_form():
    at = training.cosine_lr(0.01, 8)
    assert at(0) == 0.01 and at(8) == 0.0 and at(20) == 0.0  # ends at 0 and stays there
    assert at(4) == pytest.approx(0.005) and at(2) == pytest.approx(0.01 * (2 + math.sqrt(2)) / 4)
    with pytest.raises(ValueError, match="total_steps must be at least 1, got 0"):
        training.cosine_lr(0.01, 0)


def learning_rates(monkeypatch) -> list[float]:
    """The learning rate of every Adam update fit makes, recorded as each step is taken."""
    seen: list[float] = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return seen


def test_fit_decays_the_learning_rate_by_the_cosine_step_by_step(digits, monkeypatch):
    seen = learning_rates(monkeypatch)
    history = quick_fit(small_vae(), digits.x_train, epochs=3, lr=0.004, lr_schedule="cosine")
    total = 3 * 6  # 1,437 images in batches of 256: 6 steps per epoch
    expected = [0.004 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert history["lr"] == pytest.approx([expected[5], expected[11], expected[17]])  # each epoch's last step
    assert expected[-1] < 0.004 * 0.01  # the last update is nearly at 0


def test_a_constant_rate_is_the_default_and_adds_nothing_to_the_history(digits, monkeypatch):
    seen = learning_rates(monkeypatch)
    default = quick_fit(small_vae(), digits.x_train, lr=0.002)
    assert seen == [0.002] * 12 and "lr" not in default
    constant = quick_fit(small_vae(), digits.x_train, lr=0.002, lr_schedule="constant")
    cosine = quick_fit(small_vae(), digits.x_train, lr=0.002, lr_schedule="cosine")
    assert constant["elbo"] == default["elbo"] and cosine["elbo"] != default["elbo"]


def ticking_clock(monkeypatch) -> None:
    """A fake wall clock that advances one second each time fit reads it."""
    now = [0.0]

    def tick():
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(training.time, "perf_counter", tick)


def test_a_time_budget_stops_after_the_epoch_in_which_it_runs_out(digits, monkeypatch):
    ticking_clock(monkeypatch)  # read once at the start, then once per epoch: epoch e ends at e seconds
    history = quick_fit(small_vae(), digits.x_train, epochs=10, max_seconds=2.5)
    assert history["time"] == [1.0, 2.0, 3.0] and history["stopped_after_epoch"] == [3]
    assert all(len(values) == 3 for key, values in history.items() if key != "stopped_after_epoch")
    enough = quick_fit(small_vae(), digits.x_train, epochs=4, max_seconds=100.0)
    assert len(enough["elbo"]) == 4 and "stopped_after_epoch" not in enough
    last = quick_fit(small_vae(), digits.x_train, epochs=3, max_seconds=2.5)  # runs out in the last epoch: a full run
    assert len(last["elbo"]) == 3 and "stopped_after_epoch" not in last


def test_a_time_budget_on_the_real_clock(digits):
    history = quick_fit(small_vae(), digits.x_train, epochs=1000, max_seconds=1e-6)
    assert len(history["elbo"]) == 1 and history["stopped_after_epoch"] == [1]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"lr_schedule": "linear"}, ValueError, r"unknown lr_schedule 'linear'; choose one of \('constant', 'cosine'\)"),
        ({"max_seconds": 0}, ValueError, "max_seconds must be positive, got 0"),
        ({"max_seconds": -5.0}, ValueError, "max_seconds must be positive"),
        ({"max_seconds": float("nan")}, ValueError, "max_seconds must be a finite number"),
        ({"max_seconds": "60"}, TypeError, "max_seconds must be a number"),
    ],
)
def test_bad_schedule_and_budget_arguments(digits, kwargs, error, message):
    with pytest.raises(error, match=message):
        quick_fit(small_vae(), digits.x_train, **kwargs)
