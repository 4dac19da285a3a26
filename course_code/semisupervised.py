"""Labels in a VAE: the conditional VAE (Sohn et al., 2015) and the semi-supervised M2 model (Kingma et al., 2014) (chapter 12).

Both models read *rows*: a datapoint's pixels followed by its one-hot label (:func:`rows`). A row whose
label part is all zeros is unlabelled; only the M2 model accepts those. With labels inside the rows,
:func:`course_code.training.fit` trains these models unchanged.

The generative model of both is p(y) p(z) p_θ(x | y, z), with q_φ(z | x, y) a diagonal Gaussian given
the image *and* its label. The conditional VAE fits log p(x | y); the M2 model adds a uniform p(y) and a
classifier q_φ(y | x) that stands in for the label where there is none.
"""

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from course_code import arguments, objectives, training
from course_code.distributions import kl_normal_per_dim
from course_code.models import BernoulliDecoder, Encoder, GaussianDecoder, _check_input, mlp


def one_hot(y: Tensor, n_classes: int, dtype: torch.dtype | None = None) -> Tensor:
    """Integer labels of shape (B,) as one-hot rows (B, C), in ``dtype`` (default: torch's default dtype)."""
    arguments.tensor("y", y, 1, "(B,)")
    n_classes = arguments.integer("n_classes", n_classes, minimum=2)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}: use y.long()")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y must hold labels in 0, …, {n_classes - 1}; got values from {y.min().item()} to {y.max().item()}")
    return F.one_hot(y, n_classes).to(dtype or torch.get_default_dtype())


def rows(x: Tensor, y: Tensor | None = None, n_classes: int = 10) -> Tensor:
    """Training rows (B, D + C): the images ``x`` followed by one-hot labels, or by zeros when ``y`` is None (unlabelled)."""
    arguments.tensor("x", x, 2, "(B, D)")
    n_classes = arguments.integer("n_classes", n_classes, minimum=2)
    if y is None:
        labels = x.new_zeros(len(x), n_classes)
    else:
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels; give one label per image")
        labels = one_hot(y, n_classes, x.dtype)
    return torch.cat([x, labels], dim=-1)


