"""Attacks taken from libraries (torchattacks 3.5.1, foolbox 3.3.4), wrapped to the common contract.

The model is handed to the library inside a :class:`~advrep.attacks.base.LibraryMonitor`, which counts forward
calls and keeps each sample's first adversarial point inside the ball that the library visits on a whole-batch
call; minimisation attacks (CW-L2, Boundary) run unbounded and their result is projected onto the eps-ball by the
base class, as foolbox's ``epsilons=`` clipping does.  Each wrapper is tested against a direct call of its
library with the same seed.
"""

from __future__ import annotations

import torch

from .base import Attack, LibraryMonitor, register, scalar_eps

_TA_NORM = {"linf": "Linf", "l2": "L2"}


def _foolbox():
    import foolbox

    return foolbox


def _torchattacks():
    import torchattacks

    return torchattacks


@register
class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2 (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", S&P 2017),
    from foolbox (``L2CarliniWagnerAttack``: tanh box reparametrisation, Adam, binary search over the constant c).
    Defaults are the paper's, as foolbox has them: 9 binary-search steps, 10000 Adam steps of 0.01, initial
    c = 1e-3, confidence kappa = 0, abort early.  The minimal adversarial found is projected onto the eps-ball."""

    name = "cw_l2"
    norms = ("l2",)

    def __init__(self, model, *, eps, norm="l2", binary_search_steps: int = 9, steps: int = 10000,
                 stepsize: float = 0.01, confidence: float = 0.0, initial_const: float = 1e-3,
                 abort_early: bool = True, seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.binary_search_steps, self.steps, self.stepsize = binary_search_steps, steps, stepsize
        self.confidence, self.initial_const, self.abort_early = confidence, initial_const, abort_early

    def _run(self, x, y, eps):
        fb = _foolbox()
        mon = LibraryMonitor(self.model, x, y, eps, self.norm)
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=self.binary_search_steps, steps=self.steps, stepsize=self.stepsize,
            confidence=self.confidence, initial_const=self.initial_const, abort_early=self.abort_early)
        raw = attack.run(fb.PyTorchModel(mon, bounds=(0, 1), device=x.device), x, fb.criteria.Misclassification(y))
        # foolbox leaves an all-zero image where it found no adversarial: such a sample stays at x (the base class
        # would otherwise project the black image onto the ball and return a point that means nothing; for x black
        # itself the two are the same)
        nothing = (raw.flatten(1) == 0).all(1)
        raw = torch.where(nothing.view(-1, *([1] * (x.ndim - 1))), x, raw)
        return mon.combine(raw)


@register
class Boundary(Attack):
    """Boundary attack, L2, decision-based (Brendel, Rauber & Bethge, "Decision-Based Adversarial Attacks:
    Reliable Attacks Against Black-Box Machine Learning Models", ICLR 2018), from foolbox (``BoundaryAttack``;
    defaults are foolbox's: 25000 steps, spherical and source steps 0.01, step adaptation 1.5).

    Starting points come from foolbox's default initialisation, ``LinearSearchBlendedUniformNoiseAttack(steps=50)``.
    Where blending with noise never changes the prediction (it happens on adversarially trained models), the start is
    the nearest other image of the batch that the model assigns to another class, moved towards ``x`` by bisection
    on the segment between them (``fallback_steps`` forwards; what foolbox's ``DatasetAttack`` would give, without a
    second dataset); a sample with neither (a batch of one class) is left unbroken, and ``self.no_start`` counts such
    samples of the last call.  The minimal adversarial found is projected onto the eps-ball."""

    name = "boundary"
    norms = ("l2",)

    def __init__(self, model, *, eps, norm="l2", steps: int = 25000, spherical_step: float = 0.01,
                 source_step: float = 0.01, source_step_convergance: float = 1e-7, step_adaptation: float = 1.5,
                 update_stats_every_k: int = 10, init_steps: int = 50, fallback_steps: int = 10,
                 seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps, self.spherical_step, self.source_step = steps, spherical_step, source_step
        self.source_step_convergance, self.step_adaptation = source_step_convergance, step_adaptation
        self.update_stats_every_k, self.init_steps = update_stats_every_k, init_steps
        self.fallback_steps = fallback_steps
        self.no_start = 0

    def _run(self, x, y, eps):
        fb = _foolbox()
        mon = LibraryMonitor(self.model, x, y, eps, self.norm)
        fmodel = fb.PyTorchModel(mon, bounds=(0, 1), device=x.device)
        crit = fb.criteria.Misclassification(y)
        start = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=self.init_steps).run(fmodel, x, crit)
        with torch.no_grad():
            ok = mon(start).argmax(1) != y
            if not bool(ok.all()):
                start, ok = self._batch_starts(mon, x, y, start, ok)
        self.no_start = int((~ok).sum())
        x_adv, calls = mon.combine(start)
        if ok.any():
            rows = ok.nonzero().squeeze(1)
            mon2 = LibraryMonitor(self.model, x[rows], y[rows], eps[rows], self.norm)
            attack = fb.attacks.BoundaryAttack(
                steps=self.steps, spherical_step=self.spherical_step, source_step=self.source_step,
                source_step_convergance=self.source_step_convergance, step_adaptation=self.step_adaptation,
                update_stats_every_k=self.update_stats_every_k)
            raw = attack.run(fb.PyTorchModel(mon2, bounds=(0, 1), device=x.device), x[rows],
                             fb.criteria.Misclassification(y[rows]), starting_points=start[rows])
            xa2, c2 = mon2.combine(raw)
            keep = mon.found[rows]  # already broken inside the ball during initialisation
            mask = keep.view(-1, *([1] * (x.ndim - 1)))
            x_adv[rows] = torch.where(mask, x_adv[rows], xa2)
            calls[rows] = torch.where(keep, calls[rows], mon.calls + c2)
        return x_adv, calls

    def _batch_starts(self, mon, x, y, start, ok):
        """Starting points for the rows without one (``~ok``): the nearest (L2) image of the batch that the model
        assigns to a class other than the row's label, then bisection towards ``x`` on the segment between them,
        keeping the point adversarial.  Every sample handed to ``_run`` is classified correctly, so its label is
        the model's prediction and any other-label image is a valid start."""
        miss = (~ok).nonzero().squeeze(1)
        flat = x.flatten(1)
        dist = torch.cdist(flat[miss], flat)
        dist[y[miss].view(-1, 1) == y.view(1, -1)] = float("inf")  # same class: not adversarial for the row
        d, j = dist.min(1)
        has = torch.isfinite(d)
        if not bool(has.any()):
            return start, ok
        rows, src = miss[has], j[has]
        view = (-1,) + (1,) * (x.ndim - 1)
        lo = torch.zeros(rows.numel(), dtype=x.dtype, device=x.device)  # fraction of the way to the other image
        hi = torch.ones_like(lo)  # at hi the blend is adversarial (hi = 1: the other image itself)
        for _ in range(self.fallback_steps):
            mid = (lo + hi) / 2
            cand = x[rows] + mid.view(view) * (x[src] - x[rows])
            adv = mon(cand).argmax(1) != y[rows]  # counted: a model call spent on finding a start
            hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
        start = start.clone()
        start[rows] = (x[rows] + hi.view(view) * (x[src] - x[rows])).clamp(0.0, 1.0)
        ok = ok.clone()
        ok[rows] = mon(start[rows]).argmax(1) != y[rows]  # hi = 1 is (up to rounding) another image: adversarial
        return start, ok


@register
class SPSA(Attack):
    """SPSA, L-inf, gradient-free (Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and the Dangers
    of Evaluating Against Weak Attacks", ICML 2018), from torchattacks (``SPSA``, the advertorch port): Adam on a
    finite-difference gradient estimate of the margin loss from ``nb_sample`` Rademacher directions.

    Defaults: delta = 0.01, lr = 0.01, 128 samples per estimate in batches of 64 (torchattacks/advertorch);
    ``nb_iter = 100`` is our choice (torchattacks' default is 1 iteration; the paper's iteration count was not
    checked here)."""

    name = "spsa"
    norms = ("linf",)

    def __init__(self, model, *, eps, norm="linf", delta: float = 0.01, lr: float = 0.01, nb_iter: int = 100,
                 nb_sample: int = 128, max_batch_size: int = 64, seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.delta, self.lr, self.nb_iter = delta, lr, nb_iter
        self.nb_sample, self.max_batch_size = nb_sample, max_batch_size

    def _run(self, x, y, eps):
        mon = LibraryMonitor(self.model, x, y, eps, self.norm)
        attack = _torchattacks().SPSA(mon, eps=scalar_eps(eps, "spsa"), delta=self.delta, lr=self.lr,
                                      nb_iter=self.nb_iter, nb_sample=self.nb_sample,
                                      max_batch_size=self.max_batch_size)
        return mon.combine(attack(x, y))


@register
class Square(Attack):
    """Square Attack, L-inf or L2, score-based (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020), from torchattacks (``Square``).

    Defaults: 5000 queries, p_init = 0.8, margin loss, 1 restart (AutoAttack's settings, torchattacks'
    defaults).  ``model_calls`` are the library's exact per-sample query counts (summed over restarts)."""

    name = "square"

    def __init__(self, model, *, eps, norm="linf", n_queries: int = 5000, n_restarts: int = 1,
                 p_init: float = 0.8, loss: str = "margin", resc_schedule: bool = True, seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.n_queries, self.n_restarts, self.p_init = n_queries, n_restarts, p_init
        self.loss, self.resc_schedule = loss, resc_schedule

    def _run(self, x, y, eps):
        attack = _torchattacks().Square(self.model, norm=_TA_NORM[self.norm], eps=scalar_eps(eps, "square"),
                                        n_queries=self.n_queries, n_restarts=1, p_init=self.p_init,
                                        loss=self.loss, resc_schedule=self.resc_schedule,
                                        seed=0 if self.seed is None else self.seed)
        # Square.perturb, restart by restart, keeping the per-sample query counts it discards
        attack.init_hyperparam(x)
        if self.seed is not None:
            torch.random.manual_seed(self.seed)
            if x.is_cuda:
                torch.cuda.random.manual_seed(self.seed)
        x_adv = x.clone()
        calls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.n_restarts):
            rows = todo.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            queries, adv = attack.attack_single_run(x[rows], y[rows])
            calls[rows] += queries.long().to(calls.device)
            x_adv[rows] = adv
            with torch.no_grad():
                todo[rows[self.model(adv).argmax(1) != y[rows]]] = False
        return x_adv, calls


@register
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020), version 'standard' from torchattacks (``AutoAttack``): APGD-CE, APGD-T
    (9 target classes), FAB-T (9 targets), Square (5000 queries), each on the samples the previous ones left.

    ``paper=True`` (default) restores the settings of the authors' package (fra31/auto-attack, ``set_version
    ('standard')`` and its constructor): 100 iterations for APGD-CE, APGD-T and FAB-T (torchattacks 3.5.1 builds
    them with its default of 10) and Square with ``resc_schedule=False``.  ``paper=False`` runs torchattacks'
    'standard' exactly as shipped.

    ``steps`` / ``square_queries`` (default None: as above) cut the budget of the gradient components (APGD, APGD-T,
    FAB) and of Square, for smoke-scale runs; a result with a cut budget is not AutoAttack's.
    """

    name = "autoattack"

    def __init__(self, model, *, eps, norm="linf", version: str = "standard", n_classes: int | None = None,
                 paper: bool = True, steps: int | None = None, square_queries: int | None = None,
                 seed: int | None = 0):
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        for key, v in (("steps", steps), ("square_queries", square_queries)):
            if v is not None and int(v) < 1:
                raise ValueError(f"autoattack: {key} must be >= 1, got {v}")
        self.version, self.n_classes, self.paper = version, n_classes, paper
        self.steps, self.square_queries = steps, square_queries

    def _run(self, x, y, eps):
        n_classes = self.n_classes
        if n_classes is None:
            with torch.no_grad():
                n_classes = self.model(x[:1]).shape[1]
        mon = LibraryMonitor(self.model, x, y, eps, self.norm)
        attack = _torchattacks().AutoAttack(mon, norm=_TA_NORM[self.norm], eps=scalar_eps(eps, "autoattack"),
                                            version=self.version, n_classes=n_classes, seed=self.seed)
        if self.paper and self.version == "standard":
            for sub in attack._autoattack.attacks:
                if type(sub).__name__ in ("APGD", "APGDT", "FAB"):
                    sub.steps = 100
                elif type(sub).__name__ == "Square":
                    sub.rescale_schedule = False
        for sub in attack._autoattack.attacks:
            if self.steps is not None and type(sub).__name__ in ("APGD", "APGDT", "FAB"):
                sub.steps = int(self.steps)
            elif self.square_queries is not None and type(sub).__name__ == "Square":
                sub.n_queries = int(self.square_queries)
        return mon.combine(attack(x, y))
