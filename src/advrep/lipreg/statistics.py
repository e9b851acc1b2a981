"""lipreg's attack statistics (Tables 1-3, 6; Figures 2-4): every correctly classified test image is perturbed until
misclassified by each attack, and the closest adversarial found is kept (paper L442, Table 6 caption L525).

The four attacks of L442 (the paper ran them through Foolbox; here the toolkit's, which wrap Foolbox for CW and
Boundary) as minimal-distance searches, in the norm each attack measures:

* ``pgd`` (L2 PGD) and ``ifgsm`` (I-FGSM, L-inf) are attacks at a radius: one run at ``max_eps`` (its
  ``model_calls`` are the calls until first success, the "median time" of L480), then ``n_bisect`` bisection
  steps on each broken sample's radius (as :func:`advrep.attacks.minimal_distance` ``method="bisection"`` does),
  keeping the closest verified adversarial;
* ``cw`` (Carlini-Wagner L2) and ``boundary`` minimise the distance themselves: run once with ``eps = inf``
  through :class:`ClosestAdversarial`, which records the closest misclassified input the attack ever forwarded (the
  library's final point included), so the distance is the attack's own minimum and the calls are the toolkit's calls
  until first success;
* ``evasive_cw`` (:mod:`advrep.lipreg.evasive`) runs with ``eps = inf`` and its own choice of point is kept: it
  trades distance against detectability, so the closest misclassified point it visited is not the one it returns.

:func:`attack_statistics` returns per sample and attack ``dist_l2:<a>``, ``dist_linf:<a>`` (both norms of the
attack's closest adversarial; 0 for a misclassified image, inf where none was found) and ``calls:<a>``; with
``keep_adversarials`` also the adversarial images (for the detector's gradient norms, Table 6 / Figure 4).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..attacks import eval_mode, lp_norm, run_attack

# label -> (toolkit attack, the norm it minimises, search); the paper's names in L442 and Table 6
PAPER_ATTACKS = {
    "pgd": ("pgd", "l2", "bisection"),
    "ifgsm": ("ifgsm", "linf", "bisection"),
    "boundary": ("boundary", "l2", "minimal"),
    "cw": ("cw_l2", "l2", "minimal"),
    "evasive_cw": ("evasive_cw", "l2", "own"),
}
NORMS = ("l2", "linf")


class ClosestAdversarial(nn.Module):
    """Wraps the attacked model: for every forward of the whole batch (same shape as ``x``) it records each sample's
    closest (in ``norm``) input that is misclassified and inside [0, 1]."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str):
        super().__init__()
        self.model = model
        self.x, self.y, self.norm = x.detach(), y, norm
        self.best = torch.full((x.shape[0],), float("inf"), device=x.device, dtype=x.dtype)
        self.x_best = x.detach().clone()
        self.eval()

    def forward(self, z):
        out = self.model(z)
        if z.shape == self.x.shape:
            with torch.no_grad():
                zd = z.detach()
                flat = zd.flatten(1)
                d = lp_norm(zd - self.x, self.norm)
                better = (out.detach().argmax(1) != self.y) & (d < self.best) & (flat.amin(1) >= 0) \
                    & (flat.amax(1) <= 1)
                if better.any():
                    self.best = torch.where(better, d, self.best)
                    self.x_best[better] = zd[better]
        return out


def _minimal(model, x, y, name, norm, params, track_closest=True):
    track = ClosestAdversarial(model, x, y, norm)
    ones = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    r = run_attack(name, track if track_closest else model, x, y, eps=float("inf"), norm=norm, clean_correct=ones,
                   **dict(params))
    own = torch.where(r.success, lp_norm(r.x_adv - x, norm), torch.full_like(track.best, float("inf")))
    use_own = own < track.best
    x_best = torch.where(use_own.view(-1, *([1] * (x.ndim - 1))), r.x_adv, track.x_best)
    return x_best, torch.minimum(own, track.best), r.model_calls


