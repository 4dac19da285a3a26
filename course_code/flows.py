"""Normalizing flows for the posterior q(z|x): planar flows and inverse autoregressive flow (chapter 8).

A flow pushes a draw z₀ of a simple density q₀ through invertible steps z = f(z₀). By the change of
variables, log q(z) = log q₀(z₀) − log |det ∂f/∂z₀| (eq. `eq-change-of-variables`), so every step
returns its output and its log-determinant. The modules :class:`PlanarFlow` and :class:`IAF` plug
into ``models.VAE(flow=...)``: ``flow(z0, h) -> (z, log_det)``, with ``h`` the encoder's last hidden
layer, from which the flow's parameters depend on x.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from course_code import arguments
from course_code.models import MaskedLinear, made_masks


def _check_params(z: Tensor, **params: Tensor) -> None:
    arguments.tensor("z", z)
    for name, t in params.items():
        arguments.tensor(name, t)
    d = z.shape[-1]
    for name in ("u", "w"):
        if params[name].shape[-1] != d:
            raise ValueError(f"{name} must have z's last dimension {d}; got shape {tuple(params[name].shape)}")


def invertible_u(u: Tensor, w: Tensor) -> Tensor:
    """û = u + (m(wᵀu) − wᵀu) w / ‖w‖² with m(a) = −1 + softplus(a), so that wᵀû > −1 (Rezende & Mohamed, 2015, appendix A)."""
    wu = (w * u).sum(-1, keepdim=True)
    return u + (F.softplus(wu) - 1 - wu) * w / (w**2).sum(-1, keepdim=True).clamp_min(1e-12)


def planar(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One planar step f(z) = z + û tanh(wᵀz + b) and log |det ∂f/∂z| = log(1 + ûᵀψ(z)), ψ(z) = (1 − tanh²(wᵀz + b)) w (eq. `eq-planar`).

    ``u`` and ``w`` broadcast against ``z`` (..., d), ``b`` against ``z.shape[:-1]``; û is
    :func:`invertible_u`, so the step is invertible whatever u is.
    """
    _check_params(z, u=u, w=w, b=b)
    u_hat = invertible_u(u, w)
    t = torch.tanh((z * w).sum(-1) + b)
    log_det = torch.log1p((1 - t**2) * (w * u_hat).sum(-1))
    return z + u_hat * t[..., None], log_det


def planar_inverse(z: Tensor, u: Tensor, w: Tensor, b: Tensor, iterations: int = 80) -> Tensor:
    """The z₀ with planar(z₀) = z: α = wᵀz₀ solves wᵀz = α + wᵀû tanh(α + b), increasing in α, found by bisection.

    Then z₀ = z − û tanh(α + b). With ``iterations`` halvings of a bracket of width 2|wᵀû| + 2.
    """
    _check_params(z, u=u, w=w, b=b)
    arguments.integer("iterations", iterations)
    u_hat = invertible_u(u, w)
    wz, wu = (w * z).sum(-1), (w * u_hat).sum(-1)
    low, high = wz - wu.abs() - 1, wz + wu.abs() + 1
    for _ in range(iterations):
        alpha = (low + high) / 2
        above = alpha + wu * torch.tanh(alpha + b) > wz
        low, high = torch.where(above, low, alpha), torch.where(above, alpha, high)
    return z - u_hat * torch.tanh((low + high)[..., None] / 2 + b[..., None])