def labelled_subset(y: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` examples of every class of the labels ``y`` (B,), drawn at random, class by class."""
    arguments.tensor("y", y, 1, "(B,)")
    per_class = arguments.integer("per_class", per_class)
    g = torch.Generator().manual_seed(arguments.integer("seed", seed, minimum=0))
    chosen = []
    for c in y.unique():
        members = torch.nonzero(y == c).flatten()
        if len(members) < per_class:
            raise ValueError(f"class {c.item()} has {len(members)} examples, fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen)


def split_rows(data: Tensor, x_dim: int, n_classes: int) -> tuple[Tensor, Tensor]:
    """(images (B, D), one-hot labels (B, C)) from rows made by :func:`rows`; an unlabelled row has a zero label."""
    arguments.tensor("data", data, 2, "(B, D + C)")
    if data.shape[-1] != x_dim + n_classes:
        raise ValueError(
            f"data has {data.shape[-1]} columns, the model expects {x_dim} pixels followed by {n_classes} label "
            "columns: build the rows with semisupervised.rows(x, y)"
        )
    return data[:, :x_dim], data[:, x_dim:]


def _check_labels(y: Tensor, batch: int, n_classes: int, dtype: torch.dtype) -> None:
    arguments.tensor("y", y)
    arguments.matching_dtype("y", y, dtype)
    if y.shape != (batch, n_classes):
        raise ValueError(f"y must be one-hot labels of shape (B, C) = ({batch}, {n_classes}), got {tuple(y.shape)}")


def _decoder(likelihood: str, z_dim: int, x_dim: int, hidden: Sequence[int]) -> nn.Module:
    decoders = {"bernoulli": BernoulliDecoder, "gaussian": GaussianDecoder}
    if likelihood not in decoders:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {tuple(decoders)}")
    return decoders[likelihood](z_dim, x_dim, hidden)


class ConditionalVAE(nn.Module):
    """The conditional VAE (Sohn et al., 2015): q_φ(z | x, y), p(z) = N(0, I), p_θ(x | y, z) (eq. `eq-cvae-elbo`).

    The encoder reads the pixels with the one-hot label appended, the decoder the code with the label
    appended; both are the course's MLPs (``models.Encoder`` and the Bernoulli or Gaussian decoder).
    """

    def __init__(self, x_dim: int = 64, n_classes: int = 10, z_dim: int = 2, hidden: Sequence[int] = (256,),
                 likelihood: str = "bernoulli"):
        super().__init__()
        arguments.integer("x_dim", x_dim)
        arguments.integer("n_classes", n_classes, minimum=2)
        arguments.integer("z_dim", z_dim)
        hidden = arguments.sizes("hidden", hidden)
        self.config = dict(x_dim=x_dim, n_classes=n_classes, z_dim=z_dim, hidden=hidden, likelihood=likelihood)
        self.image_dim, self.n_classes, self.z_dim = x_dim, n_classes, z_dim
        self.decoder = _decoder(likelihood, z_dim + n_classes, x_dim, hidden)
        self.encoder = Encoder(x_dim + n_classes, z_dim, hidden)

    def _dtype(self) -> torch.dtype:
        return self.encoder.head.weight.dtype

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q_φ(z | x, y), each (B, d), for images (B, D) and one-hot labels (B, C)."""
        _check_input(x, self.image_dim, self._dtype())
        _check_labels(y, x.shape[0] if x.ndim == 2 else -1, self.n_classes, self._dtype())
        return self.encoder(torch.cat([x, y], dim=-1))

    def log_likelihood(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        """log p_θ(x | y, z) for codes z of shape (K, B, d) and one-hot labels (B, C): shape (K, B)."""
        return self.decoder.log_likelihood(x, torch.cat([z, y.expand(*z.shape[:-1], -1)], dim=-1))

    def elbo(self, x: Tensor, y: Tensor, eps: Tensor | None = None, n_samples: int = 1) -> objectives.ElboTerms:
        """The bound on log p(x | y) of each datapoint, E_q[log p(x | y, z)] − KL(q(z | x, y) ‖ N(0, I)) (eq. `eq-cvae-elbo`).

        The codes are z = μ + σ ⊙ ε with the noise ``eps`` of shape (K, B, d) when it is given (so two calls
        can share it), else K = ``n_samples`` fresh draws. The KL is in closed form.
        """
        mu, logvar = self.encode(x, y)
        if eps is None:
            eps = torch.randn(arguments.integer("n_samples", n_samples), *mu.shape, dtype=mu.dtype, device=mu.device)
        elif eps.ndim != 3 or eps.shape[1:] != mu.shape:
            raise ValueError(f"eps must be noise of shape (K, B, d) = (K, {mu.shape[0]}, {mu.shape[1]}), got {tuple(eps.shape)}")
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = objectives.checked_log_lik(lambda x, z: self.log_likelihood(x, y, z), x, z).mean(0)
        kl_per_dim = kl_normal_per_dim(mu, logvar)
        kl = kl_per_dim.sum(-1)
        return objectives.ElboTerms(rec - kl, rec, kl, kl_per_dim)

    def loss(self, data: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """−(rec − β·KL) averaged over labelled rows (:func:`rows`), with stats ELBO, rec and KL."""
        x, y = split_rows(data, self.image_dim, self.n_classes)
        if (y.sum(-1) != 1).any():
            raise ValueError("the conditional VAE needs a label for every row; build the rows with semisupervised.rows(x, y)")
        terms = self.elbo(x, y, n_samples=n_samples)
        loss = objectives.weighted_loss(terms, beta, free_bits)
        return loss, {"elbo": terms.elbo.mean().item(), "rec": terms.rec.mean().item(), "kl": terms.kl.mean().item()}

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """Pixel means of p_θ(x | y, z) for codes (B, d) and integer labels (B,): the digit ``y`` in the style ``z``."""
        arguments.tensor("z", z, 2, "(B, d)")
        if len(y) != len(z):
            raise ValueError(f"z has {len(z)} codes but y has {len(y)} labels; give one label per code")
        return self.decoder.mean(torch.cat([z, one_hot(y, self.n_classes, z.dtype)], dim=-1))


class Classifier(nn.Module):
    """q_φ(y | x): an MLP from the pixels to class logits. Alone, it is trained by cross-entropy on labelled rows."""

    def __init__(self, x_dim: int = 64, n_classes: int = 10, hidden: Sequence[int] = (256,)):
        super().__init__()
        arguments.integer("x_dim", x_dim)
        arguments.integer("n_classes", n_classes, minimum=2)
        hidden = arguments.sizes("hidden", hidden)
        self.config = dict(x_dim=x_dim, n_classes=n_classes, hidden=hidden)
        self.image_dim, self.n_classes = x_dim, n_classes
        self.net = mlp([x_dim, *hidden, n_classes])

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, C) of images (B, D)."""
        _check_input(x, self.image_dim, self.net[0].weight.dtype)
        return self.net(x)

    def loss(self, data: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """Cross-entropy −log q(y | x) averaged over the labelled rows (the unlabelled ones are skipped)."""
        x, y = split_rows(data, self.image_dim, self.n_classes)
        labelled = y.sum(-1) == 1
        if not labelled.any():
            raise ValueError("the classifier needs labelled rows; build them with semisupervised.rows(x, y)")
        cross_entropy = F.cross_entropy(self(x[labelled]), y[labelled].argmax(-1))
        return cross_entropy, {"cross_entropy": cross_entropy.item()}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The most probable class of each image, shape (B,)."""
        return self(x).argmax(-1)


def unlabelled_bound(labelled: Tensor, logits: Tensor) -> Tensor:
    """U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x)) from the table of labelled bounds (C, B) and the logits (B, C) (eq. `eq-m2-unlabelled`)."""
    arguments.tensor("labelled", labelled, 2, "(C, B)")
    arguments.tensor("logits", logits, 2, "(B, C)")
    if labelled.shape != logits.T.shape:
        raise ValueError(f"labelled must have shape (C, B) = {tuple(logits.T.shape)} to match logits (B, C), got {tuple(labelled.shape)}")
    log_q = logits.log_softmax(-1)
    q = log_q.exp()
    return (q * labelled.T).sum(-1) - (q * log_q).sum(-1)


class M2(nn.Module):
    """The semi-supervised VAE M2 (Kingma et al., 2014): the conditional VAE, p(y) uniform, and a classifier q_φ(y | x).

    A labelled row contributes the bound L(x, y) on log p(x, y) and α times the classifier's
    cross-entropy; an unlabelled row contributes U(x), the bound with the label treated as a latent
    variable and summed out under q(y | x) (eqs. `eq-m2-labelled`, `eq-m2-unlabelled`, `eq-m2-objective`).
    """

    def __init__(self, x_dim: int = 64, n_classes: int = 10, z_dim: int = 2, hidden: Sequence[int] = (256,),
                 classifier_hidden: Sequence[int] | None = None, likelihood: str = "bernoulli", alpha: float = 1.0):
        super().__init__()
        self.cvae = ConditionalVAE(x_dim, n_classes, z_dim, hidden, likelihood)
        classifier_hidden = hidden if classifier_hidden is None else classifier_hidden
        self.classifier = Classifier(x_dim, n_classes, classifier_hidden)
        self.alpha = arguments.number("alpha", alpha, non_negative=True)
        self.config = dict(self.cvae.config, classifier_hidden=self.classifier.config["hidden"], alpha=self.alpha)
        self.image_dim, self.n_classes, self.z_dim = x_dim, n_classes, z_dim

    def labelled_bound(self, x: Tensor, y: Tensor, eps: Tensor | None = None, n_samples: int = 1) -> Tensor:
        """L(x, y) = E_q(z|x,y)[log p(x | y, z)] − KL + log p(y), shape (B,), for one-hot labels (B, C) (eq. `eq-m2-labelled`)."""
        return self.cvae.elbo(x, y, eps, n_samples).elbo - math.log(self.n_classes)

    def labelled_bounds(self, x: Tensor, eps: Tensor | None = None, n_samples: int = 1) -> Tensor:
        """L(x, y) for every class y at once, shape (C, B); every class uses the same noise ``eps`` (K, B, d)."""
        _check_input(x, self.image_dim, self.cvae._dtype())
        if eps is None:
            eps = torch.randn(arguments.integer("n_samples", n_samples), len(x), self.z_dim, dtype=x.dtype, device=x.device)
        classes = torch.eye(self.n_classes, dtype=x.dtype, device=x.device)
        x_all = x.repeat(self.n_classes, 1)  # (C·B, D): class c's copy of the batch is block c
        y_all = classes.repeat_interleave(len(x), dim=0)
        bounds = self.labelled_bound(x_all, y_all, eps.repeat(1, self.n_classes, 1))
        return bounds.reshape(self.n_classes, len(x))

    def unlabelled_bound(self, x: Tensor, eps: Tensor | None = None, n_samples: int = 1) -> Tensor:
        """U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x)), summing the classes exactly, shape (B,) (eq. `eq-m2-unlabelled`)."""
        return unlabelled_bound(self.labelled_bounds(x, eps, n_samples), self.classifier(x))

    def loss(self, data: Tensor, beta: float = 1.0, free_bits: float = 0.0, n_samples: int = 1) -> tuple[Tensor, dict]:
        """(−Σ_labelled L − Σ_unlabelled U + α Σ_labelled (−log q(y | x))) / B over a batch of rows (eq. `eq-m2-objective`).

        Stats: ``bound``, the mean over the rows of L or U, and ``cross_entropy``, the classifier's
        term α·Σ_labelled (−log q(y | x)) / B. The KL weight and free bits do not apply.
        """
        if beta != 1.0 or free_bits != 0.0:
            raise ValueError(f"the M2 objective has no KL weight or free bits; got beta={beta}, free_bits={free_bits}")
        x, y = split_rows(data, self.image_dim, self.n_classes)
        labelled = y.sum(-1) == 1
        bound = x.new_zeros(())
        classifier_term = x.new_zeros(())
        if labelled.any():
            x_l, y_l = x[labelled], y[labelled]
            bound = bound + self.labelled_bound(x_l, y_l, n_samples=n_samples).sum()
            classifier_term = self.alpha * F.cross_entropy(self.classifier(x_l), y_l.argmax(-1), reduction="sum")
        if not labelled.all():
            bound = bound + self.unlabelled_bound(x[~labelled], n_samples=n_samples).sum()
        loss = (classifier_term - bound) / len(x)
        return loss, {"bound": bound.item() / len(x), "cross_entropy": classifier_term.item() / len(x)}

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The classifier's most probable class of each image, shape (B,)."""
        return self.classifier.predict(x)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The fraction of images whose predicted class (``model.predict``) is the label ``y``."""
    arguments.tensor("y", y, 1, "(B,)")
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels; give one label per image")
    return (model.predict(x) == y).double().mean().item()


def fit_keeping_best(model: nn.Module, data: Tensor, x_val: Tensor, y_val: Tensor, **options) -> dict[str, list[float]]:
    """:func:`training.fit` on the rows ``data``, then the weights of the epoch with the best validation accuracy.

    After every epoch the model classifies the validation images; the history gains ``val_accuracy``
    and ``best_epoch`` (the earliest epoch with the highest accuracy), whose weights the model keeps.
    """
    arguments.tensor("y_val", y_val, 1, "(B,)")
    best = {"accuracy": -1.0, "epoch": 0, "state": None}
    accuracies = []

    def on_epoch(epoch: int, record: dict) -> None:
        accuracies.append(accuracy(model, x_val, y_val))
        if accuracies[-1] > best["accuracy"]:
            best.update(accuracy=accuracies[-1], epoch=epoch, state=copy.deepcopy(model.state_dict()))

    history = training.fit(model, data, on_epoch=on_epoch, **options)
    model.load_state_dict(best["state"])
    return {**history, "val_accuracy": accuracies, "best_epoch": [best["epoch"]]}
