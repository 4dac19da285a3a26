"""Every figure of the course: image grids, latent scatters, training curves.

Each function draws on a given axis (or makes one), labels it, and returns the axis, so a
notebook cell ends with ``plt.show()`` or a ``;`` and prints nothing else.
"""

import io

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.text import Text
from torch import Tensor

# One colour per role, the same in every chapter.
COLORS = {
    "elbo": "#1f77b4",
    "log_px": "#2ca02c",
    "rec": "#9467bd",
    "kl": "#d62728",
    "gap": "#ff7f0e",
    "data": "#7f7f7f",
    "prior": "#8c564b",
    "posterior": "#17becf",
}


# A figure is drawn TEXT_WIDTH inches wide at DPI dots per inch, so a font of F points is F / 72 * DPI
# pixels tall in its PNG. On a desktop the book's column is 688 CSS pixels wide and the figure is shown
# at its own 480 px; on a phone (390 px) the column is 358 px and the figure is scaled down by
# 358 / 480. The style's smallest font, 9 points, is then 12.5 px on a desktop and 9.3 px on a phone
# (tests/test_browser.py wants at least 9 px at both widths). A wider figure needs larger letters:
# give a figure of several panels more height (panels stacked), never more width.
TEXT_WIDTH = 4.8
DPI = 100
SMALLEST_FONT_KEY = "Smallest font"  # the PNG text chunk holding a figure's smallest font, in points


def use_style() -> None:
    """The course's plot style: figures as wide as the book's text column, fonts of 9 points or more,
    light grid, no top/right spines; in a notebook, each PNG records its smallest font."""
    mpl.rcParams.update(
        {
            "figure.figsize": (TEXT_WIDTH, 3.4),
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "figure.constrained_layout.use": True,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "xtick.labelsize": 9,
            "ytick.labelsize": 9,
            "legend.fontsize": 9,
            "legend.title_fontsize": 9,
            "figure.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "image.cmap": "gray_r",
        }
    )
    _record_smallest_font()


def smallest_font(fig) -> float:
    """The size in points of the smallest visible text of ``fig``."""
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=mpl.rcParams["font.size"])


def png(fig) -> bytes:
    """``fig`` as PNG bytes, cropped to its content, with its smallest font in the text chunk SMALLEST_FONT_KEY."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={SMALLEST_FONT_KEY: f"{smallest_font(fig):g}"})
    return buffer.getvalue()


def _record_smallest_font() -> None:
    """Inside IPython, show figures through :func:`png`, so the book can check how large their text is shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    # Importing the inline backend registers its own PNG formatter; register ours after it, so ours is used.
    import matplotlib_inline.backend_inline  # noqa: F401
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


def _axis(ax):
    return ax if ax is not None else plt.subplots()[1]


def image_grid(
    x: Tensor, image_shape: tuple[int, int], nrow: int = 10, title: str | None = None, ax=None, padding: int = 1
):
    """Show the rows of ``x`` (flat images in [0, 1]) as a grid, ``nrow`` images per row."""
    from torchvision.utils import make_grid

    ax = _axis(ax)
    images = x.detach().cpu().float().clamp(0, 1).reshape(-1, 1, *image_shape)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)[0]
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def latent_scatter(z: Tensor, labels: Tensor | None = None, title: str = "Latent space", ax=None):
    """Scatter the first two latent coordinates, coloured by digit class when labels are given."""
    ax = _axis(ax)
    z = z.detach().cpu().numpy()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.6, color=COLORS["data"])
    else:
        labels = np.asarray(labels)
        cmap = plt.get_cmap("tab10")
        for c in np.unique(labels):
            pts = z[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.7, color=cmap(int(c) % 10), label=str(c))
        # Below the axes, five to a row: beside them the legend would widen the figure.
        ax.legend(title="digit", markerscale=2.5, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title)
    return ax


def training_curves(history: dict, keys=("elbo", "rec", "kl"), title: str = "Training", ax=None):
    """Per-epoch curves of the history returned by ``training.fit``, in nats."""
    ax = _axis(ax)
    labels = {"elbo": "ELBO", "rec": "reconstruction E[log p(x|z)]", "kl": "KL(q(z|x) ‖ p(z))", "test_elbo": "test ELBO"}
    epochs = np.arange(1, len(next(iter(history.values()))) + 1)
    for key in keys:
        style = "--" if key.startswith("test_") else "-"
        color = COLORS.get(key.removeprefix("test_"), None)
        ax.plot(epochs, history[key], style, color=color, label=labels.get(key, key))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.legend()
    return ax


