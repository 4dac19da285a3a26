"""Bad input gets a clear error: a table of wrong arguments to every module of course_code and to the trainer.

Each row calls the public API as a careless learner might and names the exception it must raise
and a pattern its message must contain: the offending argument, and for the subtler cases the
value or the fix. No row may end in a raw error from inside torch, numpy or Python, nor return.
The command-line rows check one line on stderr, the exit code, and that nothing was left behind.
"""

import gzip
import math
import re
import struct

import numpy as np
import pytest
import torch

from course_code import collapse, data, diagnostics, distributions, gradients, inference, models, objectives, tractable, train, training

# Built at import, before tests/conftest.py makes float64 the default: so in float64 explicitly.
X = torch.rand(8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # eight datapoints of 16 pixels
MU, LOGVAR = torch.zeros(8, 2, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.float64)
torch.manual_seed(0)
VAE = models.VAE(16, 2, (8,)).double()
LOG_LIK = VAE.log_likelihood
TERMS = objectives.elbo(LOG_LIK, X, MU, LOGVAR)
LINEAR = tractable.LinearGaussian(torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
X3 = torch.randn(5, 3, dtype=torch.float64)
NAN = float("nan")


def per_datapoint(x, z):
    """A log-likelihood that averages over the samples itself: shape (B,) instead of (K, B)."""
    return LOG_LIK(x, z).mean(0)


def quick_fit(x=X, **options):
    torch.manual_seed(0)
    return training.fit(models.VAE(16, 2, (8,)), x, **{"epochs": 1, "progress": False, **options})


def idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def mnist_folder(root, n_train=6, n_train_labels=6, damage=None):
    """A tiny MNIST in the four files' layout (uncompressed), with one file replaced by ``damage = (name, bytes)``."""
    root.mkdir(exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx(np.zeros((n_train, 28, 28))),
        "train-labels-idx1-ubyte": idx(np.zeros(n_train_labels)),
        "t10k-images-idx3-ubyte": idx(np.zeros((4, 28, 28))),
        "t10k-labels-idx1-ubyte": idx(np.zeros(4)),
    }
    if damage:
        files.pop(damage[0].removesuffix(".gz"))
        if damage[1] is not None:
            files[damage[0]] = damage[1]
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


# (id, call(tmp_path), exception, pattern the message must contain)
CASES = [
    # ---- distributions
    ("reparameterize-list", lambda t: distributions.reparameterize([0.0], LOGVAR), TypeError, "mu must be a torch.Tensor"),
    ("reparameterize-zero-samples", lambda t: distributions.reparameterize(MU, LOGVAR, 0), ValueError, "n_samples must be at least 1"),
    ("reparameterize-float-samples", lambda t: distributions.reparameterize(MU, LOGVAR, 2.5), TypeError, "n_samples must be an integer, got 2.5"),
    ("reparameterize-bool-samples", lambda t: distributions.reparameterize(MU, LOGVAR, True), TypeError, "n_samples must be an integer, got True"),
    ("reparameterize-shapes", lambda t: distributions.reparameterize(MU, torch.zeros(8, 3)), ValueError, r"logvar has shape \(8, 3\)"),
    ("log-normal-nan", lambda t: distributions.log_normal(torch.full((2,), NAN), MU[0], 0.0), ValueError, "x contains NaN"),
    ("log-normal-shapes", lambda t: distributions.log_normal(X, torch.zeros(3, 16), 0.0), ValueError, r"mu has shape \(3, 16\)"),
    ("log-normal-text-logvar", lambda t: distributions.log_normal(X, X, "1"), TypeError, "logvar must be a number"),
    ("log-standard-normal-numpy", lambda t: distributions.log_standard_normal(np.zeros(3)), TypeError, "z must be a torch.Tensor"),
    ("log-bernoulli-range", lambda t: distributions.log_bernoulli(X * 255, X), ValueError, r"x ranges over \[[\d.]+, 25\d\]"),
    ("log-bernoulli-inf-logits", lambda t: distributions.log_bernoulli(X, X / 0), ValueError, "logits contains NaN or infinite"),
    ("kl-normal-shapes", lambda t: distributions.kl_normal(MU, torch.zeros(3, 2)), ValueError, r"logvar_q has shape \(3, 2\)"),
    ("kl-normal-text-prior", lambda t: distributions.kl_normal(MU, LOGVAR, mu_p="0"), TypeError, "mu_p must be a number"),
    ("kl-standard-normal-list", lambda t: distributions.kl_standard_normal(MU, [0.0, 0.0]), TypeError, "logvar must be a torch.Tensor"),
    # ---- objectives
    ("elbo-log-lik-shape-B", lambda t: objectives.elbo(per_datapoint, X, MU, LOGVAR), ValueError, r"log_lik\(x, z\) must return log p\(x\|z\) of shape \(K, B\) = \(1, 8\).*got \(8,\)"),
    ("elbo-log-lik-float", lambda t: objectives.elbo(lambda x, z: 0.0, X, MU, LOGVAR), ValueError, r"log_lik\(x, z\) must return .* got float"),
    ("elbo-log-lik-not-callable", lambda t: objectives.elbo("bernoulli", X, MU, LOGVAR), TypeError, "log_lik must be a function"),
    ("elbo-float-samples", lambda t: objectives.elbo(LOG_LIK, X, MU, LOGVAR, n_samples=2.5), TypeError, "n_samples must be an integer"),
    ("elbo-zero-samples", lambda t: objectives.elbo(LOG_LIK, X, MU, LOGVAR, n_samples=0), ValueError, "n_samples must be at least 1"),
    ("elbo-x-list", lambda t: objectives.elbo(LOG_LIK, X.tolist(), MU, LOGVAR), TypeError, "x must be a torch.Tensor"),
    ("elbo-q-shapes", lambda t: objectives.elbo(LOG_LIK, X, MU, torch.zeros(8, 3)), ValueError, r"logvar has shape \(8, 3\)"),
    ("elbo-batch", lambda t: objectives.elbo(LOG_LIK, X[:5], MU, LOGVAR), ValueError, r"x has batch shape \(5,\)"),
    ("iwae-float-samples", lambda t: objectives.iwae_bound(LOG_LIK, X, MU, LOGVAR, 2.5), TypeError, "n_samples must be an integer"),
    ("iwae-zero-chunk", lambda t: objectives.iwae_bound(LOG_LIK, X, MU, LOGVAR, 10, chunk_size=0), ValueError, "chunk_size must be at least 1"),
    ("iwae-float-chunk", lambda t: objectives.iwae_bound(LOG_LIK, X, MU, LOGVAR, 10, chunk_size=2.5), TypeError, "chunk_size must be an integer"),
    ("iwae-log-lik-shape-B", lambda t: objectives.iwae_bound(per_datapoint, X, MU, LOGVAR, 4), ValueError, r"log_lik\(x, z\) must return .*\(4, 8\)"),
    ("weighted-loss-nan-beta", lambda t: objectives.weighted_loss(TERMS, beta=NAN), ValueError, "beta must be a finite number"),
    ("weighted-loss-negative-beta", lambda t: objectives.weighted_loss(TERMS, beta=-1), ValueError, "beta must be non-negative, got -1"),
    ("weighted-loss-text-free-bits", lambda t: objectives.weighted_loss(TERMS, free_bits="0.5"), TypeError, "free_bits must be a number"),
    ("weighted-loss-tuple", lambda t: objectives.weighted_loss((TERMS.elbo, TERMS.rec)), TypeError, "terms must be the ElboTerms"),
    ("weighted-loss-free-bits-sampled-kl", lambda t: objectives.weighted_loss(TERMS._replace(kl_per_dim=None), free_bits=0.5), ValueError, "free_bits > 0 needs the per-dimension KL"),
    ("log-px-zero-samples", lambda t: objectives.log_px_estimate(LOG_LIK, X, MU, LOGVAR, n_samples=0), ValueError, "n_samples must be at least 1"),
    # ---- models
    ("vae-hidden-int", lambda t: models.VAE(16, 2, hidden=256), TypeError, r"hidden must be a sequence of layer widths such as \(256,\)"),
    ("vae-hidden-zero", lambda t: models.VAE(16, 2, hidden=(0,)), ValueError, "every width in hidden must be at least 1, got 0"),
    ("vae-hidden-float", lambda t: models.VAE(16, 2, hidden=(2.5,)), TypeError, "every width in hidden must be an integer"),
    ("vae-z-dim-bool", lambda t: models.VAE(16, True), TypeError, "z_dim must be an integer, got True"),
    ("vae-z-dim-zero", lambda t: models.VAE(16, 0), ValueError, "z_dim must be at least 1"),
    ("vae-x-dim-negative", lambda t: models.VAE(-1, 2), ValueError, "x_dim must be at least 1, got -1"),
    ("vae-x-dim-text", lambda t: models.VAE("16", 2), TypeError, "x_dim must be an integer"),
    ("vae-likelihood", lambda t: models.VAE(16, 2, likelihood="poisson"), ValueError, "unknown likelihood 'poisson'"),
    ("vae-decoder-hidden-int", lambda t: models.VAE(16, 2, decoder_hidden=5), TypeError, "decoder_hidden must be a sequence"),
    ("vae-autoregressive-no-hidden", lambda t: models.VAE(16, 2, likelihood="autoregressive", decoder_hidden=()), ValueError, "decoder_hidden must hold at least one width"),
    ("autoencoder-hidden-text", lambda t: models.Autoencoder(16, 2, hidden="256"), TypeError, "hidden must be a sequence"),
    ("encode-width", lambda t: VAE.encode(torch.rand(3, 17)), ValueError, "x has 17 features per datapoint.*expects 16"),
    ("encode-float32", lambda t: VAE.encode(X.float()), TypeError, r"x has dtype torch.float32 but the model's parameters are torch.float64: convert it with x.to\(torch.float64\)"),
    ("encode-uint8", lambda t: VAE.encode((X * 255).to(torch.uint8)), TypeError, r"x has dtype torch.uint8 .* scale it to \[0, 1\] first"),
    ("encode-list", lambda t: VAE.encode(X.tolist()), TypeError, "x must be a torch.Tensor"),
    ("encode-nan", lambda t: VAE.encode(torch.full((2, 16), NAN)), ValueError, "x contains NaN"),
    ("encode-scalar", lambda t: VAE.encode(torch.tensor(0.5)), ValueError, "x must be a batch of shape"),
    ("sample-float", lambda t: VAE.sample(2.5), TypeError, "n must be an integer"),
    ("sample-negative", lambda t: VAE.sample(-1), ValueError, "n must be at least 1"),
    ("log-px-zero-chunk", lambda t: VAE.log_px(X, n_samples=10, chunk_size=0), ValueError, "chunk_size must be at least 1"),
    ("vae-forward-float-samples", lambda t: VAE(X, n_samples=2.5), TypeError, "n_samples must be an integer"),
    ("vae-loss-negative-beta", lambda t: VAE.loss(X, beta=-1.0), ValueError, "beta must be non-negative"),
    # ---- training
    ("fit-1d", lambda t: quick_fit(torch.rand(64)), ValueError, r"x must have shape \(N, D\).*got shape \(64,\): for one datapoint use x\[None\]"),
    ("fit-images-not-flat", lambda t: quick_fit(torch.rand(8, 4, 4)), ValueError, r"flatten each datapoint: x.reshape\(len\(x\), -1\)"),
    ("fit-float32", lambda t: quick_fit(X.float()), TypeError, "x has dtype torch.float32 but the model's parameters are torch.float64"),
    ("fit-uint8", lambda t: quick_fit((X * 255).to(torch.uint8)), TypeError, r"scale it to \[0, 1\] first, e.g. x = x.to\(torch.float64\) / 255"),
    ("fit-dynamic-0-255", lambda t: quick_fit(X * 255, dynamic_binarization=True), ValueError, r"x must lie in \[0, 1\].*x / 255"),
    ("fit-float-epochs", lambda t: quick_fit(epochs=2.5), TypeError, "epochs must be an integer, got 2.5"),
    ("fit-bool-epochs", lambda t: quick_fit(epochs=True), TypeError, "epochs must be an integer, got True"),
    ("fit-zero-batch", lambda t: quick_fit(batch_size=0), ValueError, "batch_size must be at least 1"),
    ("fit-zero-lr", lambda t: quick_fit(lr=0.0), ValueError, "lr must be positive, got 0.0"),
    ("fit-negative-lr", lambda t: quick_fit(lr=-1e-3), ValueError, "lr must be positive"),
    ("fit-nan-lr", lambda t: quick_fit(lr=NAN), ValueError, "lr must be a finite number"),
    ("fit-negative-beta", lambda t: quick_fit(beta=-1.0), ValueError, "beta must be non-negative"),
    ("fit-text-beta", lambda t: quick_fit(beta="1"), TypeError, "beta must be a number"),
    ("fit-negative-free-bits", lambda t: quick_fit(free_bits=-0.5), ValueError, "free_bits must be non-negative"),
    ("fit-zero-samples", lambda t: quick_fit(n_samples=0), ValueError, "n_samples must be at least 1"),
    ("fit-negative-seed", lambda t: quick_fit(seed=-1), ValueError, "seed must be at least 0"),
    ("fit-float-seed", lambda t: quick_fit(seed=1.5), TypeError, "seed must be an integer"),
    ("fit-x-test-width", lambda t: quick_fit(x_test=torch.rand(4, 17)), ValueError, "x_test has 17 features"),
    ("fit-x-test-1d", lambda t: quick_fit(x_test=torch.rand(16)), ValueError, r"x_test must have shape \(N, D\)"),
    ("fit-no-model", lambda t: training.fit("VAE", X), TypeError, "model must be a torch.nn.Module"),
    ("fit-width", lambda t: quick_fit(torch.rand(8, 17)), ValueError, "x has 17 features per datapoint"),
    ("fit-empty", lambda t: quick_fit(torch.zeros(0, 16)), ValueError, "x is empty"),
    ("evaluate-zero-batch", lambda t: training.evaluate(VAE, X, batch_size=0), ValueError, "batch_size must be at least 1"),
    ("evaluate-list", lambda t: training.evaluate(VAE, X.tolist()), TypeError, "x must be a torch.Tensor"),
    ("warmup-float-steps", lambda t: training.linear_warmup(2.5), TypeError, "steps must be an integer"),
    ("constant-negative", lambda t: training.constant(-1.0), ValueError, "weight must be non-negative"),
    # ---- data
    ("load-unknown", lambda t: data.load("cifar"), ValueError, "unknown dataset 'cifar'; choose one of"),
    ("load-name-int", lambda t: data.load(5), TypeError, "name must be a dataset name"),
    ("load-binarize", lambda t: data.load("digits", binarize="otsu"), ValueError, "unknown binarization 'otsu'"),
    ("binarize-list", lambda t: data.binarize([0.5]), TypeError, "x must be a torch.Tensor"),
    ("binarize-dynamic-0-255", lambda t: data.binarize(X * 255, "dynamic"), ValueError, r"x must lie in \[0, 1\]"),
    ("binarize-text-threshold", lambda t: data.binarize(X, threshold="0.5"), TypeError, "threshold must be a number"),
    ("digits-test-fraction-above-1", lambda t: data.load_digits(test_fraction=1.5), ValueError, "test_fraction must lie strictly between 0 and 1"),
    ("digits-test-fraction-0", lambda t: data.load_digits(test_fraction=0), ValueError, "test_fraction must be positive"),
    ("digits-negative-seed", lambda t: data.load_digits(seed=-1), ValueError, "seed must be at least 0"),
    ("synthetic-float-n", lambda t: data.synthetic_one_latent(2.5), TypeError, "n must be an integer"),
    ("synthetic-zero-width", lambda t: data.synthetic_one_latent(10, x_dim=0), ValueError, "x_dim must be at least 1"),
    ("mnist-missing-folder", lambda t: data.load("mnist", mnist=t / "nowhere"), data.DataUnavailableError, "the MNIST folder .*nowhere is not a directory"),
    ("mnist-empty-folder", lambda t: data.load("mnist", mnist=t), data.DataUnavailableError, "MNIST was not found under"),
    ("mnist-20-images-5-labels", lambda t: data.load("mnist", mnist=mnist_folder(t, 20, 5)), data.CorruptDataError, "train-images holds 20 images but train-labels holds 5 labels"),
    ("mnist-empty-gz", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("t10k-labels-idx1-ubyte.gz", b""))), data.CorruptDataError, "t10k-labels-idx1-ubyte.gz is damaged: it holds 0 bytes, the original holds 4,542"),
    ("mnist-not-the-original-gz", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("train-labels-idx1-ubyte.gz", gzip.compress(idx(np.zeros(6)))))), data.CorruptDataError, "train-labels-idx1-ubyte.gz is damaged: it holds"),
    ("mnist-random-bytes", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("t10k-images-idx3-ubyte", bytes(range(256)) * 4))), data.CorruptDataError, "t10k-images-idx3-ubyte is not an MNIST file"),
    ("mnist-zero-bytes", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("t10k-images-idx3-ubyte", b""))), data.CorruptDataError, r"t10k-images-idx3-ubyte is not an MNIST file.*\(0 bytes\)"),
    ("mnist-truncated", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("train-images-idx3-ubyte", idx(np.zeros((20, 28, 28)))[:1000]))), data.CorruptDataError, "train-images-idx3-ubyte is truncated or damaged: its header announces 20 items"),
    ("mnist-file-missing", lambda t: data.load("mnist", mnist=mnist_folder(t, damage=("t10k-labels-idx1-ubyte", None))), data.DataUnavailableError, r"t10k-labels-idx1-ubyte.gz \(or t10k-labels-idx1-ubyte\) is missing"),
    # ---- tractable
    ("grid-one-point", lambda t: tractable.GridModel(LOG_LIK, n_points=1), ValueError, "n_points must be at least 2, got 1"),
    ("grid-float-points", lambda t: tractable.GridModel(LOG_LIK, n_points=2.5), TypeError, "n_points must be an integer"),
    ("grid-3d", lambda t: tractable.GridModel(LOG_LIK, z_dim=3), ValueError, "z_dim=3"),
    ("grid-zero-limit", lambda t: tractable.GridModel(LOG_LIK, limit=0), ValueError, "limit must be positive"),
    ("grid-log-lik-text", lambda t: tractable.GridModel("bernoulli"), TypeError, "log_lik must be a function"),
    ("grid-log-px-1d", lambda t: tractable.GridModel(lambda x, z: z.sum(-1), z_dim=1, n_points=11).log_px(torch.rand(3)), ValueError, r"x must have 2 dimension\(s\) \(B, D\)"),
    ("linear-w-list", lambda t: tractable.LinearGaussian([[1.0]], torch.zeros(1), 0.0), TypeError, "W must be a torch.Tensor"),
    ("linear-w-1d", lambda t: tractable.LinearGaussian(torch.ones(3), torch.zeros(3), 0.0), ValueError, r"W must be \(D, d\)"),
    ("linear-nan-noise", lambda t: tractable.LinearGaussian(torch.ones(3, 2), torch.zeros(3), NAN), ValueError, "logvar_x must be a finite number"),
    ("linear-random-zero-noise", lambda t: tractable.LinearGaussian.random(noise_std=0.0), ValueError, "noise_std must be positive"),
    ("linear-random-float-dim", lambda t: tractable.LinearGaussian.random(x_dim=2.5), TypeError, "x_dim must be an integer"),
    ("linear-log-px-width", lambda t: LINEAR.log_px(torch.zeros(5, 4, dtype=torch.float64)), ValueError, "x has 4 features per datapoint.*D = 3"),
    ("linear-sample-zero", lambda t: LINEAR.sample(0), ValueError, "n must be at least 1"),
    ("elbo-on-grid-shapes", lambda t: tractable.elbo_on_grid(torch.zeros(5, 3), torch.zeros(4, 1), torch.zeros(3, 1), torch.zeros(3, 1)), ValueError, r"need log_joint \(G, B\)"),
    # ---- inference
    ("optimize-q-float-steps", lambda t: inference.svi(LINEAR.log_likelihood, X3, 2, max_steps=2.5), TypeError, "max_steps must be an integer"),
    ("optimize-q-zero-lr", lambda t: inference.svi(LINEAR.log_likelihood, X3, 2, lr=0), ValueError, "lr must be positive"),
    ("optimize-q-zero-window", lambda t: inference.svi(LINEAR.log_likelihood, X3, 2, window=0), ValueError, "window must be at least 1"),
    ("optimize-q-nan-tol", lambda t: inference.svi(LINEAR.log_likelihood, X3, 2, tol=NAN), ValueError, "tol must be a finite number"),
    ("svi-zero-z-dim", lambda t: inference.svi(LINEAR.log_likelihood, X3, 0), ValueError, "z_dim must be at least 1"),
    ("optimize-q-nothing", lambda t: inference.svi(None, X3, 2), ValueError, "give log_lik .* or exact_elbo"),
    ("optimize-q-shapes", lambda t: inference.optimize_q(LINEAR.log_likelihood, X3, torch.zeros(4, 2), torch.zeros(4, 2)), ValueError, r"mu and logvar must both have shape \(B, d\) with B = len\(x\) = 5"),
    ("elbo-estimate-zero-chunk", lambda t: inference.elbo_estimate(LOG_LIK, X, MU, LOGVAR, chunk_size=0), ValueError, "chunk_size must be at least 1"),
    ("standardized-noise-too-few", lambda t: inference.standardized_noise(2, torch.Size((5, 2)), torch.Generator()), ValueError, "n_samples=2, d=2"),
    ("fixed-noise-eps", lambda t: inference.fixed_noise_elbo(LOG_LIK, X, MU, LOGVAR, torch.zeros(8, 2)), ValueError, "eps must have shape"),
    ("gap-summary-lengths", lambda t: inference.gap_summary(torch.zeros(3), torch.zeros(3), torch.zeros(4)), ValueError, "log_px, elbo_best and elbo_amortized must be 1-D of the same length"),
    # ---- diagnostics
    ("aggregate-kl-zero-samples", lambda t: diagnostics.aggregate_kl(MU, LOGVAR, n_samples=0), ValueError, "n_samples must be at least 1"),
    ("mutual-information-empty", lambda t: diagnostics.mutual_information(torch.zeros(0, 2), torch.zeros(0, 2)), ValueError, r"mu and logvar are empty \(N = 0\)"),
    ("mutual-information-shapes", lambda t: diagnostics.mutual_information(MU, torch.zeros(8, 3)), ValueError, r"logvar has shape \(8, 3\)"),
    ("active-units-1d", lambda t: diagnostics.active_units(torch.zeros(8)), ValueError, r"mu must have shape \(N, d\)"),
    ("active-units-list", lambda t: diagnostics.active_units([[0.0, 1.0]]), TypeError, "mu must be a torch.Tensor"),
    ("surgery-one-point", lambda t: diagnostics.surgery_on_grid(MU[:, :1], LOGVAR[:, :1], n_points=1), ValueError, "n_points must be at least 2"),
    ("surgery-negative-limit", lambda t: diagnostics.surgery_on_grid(MU[:, :1], LOGVAR[:, :1], limit=-1.0), ValueError, "limit must be positive"),
    ("kl-per-dim-1d", lambda t: diagnostics.kl_per_dim(torch.zeros(8), torch.zeros(8)), ValueError, r"mu must have 2 dimension\(s\) \(N, d\)"),
    # ---- collapse
    ("aggressive-one-held-out", lambda t: collapse.aggressive_fit(models.VAE(16, 1, (8,)), X, X[:1], epochs=1), ValueError, "x_val needs at least two points"),
    ("aggressive-zero-epoch-budget", lambda t: collapse.aggressive_fit(models.VAE(16, 1, (8,)), X, X, max_aggressive_epochs=0), ValueError, "max_aggressive_epochs must be at least 1"),
    ("aggressive-zero-inner-steps", lambda t: collapse.aggressive_fit(models.VAE(16, 1, (8,)), X, X, max_inner_steps=0), ValueError, "max_inner_steps must be at least 1"),
    ("aggressive-float-epochs", lambda t: collapse.aggressive_fit(models.VAE(16, 1, (8,)), X, X, epochs=2.5), TypeError, "epochs must be an integer"),
    ("table-unknown-column", lambda t: collapse.table({}, columns=("elbo",)), ValueError, r"unknown columns \['elbo'\]"),
    ("run-aggressive-with-beta", lambda t: collapse.run(X, X, X, {"x_dim": 16, "z_dim": 1}, epochs=1, beta=0.5, aggressive=True), ValueError, "leave beta=1 and free_bits=0"),
    # ---- gradients
    ("score-function-sigma", lambda t: gradients.score_function(torch.square, torch.zeros(2), -torch.ones(2), torch.zeros(5, 2)), ValueError, "sigma must be positive"),
    ("pathwise-f-text", lambda t: gradients.pathwise("square", torch.zeros(2), torch.ones(2), torch.zeros(5, 2)), TypeError, "f must be a function"),
    ("bernoulli-float-samples", lambda t: gradients.score_function_bernoulli(torch.square, torch.full((2,), 0.5), 2.5), TypeError, "n_samples must be an integer"),
    ("bernoulli-p-above-1", lambda t: gradients.score_function_bernoulli(torch.square, torch.full((2,), 1.5), 10), ValueError, "p must lie strictly between 0 and 1"),
    ("gradient-samples-float-repeats", lambda t: gradients.gradient_samples(lambda: torch.zeros(()), [], 2.5), TypeError, "repeats must be an integer"),
    ("surrogate-estimator", lambda t: gradients.elbo_surrogate(LOG_LIK, X, MU, LOGVAR, estimator="reinforce"), ValueError, "unknown estimator 'reinforce'"),
]


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 80
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("call, error, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_input_gets_a_clear_error(call, error, pattern, tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_MNIST", raising=False)
    with pytest.raises(error, match=pattern) as raised:
        call(tmp_path)
    assert type(raised.value).__module__.startswith(("builtins", "course_code"))  # ours, or a plain Python type


