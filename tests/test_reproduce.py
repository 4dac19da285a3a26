"""course_code.reproduce: every experiment at its smoke budget on real MNIST, the committed records' schema and
age, the source hash, and the command's errors."""

import json
import math
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from course_code import reproduce, training

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "results").glob("*.json"))


@pytest.fixture(autouse=True)
def restored():
    deterministic, threads, dtype = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), torch.get_default_dtype()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="module")
def mnist(mnist_originals):
    return mnist_originals


def finite_numbers(value):
    """Every number in a JSON value, however nested."""
    if isinstance(value, dict):
        for item in value.values():
            yield from finite_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from finite_numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.parametrize("name", list(reproduce.EXPERIMENTS))
def test_every_experiment_runs_at_its_smoke_budget_on_real_mnist(name, mnist, tmp_path, capsys):
    assert reproduce.main([name, "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / name}.json" in capsys.readouterr().out
    record = reproduce.check_record(json.loads((tmp_path / f"{name}.json").read_text()))
    assert record["budget"] == "smoke" and record["budget_settings"] == reproduce.EXPERIMENTS[name].smoke
    assert record["command"] == f"python -m course_code.reproduce {name} --smoke --threads 1 --mnist {mnist} --out {tmp_path}"
    assert record["threads"] == 1 and record["source_hash"] == reproduce.source_hash(reproduce.EXPERIMENTS[name])
    assert (tmp_path / record["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(math.isfinite(v) for v in finite_numbers(record["results"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.json", f"{name}.png"])  # no temporary file left


def test_seed002_at_smoke_budget_reports_what_the_page_reads(mnist, tmp_path):
    reproduce.main(["seed002", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "seed002.json").read_text())["results"]
    epochs = reproduce.EXPERIMENTS["seed002"].smoke["epochs"]
    assert len(results["grey_epoch_loss"]) == len(results["binary_epoch_loss"]) == epochs
    assert 0 < results["grey_epoch_loss"][0] < 784 * math.log(2) * 1.5  # nats per image: near coin flips at worst
    binary = results["binary"]
    assert binary["n_test"] == reproduce.EXPERIMENTS["seed002"].smoke["n_test"] and binary["log_px_se"] > 0
    assert -784 * math.log(2) * 1.5 < binary["test_elbo"] < 0 and -784 * math.log(2) * 1.5 < binary["log_px"] < 0


def test_recipe_at_smoke_budget_reports_what_the_page_reads(mnist, tmp_path):
    reproduce.main(["recipe", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "recipe.json").read_text())["results"]
    budget = reproduce.EXPERIMENTS["recipe"].smoke
    for name, settings in reproduce.RECIPES.items():
        row = results[name]
        assert row["settings"] == settings and row["n_test"] == budget["n_test"] and row["iw_samples"] == budget["iw_samples"]
        assert len(row["train_elbo"]) == row["epochs"]
        assert row["train_time_s"] >= 60 * budget["minutes"] or row["epochs"] == results["planned_epochs_best"]
        minutes = [point["minutes"] for point in row["curve"]]
        assert minutes == sorted(minutes) and row["curve"][-1]["epoch"] == row["epochs"]
        assert row["log_px"] >= row["test_elbo"] - 3 * row["log_px_se"]  # the importance-sampled bound is the tighter one
    assert results["best"]["epochs"] <= results["planned_epochs_best"]
    # The paired difference is the difference of the means (up to the records' rounding to 0.001).
    assert results["best_minus_standard"] == pytest.approx(results["best"]["log_px"] - results["standard"]["log_px"], abs=2e-3)
    assert results["unseen_digits"] == budget["n_test"] - budget["chosen_on"]


def test_iwae_and_vampprior_at_smoke_budget_pair_each_gain_with_the_first_model(mnist, tmp_path):
    reproduce.main(["iwae", "vampprior", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    for name, key in (("iwae", "by_k"), ("vampprior", "by_prior")):
        budget = reproduce.EXPERIMENTS[name].smoke
        rows = json.loads((tmp_path / f"{name}.json").read_text())["results"][key]
        assert rows[0]["gain"] == rows[0]["gain_se"] == 0  # the first model is the baseline
        for row in rows:
            # the paired gain is the difference of the means (up to the records' rounding to 0.001)
            assert row["gain"] == pytest.approx(row["log_px"] - rows[0]["log_px"], abs=2e-3)
            assert row["n_test"] == budget["n_test"] and row["iw_samples"] == budget["iw_samples"]
            assert 0 <= row["active_units"] <= row["latent_dim"] == budget["z_dim"]
            assert -784 * math.log(2) * 1.5 < row["test_elbo"] < 0 and row["log_px_se"] > 0
    rows = json.loads((tmp_path / "iwae.json").read_text())["results"]["by_k"]
    assert [(row["k"], row["objective"]) for row in rows] == [(k, "elbo" if k == 1 else "iwae") for k in reproduce.EXPERIMENTS["iwae"].smoke["ks"]]
    assert [row["prior"] for row in json.loads((tmp_path / "vampprior.json").read_text())["results"]["by_prior"]] == ["standard", "vampprior"]


def test_paired_gain_is_the_mean_difference_with_its_standard_error():
    lp, baseline = torch.tensor([-90.0, -85.5, -101.25, -88.0]), torch.tensor([-91.0, -85.0, -103.25, -88.5])
    differences = [1.0, -0.5, 2.0, 0.5]  # by hand
    mean = sum(differences) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3 / 4)
    assert reproduce.paired_gain(lp, baseline) == {"gain": round(mean, 3), "gain_se": round(se, 3)}


def test_vqvae_at_smoke_budget_counts_the_codes_the_page_reads(mnist, tmp_path):
    reproduce.main(["vqvae", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "vqvae.json").read_text())["results"]
    budget = reproduce.EXPERIMENTS["vqvae"].smoke
    runs = results["runs"]
    assert [(run["restarts"], run["seed"]) for run in runs] == [(r, s) for r in (False, True) for s in range(budget["seeds"])]
    for run in runs:
        usage = run["usage_sorted"]
        assert len(usage) == budget["n_codes"] and usage == sorted(usage, reverse=True)
        assert sum(usage) == budget["n_train"] * budget["n_latents"]  # every position of every training digit chooses one code
        assert run["dead_codes"] == usage.count(0)
        assert 1 <= run["perplexity"] <= budget["n_codes"] - run["dead_codes"] + 1e-6
        assert run["test_bound"] < run["test_reconstruction"] < 0  # log p(c) < 0 for a prior over more than one code
        assert run["prior"] in ("independent", "Markov") and run["smoothing"] in (0.1, 0.5, 2.0)
    assert results["code_bits"] == pytest.approx(budget["n_latents"] * math.log2(budget["n_codes"]), abs=1e-3)
    for key in ("test_digits", "no_restarts", "restarts"):
        images = torch.tensor(results["reconstructions"][key])
        assert images.shape == (8, 784) and 0 <= images.min() and images.max() <= 1


def test_race_keeps_one_snapshot_per_mark_passed_and_the_final_weights():
    torch.manual_seed(0)
    x = torch.rand(64, 12)
    recipe = dict(reproduce.RECIPES["best"], hidden=[8], latent_dim=2, batch_size=16)
    model, history, snapshots = reproduce.race(recipe, x, seconds=1e6, epochs=3, marks=[0.0, 0.0, 1e9], seed=0)
    assert [epoch for epoch, _, _ in snapshots] == [1, 3]  # both zero marks fall in epoch 1; the far mark is never reached
    assert snapshots[0][1] == history["time"][0] and snapshots[-1][1] == history["time"][-1]
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in snapshots[-1][2].items())
    assert not all(torch.equal(value, model.state_dict()[key]) for key, value in snapshots[0][2].items())  # a copy, not a view
    steps = 3 * 64 // 16  # the cosine is planned over every step of the 3 epochs: its last step is the one before 0
    assert history["lr"][-1] == pytest.approx(training.cosine_lr(recipe["lr"], steps)(steps - 1), rel=1e-12)


def test_epochs_within_counts_the_epochs_a_time_budget_holds():
    x = torch.rand(64, 12)
    recipe = dict(reproduce.RECIPES["standard"], hidden=[8], latent_dim=2, batch_size=16)
    epochs, per_epoch = reproduce.epochs_within(recipe, x, 1e-9, seed=0)
    assert epochs == 1 and per_epoch > 0  # never fewer than one epoch
    epochs, per_epoch = reproduce.epochs_within(recipe, x, 1000 * per_epoch, seed=0)
    assert 10 <= epochs <= 100_000  # about 1,000, as far as the machine's noise lets one epoch's time repeat


def test_the_cli_preset_is_the_recipe_the_experiment_races():
    from course_code import train

    assert {key: train.PRESETS["best"][key] for key in reproduce.RECIPES["best"]} == reproduce.RECIPES["best"]
    assert train.PRESETS["best"]["minutes"] == reproduce.EXPERIMENTS["recipe"].full["minutes"]


def test_collapse_at_smoke_budget_trains_both_arms_from_one_start_and_reports_what_the_page_reads(mnist, tmp_path):
    reproduce.main(["collapse", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    budget = reproduce.EXPERIMENTS["collapse"].smoke
    rows = json.loads((tmp_path / "collapse.json").read_text())["results"]["by_arm"]
    assert [row["arm"] for row in rows] == ["standard", "aggressive"]
    standard, aggressive = rows
    assert standard["aggressive_epochs"] == 0 and standard["inner_steps"] == 0
    assert 1 <= aggressive["aggressive_epochs"] <= budget["max_aggressive_epochs"]
    assert aggressive["inner_steps"] >= 2  # the inner loop compares two windows of 10 steps before it can stop
    assert aggressive["history"]["aggressive"][: aggressive["aggressive_epochs"]] == [1.0] * aggressive["aggressive_epochs"]
    for row in rows:
        assert all(len(values) == budget["epochs"] for values in row["history"].values())
        assert row["nll"] == pytest.approx(-row["log_px"], abs=1e-3)
        assert row["gain"] == pytest.approx(row["log_px"] - standard["log_px"], abs=2e-3)
        assert 0 <= row["active_units"] <= row["latent_dim"] == budget["z_dim"]
        assert row["mi"] <= row["kl"] + 0.05  # I_q(x; z) <= E[KL], up to the estimate's noise, on the same digits
        assert 0 <= row["mi"] <= math.log(budget["n_test"]) + 1e-6  # and never above log N for N digits


def test_gaps_at_smoke_budget_split_each_inference_gap_into_its_two_parts(mnist, tmp_path):
    reproduce.main(["gaps", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gaps.json").read_text())["results"]["by_family"]
    assert [row["family"] for row in rows] == ["diagonal", "flow"]
    for row in rows:
        assert row["n_test"] == reproduce.EXPERIMENTS["gaps"].smoke["n_test"]
        assert row["approximation_gap"] == pytest.approx(row["log_px"] - row["elbo_best"], abs=2e-3)
        assert row["amortization_gap"] == pytest.approx(row["elbo_best"] - row["elbo_amortized"], abs=2e-3)
        assert row["inference_gap"] == pytest.approx(row["approximation_gap"] + row["amortization_gap"], abs=2e-3)


def test_labels_at_smoke_budget_scores_every_arm_of_every_labelled_draw(mnist, tmp_path):
    reproduce.main(["labels", "--smoke", "--threads", "1", "--mnist", str(mnist), "--out", str(tmp_path)])
    budget = reproduce.EXPERIMENTS["labels"].smoke
    runs = json.loads((tmp_path / "labels.json").read_text())["results"]["runs"]
    assert [run["seed"] for run in runs] == list(range(budget["seeds"]))
    for run in runs:
        assert run["labelled"] == 10 * budget["per_class"]
        assert set(run) == {"seed", "labelled", *reproduce.LABEL_ARMS}
        assert run["conditional VAE"]["best_epoch"] % budget["cvae_check"] == 0  # only the checked epochs can be kept
        for arm, epochs in (("labels alone", budget["classifier_epochs"]), ("M1 features", budget["classifier_epochs"]),
                            ("conditional VAE", budget["cvae_epochs"]), ("M1 + M2", budget["m2_epochs"])):
            assert 0 <= run[arm]["test_accuracy"] <= 1 and 0 <= run[arm]["val_accuracy"] <= 1
            assert 1 <= run[arm]["best_epoch"] <= epochs
        curve = run["M1 + M2"]["val_curve"]
        assert len(curve) == budget["m2_epochs"] and run["M1 + M2"]["val_accuracy"] == max(curve)
        assert curve.index(max(curve)) + 1 == run["M1 + M2"]["best_epoch"]  # the earliest epoch with the best accuracy


def test_the_labelled_draws_differ_and_hold_each_class_equally():
    from course_code import semisupervised

    y = torch.arange(10).repeat(30)
    draws = [semisupervised.labelled_subset(y, 3, seed=s) for s in range(3)]
    assert all(torch.bincount(y[d], minlength=10).tolist() == [3] * 10 for d in draws)
    assert len({tuple(sorted(d.tolist())) for d in draws}) == 3


def test_bayes_predict_picks_the_class_of_the_largest_bound_each_digit_drawn_with_shared_noise():
    from course_code import semisupervised

    torch.manual_seed(0)
    cvae = semisupervised.ConditionalVAE(12, 3, 2, [8]).double().requires_grad_(False)
    x = torch.bernoulli(torch.full((7, 12), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    predicted = reproduce.bayes_predict(cvae, x, 5, torch.Generator().manual_seed(2))
    eps = torch.randn(5, 7, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # the same draws, by hand
    expected = []
    for b in range(7):
        bounds = []
        for c in range(3):
            y = torch.zeros(1, 3, dtype=torch.float64)
            y[0, c] = 1
            mu, logvar = cvae.encode(x[b : b + 1], y)
            z = mu + torch.exp(0.5 * logvar) * eps[:, b : b + 1]
            rec = cvae.log_likelihood(x[b : b + 1], y, z).mean()
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum()
            bounds.append((rec - kl).item())
        expected.append(max(range(3), key=bounds.__getitem__))
    assert predicted.tolist() == expected


def tiny_vae(flow: bool):
    from course_code import flows, models

    torch.manual_seed(0)
    iaf = flows.IAF(3, 2, 8, [6]) if flow else None
    return models.VAE(12, 3, [8], flow=iaf).double().requires_grad_(False)


@pytest.mark.parametrize("flow", [False, True], ids=["diagonal", "flow"])
def test_local_elbo_at_the_encoders_parameters_is_the_models_own_elbo_at_the_same_draws(flow):
    model = tiny_vae(flow)
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    h = model.encoder.body(x)
    params = [*model.encoder.head(h).chunk(2, dim=-1), h][: 3 if flow else 2]
    eps = torch.randn(7, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    own = model.log_weights(x, 7, generator=torch.Generator().manual_seed(2)).mean(0)  # log p(x, z) - log q(z | x), drawn by the model
    assert torch.allclose(reproduce.local_elbo(model, x, params, eps), own, rtol=0, atol=1e-12)


@pytest.mark.parametrize("flow", [False, True], ids=["diagonal", "flow"])
def test_inference_gaps_without_local_steps_find_no_amortization_gap_and_with_them_a_better_q(flow):
    model = tiny_vae(flow)
    x = torch.bernoulli(torch.full((6, 12), 0.3, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    budget = dict(local_draws=16, local_steps=0, local_lr=0.05, fresh_draws=500, iw_samples=20)
    terms = reproduce.inference_gaps(model, x, budget, seed=0)
    assert torch.equal(terms["elbo_best"], terms["elbo_amortized"])  # q* is the encoder's q: the same q at the same draws
    assert terms["log_px"].shape == (6,)
    budget["local_steps"] = 50
    climbed = reproduce.inference_gaps(model, x, budget, seed=0)
    assert torch.equal(climbed["elbo_amortized"], terms["elbo_amortized"])  # the encoder's q is untouched by the climb
    assert climbed["elbo_best"].mean() > terms["elbo_amortized"].mean()  # an untrained encoder leaves much to gain


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_committed_results_follow_the_schema(path):
    record = reproduce.check_record(json.loads(path.read_text()))
    assert record["name"] == path.stem and path.stem in reproduce.EXPERIMENTS, f"{path.name} names no registered experiment"
    assert record["budget"] == "full", f"{path.name} was made at the smoke budget; run make reproduce NAME={path.stem}"
    entry = reproduce.EXPERIMENTS[path.stem]
    if record["source_hash"] == reproduce.source_hash(entry):  # made by the code now here: at its full budget
        assert record["budget_settings"] == entry.full
    command = record["command"].split()
    assert command[:3] == ["python", "-m", "course_code.reproduce"] and {path.stem, "all"} & set(command[3:])  # one run may make several
    assert record["git_commit"] and isinstance(record["git_dirty"], bool)  # the page prints both
    assert (path.parent / record["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_committed():
    assert {p.stem for p in RECORDS} == set(reproduce.EXPERIMENTS), "every experiment has a recorded result in results/"


def test_the_page_names_exactly_the_results_older_than_the_code():
    """The committed page says which records the code has moved past; a stale page fails here (and under nbval)."""
    notebook = nbformat.read(ROOT / "book" / "at_full_scale.ipynb", as_version=4)
    lines = [
        line
        for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("name") == "stdout"
        for line in output["text"].splitlines() if line.startswith("Older than the code:")
    ]
    assert len(lines) == 1, "the page must print one line 'Older than the code: ...'"
    stale = reproduce.stale(reproduce.read_results(ROOT / "results"))
    assert lines[0] == f"Older than the code: {', '.join(stale) or 'none'}"


def test_a_change_to_a_module_an_experiment_uses_changes_its_hash(tmp_path, monkeypatch):
    entry = reproduce.EXPERIMENTS["seed002"]
    before = reproduce.source_hash(entry)
    assert "course_code/models.py" in reproduce.dependencies(entry) and "course_code/objectives.py" in reproduce.dependencies(entry)
    shutil.copytree(reproduce.PACKAGE, tmp_path / "course_code")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    assert reproduce.source_hash(entry) == before  # the same files give the same hash
    with open(tmp_path / "course_code" / "objectives.py", "a") as f:  # objectives is reached only through models' imports
        f.write("\n# a change\n")
    assert reproduce.source_hash(entry) != before


def test_stale_names_the_records_whose_hash_differs():
    records = {name: {"source_hash": reproduce.source_hash(entry)} for name, entry in reproduce.EXPERIMENTS.items()}
    assert reproduce.stale(records) == []
    records["seed002"]["source_hash"] = "0" * 64
    records["retired"] = {"source_hash": "0" * 64}
    assert reproduce.stale(records) == ["seed002", "retired"]


def test_check_record_names_the_missing_or_wrong_field():
    good = {
        "schema": 1, "name": "seed002", "title": "t", "command": "python -m course_code.reproduce seed002", "seed": 0,
        "budget": "full", "budget_settings": {}, "git_commit": None, "git_dirty": None,
        "versions": {"torch": "2", "numpy": "2", "course_code": "0"}, "cpu": "c", "cpu_count": 2, "threads": 1,
        "dtype": "float32", "started": "2026-11-30T00:00:00+00:00", "wall_time_s": 1.0, "load_average_start": [1, 1, 1],
        "load_average_end": [1.0, 1.0, 1.0], "source_hash": "0" * 64, "sources": [], "reference": {}, "results": {},
        "figure": "seed002.png",
    }
    assert reproduce.check_record(dict(good)) == good
    with pytest.raises(ValueError, match="no 'source_hash' field"):
        reproduce.check_record({k: v for k, v in good.items() if k != "source_hash"})
    with pytest.raises(ValueError, match="field 'wall_time_s'"):
        reproduce.check_record(good | {"wall_time_s": "ten"})
    with pytest.raises(ValueError, match="'budget' must be 'full' or 'smoke'"):
        reproduce.check_record(good | {"budget": "medium"})
    with pytest.raises(ValueError, match="three load averages"):
        reproduce.check_record(good | {"load_average_end": [1.0]})


def test_an_unknown_name_lists_the_experiments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["nope"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unknown experiment 'nope'" in err
    assert all(name in err for name in reproduce.EXPERIMENTS) and err.count("\n") == 1


def test_missing_mnist_says_how_to_point_course_mnist(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_MNIST", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["seed002", "--smoke", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "COURSE_MNIST=/path/to/dir" in capsys.readouterr().err
    assert reproduce.main(["seed002", "--smoke", "--threads", "1", "--mnist", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "COURSE_MNIST" in err and not (tmp_path / "seed002.json").exists()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        reproduce.experiment("seed002", "again", full={}, smoke={}, reference={})(lambda budget, seed, mnist: None)
