"""python -m course_code.train: a short run on the digits, its outputs (checked first, written whole), Ctrl-C, and one-line errors."""

import math
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from course_code import data, models, train, training


@pytest.fixture(autouse=True)
def quiet_and_restored(monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    monkeypatch.setenv("COURSE_THREADS", "1")  # a tiny model: one thread is faster, even on a busy machine
    monkeypatch.delenv("COURSE_MNIST", raising=False)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def run(tmp_path, *extra):
    return train.main(["--epochs", "2", "--hidden", "32", "--iw-samples", "20", "--out", str(tmp_path), *extra])


def timeless(out: str) -> str:
    """The report without its wall-clock figures (seconds and rates), which differ from run to run."""
    return re.sub(r"[\d,.]+ (s|samples/s|test images/s)\b", r"… \1", out)


def nats(name: str, out: str) -> float:
    return float(re.search(rf"{re.escape(name)}\s+(-?\d+\.\d+) nats", out).group(1))


@pytest.mark.parametrize("binarize", ["dynamic", "threshold"])
def test_a_short_run_on_the_digits_reports_and_saves(tmp_path, capsys, binarize):
    assert run(tmp_path, "--binarize", binarize) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress bar under COURSE_PROGRESS=0
    elbo, log_px = nats("test ELBO", captured.out), nats("test log p(x)", captured.out)
    assert -64 * 0.7 < elbo < 0  # better than coin flips (64 ln 2 ≈ 44 nats), worse than perfect
    assert elbo < log_px < 0  # the importance-sampled estimate tightens the bound (K = 20)
    assert "K = 20" in captured.out and f"binarize='{binarize}'" in captured.out
    model = training.load(tmp_path / "model.pt")
    assert isinstance(model, models.VAE) and model.config["hidden"] == (32,) and model.z_dim == 2
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_epoch_prints_its_time_and_samples_per_second(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "3") == 0
    out = capsys.readouterr().out
    epochs = re.findall(r"^epoch (\d)/3  ELBO +(-?\d+\.\d\d) +(\d+\.\d\d) s +([\d,]+) samples/s$", out, re.M)
    assert [int(e[0]) for e in epochs] == [1, 2, 3]
    n_train = len(data.load_digits().x_train)
    for _, _, seconds, rate in epochs:  # the rate is the training set over the epoch's time, up to the printed rounding
        assert float(rate.replace(",", "")) == pytest.approx(n_train / float(seconds), rel=0.01, abs=n_train / float(seconds) ** 2 * 0.006)
    total = float(re.search(r"^trained in (\d+\.\d) s: ([\d,]+) samples/s on average$", out, re.M).group(1))
    assert total == pytest.approx(sum(float(e[2]) for e in epochs), abs=0.1)
    assert re.search(r"^evaluated in \d+\.\d s: [\d,]+ test images/s at K = 20$", out, re.M)


def test_threads_come_from_the_option_then_course_threads_then_every_core(tmp_path, capsys, monkeypatch):
    run(tmp_path, "--epochs", "1", "--threads", "2")
    assert "with 2 thread(s)" in capsys.readouterr().out and torch.get_num_threads() == 2
    assert train.parse_args([]).threads == 1  # COURSE_THREADS=1, set by the fixture
    monkeypatch.delenv("COURSE_THREADS")
    assert train.parse_args([]).threads == os.cpu_count()


def test_the_same_seed_gives_the_same_report(tmp_path, capsys):
    run(tmp_path / "a", "--seed", "3", "--epochs", "1")
    first = timeless(capsys.readouterr().out.replace(str(tmp_path / "a"), ""))
    run(tmp_path / "b", "--seed", "3", "--epochs", "1")
    assert timeless(capsys.readouterr().out.replace(str(tmp_path / "b"), "")) == first


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_by_default_float64_on_request(tmp_path, capsys, dtype):
    run(tmp_path, "--epochs", "1", *(["--dtype", dtype] if dtype == "float64" else []))
    assert dtype in capsys.readouterr().out.splitlines()[0]  # setup's line names the dtype
    state = torch.load(tmp_path / "model.pt", weights_only=True)["state"]
    assert {t.dtype for t in state.values()} == {getattr(torch, dtype)}
    torch.set_default_dtype(torch.float64)  # loading rebuilds the model in the dtype it was saved in
    assert next(training.load(tmp_path / "model.pt").parameters()).dtype == getattr(torch, dtype)


def test_progress_bars_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "1")
    run(tmp_path, "--epochs", "1")
    err = capsys.readouterr().err
    assert "VAE" in err and "log p(x)" in err