def planar_chain(z: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """K planar steps in turn, the parameters of step k in ``u[k]``, ``w[k]``, ``b[k]``; the log-determinants add up (eq. `eq-flow-chain`)."""
    log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for u_k, w_k, b_k in zip(u, w, b):
        z, step = planar(z, u_k, w_k, b_k)
        log_det = log_det + step
    return z, log_det


class PlanarFlow(nn.Module):
    """``n_steps`` planar steps whose parameters (u, w, b) are linear functions of the encoder's hidden layer h (Rezende & Mohamed, 2015)."""

    def __init__(self, z_dim: int, n_steps: int, context_dim: int):
        super().__init__()
        self.config = dict(z_dim=arguments.integer("z_dim", z_dim), n_steps=arguments.integer("n_steps", n_steps),
                           context_dim=arguments.integer("context_dim", context_dim))
        self.z_dim, self.n_steps = z_dim, n_steps
        self.params = nn.Linear(context_dim, n_steps * (2 * z_dim + 1))

    def forward(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(z, log |det ∂z/∂z₀|) for z₀ of shape (..., d) and h of shape (..., context_dim)."""
        d = self.z_dim
        params = self.params(h).unflatten(-1, (self.n_steps, 2 * d + 1)).movedim(-2, 0)  # (K, ..., 2d + 1)
        return planar_chain(z0, params[..., :d], params[..., d : 2 * d], params[..., 2 * d])


class IAFStep(nn.Module):
    """One IAF step z' = σ ⊙ z + (1 − σ) ⊙ m, with [m, s] = MADE(z, h) and σ = sigmoid(s) (Kingma et al., 2016, eq. `eq-iaf`).

    m_i and s_i depend on z_1, …, z_{i−1} (and on h), so ∂z'/∂z is triangular and log |det| = Σ_i log σ_i.
    """

    def __init__(self, z_dim: int, hidden: tuple[int, ...], context_dim: int, gate_bias: float = 2.0):
        super().__init__()
        *masks, out_mask = made_masks(z_dim, hidden)
        self.layers = nn.ModuleList(MaskedLinear(mask.shape[1], mask.shape[0], mask) for mask in masks)
        self.context = nn.Linear(context_dim, hidden[0])
        self.m = MaskedLinear(hidden[-1], z_dim, out_mask)
        self.s = MaskedLinear(hidden[-1], z_dim, out_mask)
        nn.init.constant_(self.s.bias, gate_bias)  # σ starts near 1: each step starts close to the identity

    def shift_and_gate(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(m, log σ) of every coordinate, each from the coordinates before it."""
        a = torch.relu(self.layers[0](z) + self.context(h))
        for layer in self.layers[1:]:
            a = torch.relu(layer(a))
        return self.m(a), F.logsigmoid(self.s(a))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        m, log_sigma = self.shift_and_gate(z, h)
        sigma = log_sigma.exp()
        return sigma * z + (1 - sigma) * m, log_sigma.sum(-1)

    def inverse(self, z: Tensor, h: Tensor) -> Tensor:
        """The z₀ with step(z₀) = z, coordinate by coordinate: after pass i the first i coordinates are exact."""
        z0 = torch.zeros_like(z)
        for _ in range(z.shape[-1]):
            m, log_sigma = self.shift_and_gate(z0, h)
            sigma = log_sigma.exp()
            z0 = (z - (1 - sigma) * m) / sigma
        return z0


class IAF(nn.Module):
    """Inverse autoregressive flow: ``n_steps`` :class:`IAFStep` s, the order of z reversed in every other step (Kingma et al., 2016)."""

    def __init__(self, z_dim: int, n_steps: int, context_dim: int, hidden: tuple[int, ...] | list[int] = (64,)):
        super().__init__()
        hidden = arguments.sizes("hidden", hidden)
        self.config = dict(z_dim=arguments.integer("z_dim", z_dim), n_steps=arguments.integer("n_steps", n_steps),
                           context_dim=arguments.integer("context_dim", context_dim), hidden=hidden)
        if not hidden:
            raise ValueError("hidden must hold at least one width: each IAF step is a MADE with a hidden layer")
        self.steps = nn.ModuleList(IAFStep(z_dim, hidden, context_dim) for _ in range(n_steps))

    def forward(self, z0: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(z, log |det ∂z/∂z₀|) for z₀ of shape (..., d) and h of shape (..., context_dim)."""
        z, log_det = z0, torch.zeros(z0.shape[:-1], dtype=z0.dtype, device=z0.device)
        for k, step in enumerate(self.steps):
            flip = k % 2 == 1
            z, step_log_det = step(z.flip(-1) if flip else z, h)
            z = z.flip(-1) if flip else z
            log_det = log_det + step_log_det
        return z, log_det

    def inverse(self, z: Tensor, h: Tensor) -> Tensor:
        """The z₀ the flow maps to z: the steps undone in reverse order."""
        for k in reversed(range(len(self.steps))):
            flip = k % 2 == 1
            z = self.steps[k].inverse(z.flip(-1) if flip else z, h)
            z = z.flip(-1) if flip else z
        return z
