"""Every figure of the course: image grids, latent scatters, training curves.

Each function draws on a given axis (or makes one), labels it, and returns the axis, so a
notebook cell ends with ``plt.show()`` or a ``;`` and prints nothing else.
"""

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
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


def use_style() -> None:
    """The course's plot style: readable sizes, light grid, no top/right spines, PNG output at a fixed size."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "image.cmap": "gray_r",
        }
    )


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
        ax.legend(title="digit", markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