def latent_grid_images(decode, span: float = 2.5, n: int = 10) -> Tensor:
    """Decode an n×n grid of 2-D latent points in [−span, span]² (top row: largest z₂)."""
    values = torch.linspace(-span, span, n)
    z = torch.stack(torch.meshgrid(values, values.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)
    return decode(z)


ESTIMATOR_COLORS = {"pathwise": "#1f77b4", "score function": "#d62728", "score function + baseline": "#ff7f0e"}


def estimator_variances(x, empirical: dict, theory: dict, xlabel: str, title: str, ax=None, logx: bool = False):
    """Measured (markers) and closed-form (lines) variances of gradient estimators against ``x``, log scale (chapter 3)."""
    ax = _axis(ax)
    x = np.asarray(x)
    for name, values in theory.items():
        ax.plot(x, np.asarray(values), "-", color=ESTIMATOR_COLORS.get(name), label=f"{name}: theory")
    for name, values in empirical.items():
        ax.plot(x, np.asarray(values), "o", ms=5, mfc="none", color=ESTIMATOR_COLORS.get(name), label=f"{name}: measured")
    ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gradient variance")
    ax.set_title(title)
    ax.legend()
    return ax


def interpolation_images(decode, z_start: Tensor, z_end: Tensor, n: int = 10) -> Tensor:
    """Decode ``n`` evenly spaced points on each segment z_start[i] → z_end[i]; rows of ``n`` images (chapter 4)."""
    t = torch.linspace(0, 1, n)[None, :, None]
    z = (1 - t) * z_start[:, None, :] + t * z_end[:, None, :]
    return decode(z.reshape(-1, z_start.shape[-1]))


def traversal_images(decode, z: Tensor, span: float = 2.5, n: int = 10) -> Tensor:
    """Decode z with one coordinate at a time swept over [−span, span]; one row of ``n`` images per coordinate (chapter 4)."""
    d = z.shape[-1]
    values = torch.linspace(-span, span, n)
    grid = z.reshape(1, 1, d).repeat(d, n, 1)
    grid[torch.arange(d), :, torch.arange(d)] = values
    return decode(grid.reshape(-1, d))


def bound_vs_samples(ks, bounds, elbo: float, title: str = "Importance-weighted bounds", ax=None):
    """The bound log (1/K) Σ w_k averaged over data against K (log scale), with the ELBO for reference (chapter 4)."""
    ax = _axis(ax)
    ax.plot(ks, bounds, "o-", color=COLORS["log_px"], label="importance-weighted bound, K samples")
    ax.axhline(elbo, ls="--", color=COLORS["elbo"], label="ELBO (analytic KL)")
    ax.set_xscale("log")
    ax.set_xlabel("number of importance samples K")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.legend()
    return ax


def latent_usage(history: dict, title: str = "How much the code is used", ax=None):
    """KL, mutual information (nats, left axis) and active units (right axis) per epoch of a training history (chapter 6)."""
    ax = _axis(ax)
    epochs = np.arange(1, len(history["kl"]) + 1)
    ax.plot(epochs, history["val_kl"], color=COLORS["kl"], label="KL(q(z|x) ‖ p(z)), validation")
    ax.plot(epochs, history["mi"], "--", color=COLORS["posterior"], label="mutual information $I_q(x; z)$, validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.step(epochs, history["au"], where="mid", color=COLORS["data"], label="active units (right axis)")
    right.set_ylabel("active units")
    right.set_ylim(0, max(history["au"]) + 1)
    right.grid(False)
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(title)
    return ax


def posterior_mean_space(snapshots: dict, title: str = "", axes=None, limit: float | None = None):
    """One panel per snapshot: the model posterior mean E_{p_θ(z|x)}[z] against the encoder mean μ_φ(x) (chapter 6).

    ``snapshots`` maps an epoch to ``(model_mean, encoder_mean)``; points on the diagonal are exact
    inference, points on the horizontal axis an encoder that ignores x.
    """
    if axes is None:
        axes = plt.subplots(1, len(snapshots), figsize=(TEXT_WIDTH, TEXT_WIDTH / len(snapshots) + 1.0), sharex=True, sharey=True)[1]
    axes = np.atleast_1d(axes)
    if limit is None:
        limit = 1.1 * max(float(t.abs().max()) for pair in snapshots.values() for t in pair)
    for ax, (epoch, (model_mean, encoder_mean)) in zip(axes, snapshots.items()):
        ax.plot([-limit, limit], [-limit, limit], color=COLORS["posterior"], lw=1, label="$\\mu_\\phi = \\mu_\\theta$")
        ax.axhline(0.0, color=COLORS["prior"], lw=1, ls=":", label="$\\mu_\\phi = 0$")
        ax.scatter(model_mean.cpu().numpy(), encoder_mean.cpu().numpy(), s=4, alpha=0.5, color=COLORS["data"])
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_title(f"epoch {epoch}")
        ax.set_xlabel("model $\\mathrm{E}_{p_\\theta(z|x)}[z]$")
    axes[0].set_ylabel("encoder $\\mu_\\phi(x)$")
    axes[0].legend(loc="upper left")
    if title:
        axes[0].figure.suptitle(title)
    return axes


GAP_COLORS = {"approximation gap": COLORS["posterior"], "amortization gap": COLORS["gap"]}


def posterior_1d(z: Tensor, density: Tensor, gaussians: dict, title: str, ax=None):
    """An exact 1-D posterior density on a grid (shaded) and Gaussian approximations {label: (mu, logvar)} over it (chapter 5)."""
    ax = _axis(ax)
    z, density = z.detach().cpu().flatten().numpy(), density.detach().cpu().flatten().numpy()
    ax.fill_between(z, density, color=COLORS["posterior"], alpha=0.3, label="exact posterior $p_\\theta(z|x)$")
    for (label, (mu, logvar)), style in zip(gaussians.items(), ("--", "-", ":")):
        mu, var = float(mu), float(np.exp(float(logvar)))
        ax.plot(z, np.exp(-0.5 * (z - mu) ** 2 / var) / np.sqrt(2 * np.pi * var), style, lw=1.8, label=label)
    inside = density > 1e-3 * density.max()
    ax.set_xlim(z[inside].min() - 0.3, z[inside].max() + 0.3)
    ax.set_xlabel("$z$")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return ax


def gap_histogram(gaps: dict, title: str = "Gaps across datapoints", bins: int = 25, ax=None):
    """Overlaid histograms of per-datapoint gaps {label: tensor}, in nats, with their means marked (chapter 5)."""
    ax = _axis(ax)
    values = {label: np.asarray(g.detach().cpu(), dtype=float) for label, g in gaps.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
    for label, v in values.items():
        color = GAP_COLORS.get(label)
        ax.hist(v, bins=edges, alpha=0.55, color=color, label=f"{label} (mean {v.mean():.2f})")
        ax.axvline(v.mean(), color=color, ls="--")
    ax.set_xlabel("gap (nats)")
    ax.set_ylabel("number of datapoints")
    ax.set_title(title)
    ax.legend()
    return ax


def layer_kls(histories: dict, title: str = "KL per layer during training", ax=None):
    """Per-epoch KL₁ and KL₂ (nats) of two-layer VAE training histories, one line style per history (chapter 10)."""
    ax = _axis(ax)
    for style, (name, history) in zip(("-", "--", ":", "-."), histories.items()):
        epochs = np.arange(1, len(history["kl1"]) + 1)
        ax.plot(epochs, history["kl1"], style, color=COLORS["kl"], label=f"KL$_1$, {name}")
        ax.plot(epochs, history["kl2"], style, color=COLORS["prior"], label=f"KL$_2$, {name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend()
    return ax


def against_k(ks, measured: dict, predicted: dict | None = None, ylabel: str = "", title: str = "", ax=None):
    """Quantities measured at several numbers of importance samples K (points), with predictions (lines), on log-log axes (chapter 7)."""
    ax = _axis(ax)
    cmap = plt.get_cmap("tab10")
    for i, (name, values) in enumerate(measured.items()):
        ax.plot(ks, np.asarray(values), "o-", ms=5, color=cmap(i), label=name)
    for i, (name, values) in enumerate((predicted or {}).items()):
        ax.plot(ks, np.asarray(values), "--", color=cmap(len(measured) + i), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of importance samples K")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax


def latent_holes(axis: Tensor, log_q: Tensor, log_p: Tensor, hole: Tensor, title: str, ax=None):
    """log₁₀ q(z)/p(z) on a square 2-D grid, the holes outlined in black and the prior's 90% region dashed (chapter 9).

    ``axis`` holds the grid's n coordinates per dimension; ``log_q``, ``log_p`` and the boolean ``hole``
    have one value per point of ``torch.cartesian_prod(axis, axis)``, shape (n·n,).
    """
    ax = _axis(ax)
    n = len(axis)
    ratio = ((log_q - log_p) / np.log(10)).reshape(n, n).T.detach().cpu().numpy()  # rows: z_2, columns: z_1
    extent = (axis[0].item(), axis[-1].item(), axis[0].item(), axis[-1].item())
    image = ax.imshow(ratio.clip(-3, 3), origin="lower", extent=extent, cmap="RdBu", vmin=-3, vmax=3)
    ax.contour(axis.numpy(), axis.numpy(), hole.reshape(n, n).T.float().numpy(), levels=[0.5], colors="black", linewidths=1.2)
    prior_mass = torch.softmax(log_p, 0).reshape(n, n).T.numpy()
    heights = np.sort(prior_mass.ravel())[::-1]
    level = heights[np.searchsorted(np.cumsum(heights), 0.9)]  # the region of highest density holding 90% of p(z)
    ax.contour(axis.numpy(), axis.numpy(), prior_mass, levels=[level], colors=COLORS["prior"], linestyles="--", linewidths=1.0)
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title=title)
    ax.grid(False)
    return ax, image


def seed_spread(values: dict, ylabel: str, title: str = "", ax=None):
    """One column per setting, one point per seed, the median as a short black bar (chapter 11)."""
    ax = _axis(ax)
    cmap = plt.get_cmap("tab10")
    for i, points in enumerate(values.values()):
        points = np.asarray(points, dtype=float)
        offsets = np.linspace(-0.15, 0.15, len(points)) if len(points) > 1 else np.zeros(1)
        ax.plot(i + offsets, points, "o", ms=5, color=cmap(i), alpha=0.85)
        ax.hlines(np.median(points), i - 0.28, i + 0.28, color="black", lw=1.5)
    ax.set_xticks(range(len(values)), list(values))
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set(ylabel=ylabel, title=title)
    return ax
