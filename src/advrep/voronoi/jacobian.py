"""Jacobian regularisation (Hoffman, Roberts & Yaida, "Robust learning with Jacobian regularization", 2019,
arXiv:1908.02729), the voronoi paper's additional baseline in Figure 4 (003_ecf3e37839b8b53b.txt L109: "We include
the recently proposed Jacobian regularization algorithm of Hoffman et al. (2019) with lambda_jr = 1.0").

Hoffman et al.'s joint loss (their eq. 5 and Algorithm 1):

    L = CE(z(x), y) + (lambda_JR / 2) * mean_batch ||J(x)||_F^2,    J_{c,i} = d z_c / d x_i,

with ``z`` the logits (the input to the softmax) and ``x`` the model's input (here the [0, 1] image: our models
carry their normalisation inside).  ||J||_F^2 is estimated by random projection (Algorithm 1): draw ``v`` uniformly on
the unit sphere in R^C (a normalised Gaussian), ``J_v = d (v . z) / d x``; ``C * ||J_v||^2`` is unbiased since
E[v v^T] = I / C; averaged over ``n_proj`` draws (their default ``n_proj = 1``).  ``method="exact"`` sums the C rows
(one backward pass per class) instead.  Both are differentiable in the weights (double backpropagation).

Per-sample Jacobians come from the gradient of a batch sum, which is exact when samples do not interact (eval mode;
in train mode BatchNorm couples the samples of a batch slightly, as in any framework computing it this way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..train.objectives import Objective, register_objective

METHODS = ("random", "exact")


def frobenius_sq(logits: torch.Tensor, x: torch.Tensor, *, n_proj: int = 1, method: str = "random",
                 create_graph: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample ||d logits / d x||_F^2 (B,), from ``logits = model(x)`` with ``x.requires_grad``: the random
    projection estimate of Hoffman et al. (``n_proj`` draws) or the exact sum over classes."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b, c = logits.shape
    out = torch.zeros(b, dtype=torch.float32, device=logits.device)
    if method == "exact":
        for k in range(c):
            (g,) = torch.autograd.grad(logits[:, k].sum(), x, create_graph=create_graph, retain_graph=True)
            out = out + g.float().flatten(1).pow(2).sum(1)
        return out
    if n_proj < 1:
        raise ValueError("n_proj must be >= 1")
    for _ in range(int(n_proj)):
        v = torch.randn(b, c, device=logits.device, dtype=torch.float32, generator=generator)
        v = v / v.norm(dim=1, keepdim=True)
        (g,) = torch.autograd.grad((v.to(logits.dtype) * logits).sum(), x, create_graph=create_graph,
                                   retain_graph=True)
        out = out + c * g.float().flatten(1).pow(2).sum(1)
    return out / n_proj


def jacobian_frobenius_sq(model: nn.Module, x: torch.Tensor, *, n_proj: int = 1, method: str = "exact",
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample squared Frobenius norm of the model's input-logit Jacobian at ``x`` (no graph kept)."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        return frobenius_sq(model(xr), xr, n_proj=n_proj, method=method, create_graph=False,
                            generator=generator).detach()


@register_objective("jacobian_reg")
class JacobianReg(Objective):
    """Hoffman et al. (2019): ``CE + (lam / 2) * mean ||J||_F^2`` on clean inputs (``lam`` = lambda_JR; voronoi
    paper: 1.0).  ``n_proj``/``method``: see :func:`frobenius_sq`.  Logs ``jacobian_fro_sq`` (batch mean)."""

    def __init__(self, lam: float = 1.0, n_proj: int = 1, method: str = "random"):
        if method not in METHODS:
            raise ValueError(f"jacobian_reg: method must be one of {METHODS}, got {method!r}")
        if lam < 0 or int(n_proj) < 1:
            raise ValueError("jacobian_reg: lam must be >= 0 and n_proj >= 1")
        self.lam, self.n_proj, self.method = float(lam), int(n_proj), method

    def __call__(self, model, x, y, ctx):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            logits = model(xr)
            ce = F.cross_entropy(logits, y)
            if self.lam == 0:
                return ce, logits
            fro = frobenius_sq(logits, xr, n_proj=self.n_proj, method=self.method, create_graph=True)
        ctx.log("jacobian_fro_sq", fro.mean().detach())
        return ce + 0.5 * self.lam * fro.mean(), logits