def test_offline_mnist_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known (simulated)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(data, "MNIST_DOWNLOAD_ROOT", tmp_path / "cache")
    assert run(tmp_path / "out", "--dataset", "mnist") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MNIST could not be downloaded")
    assert "--data-dir" in err and "--dataset digits" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_missing_data_dir_is_the_same_kind_of_error(tmp_path, capsys):
    assert run(tmp_path, "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err and "--data-dir" in err


@pytest.mark.parametrize(
    "argv", [["--data-dir", "x"], ["--epochs", "0"], ["--dataset", "cifar"], ["--iw-samples", "-5"], ["--threads", "0"]],
    ids=["data-dir-without-mnist", "zero-epochs", "unknown-dataset", "negative-samples", "zero-threads"],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "error:" in err and "(see --help)" in err


# ---- outputs: checked first, written whole, never mixed with another run's --------------------

@pytest.fixture
def previous_run(tmp_path):
    """An output folder holding an earlier run's two files."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"earlier model")
    (out / "samples.png").write_bytes(b"earlier figure")
    return out


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_training_keeps_the_previous_outputs(previous_run, capsys, monkeypatch):
    monkeypatch.setattr(training, "fit", interrupt)
    assert run(previous_run) == 130
    err = capsys.readouterr().err
    assert err == "interrupted; nothing was saved\n"
    assert sorted(p.name for p in previous_run.iterdir()) == ["model.pt", "samples.png"]  # no temporary file left
    assert (previous_run / "model.pt").read_bytes() == b"earlier model"
    assert (previous_run / "samples.png").read_bytes() == b"earlier figure"


def test_ctrl_c_while_the_figure_is_written_leaves_no_half_file(previous_run, capsys, monkeypatch):
    def half_written(model, dataset, path, seed):
        path.write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_figure", half_written)
    assert run(previous_run) == 130
    assert capsys.readouterr().err == "interrupted; nothing was saved\n"
    assert sorted(p.name for p in previous_run.iterdir()) == ["model.pt", "samples.png"]
    assert (previous_run / "model.pt").read_bytes() == b"earlier model"


def test_ctrl_c_during_the_evaluation_keeps_this_runs_model_and_figure_together(previous_run, capsys, monkeypatch):
    monkeypatch.setattr(training, "log_px", interrupt)
    assert run(previous_run) == 130
    captured = capsys.readouterr()
    assert captured.err == f"interrupted during the evaluation; the trained model is saved in {previous_run}\n"
    assert "test log p(x)" not in captured.out
    assert sorted(p.name for p in previous_run.iterdir()) == ["model.pt", "samples.png"]
    assert isinstance(training.load(previous_run / "model.pt"), models.VAE)  # this run's model…
    assert (previous_run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # …next to this run's figure


def test_ctrl_c_just_after_saving_says_the_outputs_are_saved(previous_run, capsys, monkeypatch):
    publish = train.Outputs.publish

    def publish_then_interrupt(outputs):
        publish(outputs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train.Outputs, "publish", publish_then_interrupt)
    assert run(previous_run) == 130
    assert capsys.readouterr().err == f"interrupted; the trained model is saved in {previous_run}\n"
    assert sorted(p.name for p in previous_run.iterdir()) == ["model.pt", "samples.png"]
    assert isinstance(training.load(previous_run / "model.pt"), models.VAE)


def test_outputs_have_the_usual_mode(tmp_path, capsys):
    import os

    old = os.umask(0o022)
    try:
        assert run(tmp_path, "--epochs", "1") == 0
    finally:
        os.umask(old)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("model.pt", "samples.png")}
    assert modes == {"model.pt": 0o644, "samples.png": 0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "samples.png"]


def test_an_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write anywhere: the permission check cannot fail")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    monkeypatch.setattr(training, "fit", interrupt)  # reaching training would be the bug
    assert run(locked / "out") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written to" in err and "choose another --out" in err


def test_a_folder_that_refuses_files_fails_before_training_and_is_removed(tmp_path, capsys, monkeypatch):
    def refuse(path, *args, **kwargs):  # what a read-only folder does to a user who is not root
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "touch", refuse)
    monkeypatch.setattr(training, "fit", interrupt)  # reaching training would be the bug
    assert run(tmp_path / "new" / "out") == 1
    err = capsys.readouterr().err
    assert err == f"error: --out {tmp_path / 'new' / 'out'} cannot be written to (Permission denied); choose another --out\n"
    assert list(tmp_path.iterdir()) == []  # the folders it had created are gone again


# ---- training options and the best recipe's preset --------------------------------------------

def recording_fit(monkeypatch) -> dict:
    """Run training.fit as usual, keeping its arguments and the history it returns."""
    seen: dict = {}
    fit = training.fit

    def recording(model, x, **kwargs):
        seen.update(kwargs, model=model, n=len(x))
        seen["history"] = fit(model, x, **kwargs)
        return seen["history"]

    monkeypatch.setattr(training, "fit", recording)
    return seen


def test_the_best_preset_sets_the_recipe():
    args = train.parse_args(["--preset", "best"])
    recipe = {key: getattr(args, key) for key in train.PRESETS["best"]}
    assert recipe == dict(
        hidden=[512, 512], latent_dim=32, activation="elu", batch_size=256, lr=3e-3, lr_schedule="cosine",
        warmup_epochs=2, epochs=317, minutes=30.0,
    )
    plain = train.parse_args([])
    assert (plain.activation, plain.lr_schedule, plain.warmup_epochs, plain.minutes, plain.preset) == ("relu", "constant", 0, None, None)


def test_options_given_beside_the_preset_override_it():
    args = train.parse_args(["--lr", "0.001", "--preset", "best", "--hidden", "64", "--minutes", "2.5"])
    assert (args.lr, args.hidden, args.minutes, args.activation, args.batch_size) == (0.001, [64], 2.5, "elu", 256)


def test_the_options_reach_the_model_and_the_training(tmp_path, capsys, monkeypatch):
    seen = recording_fit(monkeypatch)
    argv = ["--activation", "tanh", "--lr-schedule", "cosine", "--warmup-epochs", "1", "--batch-size", "500", "--lr", "0.002"]
    assert run(tmp_path, *argv) == 0
    assert "stopped after" not in capsys.readouterr().out
    assert seen["lr_schedule"] == "cosine" and seen["max_seconds"] is None and seen["lr"] == 0.002
    history = seen["history"]
    steps = math.ceil(seen["n"] / 500)  # the warm-up spans the first epoch's steps, then the weight is 1
    sizes = [500] * (steps - 1) + [seen["n"] - 500 * (steps - 1)]
    assert history["kl_weight"] == pytest.approx([sum(t / steps * s for t, s in zip(range(steps), sizes)) / seen["n"], 1.0])
    assert history["lr"][-1] == pytest.approx(0.002 * (1 + math.cos(math.pi * (2 * steps - 1) / (2 * steps))) / 2)
    model = training.load(tmp_path / "model.pt")
    assert model.config["activation"] == "tanh" and isinstance(model.decoder.net[1], torch.nn.Tanh)


def test_without_warm_up_the_kl_weight_is_one(tmp_path, monkeypatch):
    seen = recording_fit(monkeypatch)
    assert run(tmp_path) == 0
    assert seen["beta"] == 1.0 and seen["history"]["kl_weight"] == [1.0, 1.0] and "activation" not in seen["model"].config


def test_minutes_stop_the_training_and_the_report_says_so(tmp_path, capsys, monkeypatch):
    seen = recording_fit(monkeypatch)
    now = [0.0]

    def tick():  # a wall clock that advances 5 seconds at each reading
        now[0] += 5.0
        return now[0]

    monkeypatch.setattr(training.time, "perf_counter", tick)
    assert run(tmp_path, "--epochs", "50", "--minutes", "0.2") == 0  # 12 s: epoch e ends at 5e s, so 3 epochs
    out = capsys.readouterr().out
    assert seen["max_seconds"] == pytest.approx(12.0)
    assert re.findall(r"^epoch +(\d+)/50", out, re.M) == ["1", "2", "3"]
    assert "stopped after epoch 3 of 50: the 0.2 minutes of --minutes had passed" in out
    assert re.search(r"trained in 15\.0 s: ([\d,]+) samples/s", out).group(1) == f"{3 * seen['n'] / 15:,.0f}"


@pytest.mark.parametrize(
    "argv",
    [["--activation", "gelu"], ["--lr-schedule", "linear"], ["--warmup-epochs", "-1"], ["--warmup-epochs", "1.5"],
     ["--minutes", "0"], ["--minutes", "nan"], ["--preset", "fast"]],
    ids=["activation", "lr-schedule", "negative-warmup", "fractional-warmup", "zero-minutes", "nan-minutes", "preset"],
)
def test_bad_training_options_are_usage_errors_naming_the_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and f"argument {argv[0]}:" in err


def test_the_help_spells_out_the_preset_as_options_that_give_the_same_settings(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    spelled = re.search(r"recipe for MNIST, (.*?); options given", text).group(1)
    argv = spelled.replace(",", "").split()
    assert vars(train.parse_args(argv)) == {**vars(train.parse_args(["--preset", "best"])), "preset": None}