def test_a_silently_wrong_result_is_now_an_error_or_correct():
    """The cases that used to return a wrong answer without a word."""
    value = diagnostics.aggregate_kl(MU, LOGVAR, n_samples=1)  # q(z) = p(z) exactly: KL 0, not NaN
    assert math.isfinite(value.item()) and abs(value.item()) < 1e-6


# ---- the command-line trainer ------------------------------------------------------------------

@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("COURSE_PROGRESS", "0")
    monkeypatch.setenv("COURSE_THREADS", "1")
    monkeypatch.delenv("COURSE_MNIST", raising=False)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def a_file(t):
    (t / "a-file").write_text("not a folder")
    return t / "a-file"


# (id, arguments(tmp_path), exit code, pattern of the one line on stderr)
CLI_CASES = [
    ("lr-negative", lambda t: ["--lr", "-1"], 2, "argument --lr: must be a positive number such as 0.001, got '-1'"),
    ("lr-nan", lambda t: ["--lr", "nan"], 2, "argument --lr: must be a positive number"),
    ("lr-zero", lambda t: ["--lr", "0"], 2, "argument --lr: must be a positive number"),
    ("lr-text", lambda t: ["--lr", "fast"], 2, "argument --lr: must be a positive number .* got 'fast'"),
    ("seed-negative", lambda t: ["--seed", "-1"], 2, r"argument --seed: must be an integer from 0 to 2\*\*32 - 1"),
    ("seed-too-large", lambda t: ["--seed", str(2**32)], 2, "argument --seed: must be an integer from 0"),
    ("epochs-float", lambda t: ["--epochs", "2.5"], 2, "argument --epochs: must be a positive integer, got '2.5'"),
    ("epochs-zero", lambda t: ["--epochs", "0"], 2, "argument --epochs: must be a positive integer"),
    ("hidden-zero", lambda t: ["--hidden", "0"], 2, "argument --hidden: must be a positive integer"),
    ("batch-size-zero", lambda t: ["--batch-size", "0"], 2, "argument --batch-size: must be a positive integer"),
    ("iw-samples-negative", lambda t: ["--iw-samples", "-5"], 2, "argument --iw-samples: must be a positive integer"),
    ("dataset-unknown", lambda t: ["--dataset", "cifar"], 2, "argument --dataset: invalid choice: 'cifar'"),
    ("data-dir-without-mnist", lambda t: ["--data-dir", str(t)], 2, "--data-dir is for --dataset mnist"),
    ("device-unknown", lambda t: ["--device", "tpu"], 2, "argument --device: invalid choice: 'tpu'"),
    ("out-is-a-file", lambda t: ["--out", str(a_file(t))], 1, "--out .*a-file is a file, not a folder; choose another --out"),
    ("out-under-a-file", lambda t: ["--out", str(a_file(t) / "run")], 1, r"--out .*a-file/run cannot be written to \(Not a directory\)"),
    ("mnist-missing-data-dir", lambda t: ["--dataset", "mnist", "--data-dir", str(t / "missing")], 2, "^error: the MNIST folder .*missing is not a directory"),
    ("mnist-corrupt-data-dir", lambda t: ["--dataset", "mnist", "--data-dir", str(mnist_folder(t / "mnist", damage=("t10k-labels-idx1-ubyte.gz", b"")))], 2, "t10k-labels-idx1-ubyte.gz is damaged: it holds 0 bytes"),
    ("diverging", lambda t: ["--lr", "10"], 1, r"^error: training diverged .* at epoch 1, step \d+\. Try a smaller learning rate \(now 10\)"),
]


@pytest.mark.parametrize("argv, code, pattern", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_the_trainer_says_what_is_wrong_in_one_line(argv, code, pattern, tmp_path, capsys, quiet):
    argv = ["--epochs", "2", "--hidden", "32", "--iw-samples", "10", "--out", str(tmp_path / "out"), *argv(tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    try:
        result = train.main(argv)
    except SystemExit as exit_info:  # argparse's errors
        result = exit_info.code
    err = capsys.readouterr().err
    assert result == code
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert sorted(tmp_path.rglob("*")) == before  # no output folder, no model, no temporary file left behind