def _bisection(model, x, y, name, norm, params, max_eps, n_bisect):
    params = dict(params)
    alpha_factor = params.pop("alpha_factor", None)  # I-FGSM's step as a fraction of each sample's radius

    def attack(eps):
        kw = dict(params)
        if alpha_factor is not None:
            kw["alpha"] = float(alpha_factor) * eps
        ones = torch.ones(eps.shape[0], dtype=torch.bool, device=x.device)
        return kw, ones

    eps0 = torch.full((x.shape[0],), float(max_eps), device=x.device, dtype=x.dtype)
    kw, ones = attack(eps0)
    first = run_attack(name, model, x, y, eps=eps0, norm=norm, clean_correct=ones, **kw)
    inf = torch.full_like(eps0, float("inf"))
    d = torch.where(first.success, lp_norm(first.x_adv - x, norm), inf)
    x_best = first.x_adv.clone()
    lo, hi = torch.zeros_like(d), torch.where(first.success, d, eps0)
    todo = first.success & (d > 0)
    for _ in range(int(n_bisect)):
        rows = todo.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        mid = (lo[rows] + hi[rows]) / 2
        kw, ones = attack(mid)
        r = run_attack(name, model, x[rows], y[rows], eps=mid, norm=norm, clean_correct=ones, **kw)
        found = lp_norm(r.x_adv - x[rows], norm)
        better = r.success & (found < d[rows])
        d[rows] = torch.where(better, found, d[rows])
        x_best[rows[better]] = r.x_adv[better]
        hi[rows] = torch.where(r.success, torch.minimum(mid, found), hi[rows])
        lo[rows] = torch.where(r.success, lo[rows], mid)
    return x_best, d, first.model_calls


def attack_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Mapping[str, Mapping], *,
                      batch_size: int = 256, keep_adversarials: bool = False):
    """Per-sample minimal-distance statistics of ``attacks`` (label -> settings: ``params`` of the toolkit
    attack; ``max_eps`` and ``n_bisect`` for the radius attacks).  Returns ``(columns, adversarials)``:
    ``{"dist_l2:<a>", "dist_linf:<a>", "calls:<a>": np.ndarray}`` and, with ``keep_adversarials``, ``{label:
    (N, ...) tensor}`` of the closest adversarial images (``x`` itself where none was found or x is
    misclassified)."""
    unknown = sorted(set(attacks) - set(PAPER_ATTACKS))
    if unknown:
        raise ValueError(f"unknown lipreg attack(s) {unknown}; known: {sorted(PAPER_ATTACKS)}")
    if any(a == "evasive_cw" for a in attacks):
        from . import evasive  # noqa: F401  (registers evasive_cw)
    cols: dict[str, list] = {}
    advs: dict[str, list] = {a: [] for a in attacks}
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        with eval_mode(model), torch.no_grad():
            correct = model(xb).argmax(1) == yb
        rows = correct.nonzero().squeeze(1)
        for label, cfg in attacks.items():
            name, norm, search = PAPER_ATTACKS[label]
            params = dict(cfg.get("params") or {})
            x_adv = xb.clone()
            d = torch.zeros(xb.shape[0], device=xb.device, dtype=xb.dtype)
            calls = torch.zeros(xb.shape[0], dtype=torch.long, device=xb.device)
            if rows.numel():
                if search in ("minimal", "own"):
                    xa, dr, cr = _minimal(model, xb[rows], yb[rows], name, norm, params, search == "minimal")
                else:
                    xa, dr, cr = _bisection(model, xb[rows], yb[rows], name, norm, params, cfg["max_eps"],
                                            cfg.get("n_bisect", 8))
                found = torch.isfinite(dr)
                x_adv[rows[found]] = xa[found].to(x_adv.dtype)
                d[rows] = dr
                calls[rows] = cr.to(calls)
            for n in NORMS:
                if n == norm:
                    dn = d
                else:
                    dn = torch.where(torch.isfinite(d), lp_norm(x_adv - xb, n), d)
                cols.setdefault(f"dist_{n}:{label}", []).append(dn.detach().cpu().numpy().astype(float))
            cols.setdefault(f"calls:{label}", []).append(calls.cpu().numpy())
            if keep_adversarials:
                advs[label].append(x_adv.detach().cpu())
    out = {k: np.concatenate(v) for k, v in cols.items()}
    adv = {k: torch.cat(v) for k, v in advs.items()} if keep_adversarials else {}
    return out, adv


def error_at(dist: np.ndarray, eps: float) -> float:
    """Percent of test images misclassified at radius ``eps``: minimal adversarial distance <= eps (misclassified
    images have distance 0; images never broken inf)."""
    d = np.asarray(dist, dtype=float)
    return 100.0 * float((d <= eps).mean())


def median_distance(dist: np.ndarray) -> float:
    """Median adversarial distance over all test images (misclassified at 0: the x-intercept of 50% on the error
    curve, L478); :func:`advrep.evaluate.median_adversarial_distance`."""
    from ..evaluate import median_adversarial_distance

    return median_adversarial_distance(np.asarray(dist, dtype=float))


def error_curve(dist: np.ndarray, grid) -> np.ndarray:
    """Fraction of successful attacks (error) at each radius of ``grid`` (Figures 2 and 3)."""
    from ..evaluate import accuracy_curve

    return 1.0 - accuracy_curve(np.asarray(dist, dtype=float), grid)
