"""Issue 15, part 2: a designed sweep over the PLANES training settings that the voronoi paper (003, Section 5) does
not state, to see whether any of them reproduces Figure 3 (NAUC Voronoi 0.99 / 0.92, Madry 0.94 / 0.87 at codim
10 / 500) and its three orderings.

What is fixed (the paper's): one-hidden-layer ReLU MLP with 100 units (:func:`advrep.voronoi.planes.make_model`),
Adam at lr 0.1, Madry L2 AT at eps 1, Voronoi constraints with m = 10, 20 retrainings, the PLANES data
(:func:`advrep.data.synthetic.make_planes`), and the evaluation of the figure (:func:`planes.evaluate_one` with
today's ``voronoi.figure3`` evaluation settings).  What varies (:class:`StudyConfig`, one field per open setting):
epochs, batch size (or full batch), the inner maximisation's steps and step size (both methods), Madry's training
attack alone (steps, step size, random start), the initialisation, the learning-rate schedule of Adam (constant,
cosine, step) and resetting Adam's state every epoch, and early stopping (on a held-out robust criterion or on the
training robust loss).  :func:`configs` is the design: one factor at a time around today's config (``baseline``)
plus a few combined configs.

Training (:func:`train`) is planes.train_one's loop: the same model, objectives (PGDAT, VoronoiAT), data order and
seeding as :func:`advrep.train.fit` (its ``train_step``, ``_seed_epoch`` and ``_prepare_loader``), without the per-epoch
checkpoints (a study run is minutes; nothing to resume), with the hooks fit has no place for (optimizer reset, early
stopping with best-weight restore).  At ``baseline`` it gives exactly planes.train_one's weights (tested).

Statistics: per (config, method, codim) the NAUC of each of the 20 retrainings, mean with a 95 % t interval
(mean +- t_{0.975, n-1} sd / sqrt(n), sd with ddof = 1); the orderings as paired differences over retrainings r
(retraining r of both methods / both codims uses the same seed), with the same interval on the differences.  A claim
*holds* when its interval lies above 0, is *reversed* when it lies below 0, else *unresolved*.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..evaluate import nauc, robust_accuracy_at
from ..train.context import EpochContext
from ..train.loop import IndexedDataset, _prepare_loader, _seed_epoch, batch_index, seed_everything, train_step
from ..train.objectives import PGDAT
from ..train.schedules import LRSchedule
from . import planes
from .constraints import NeighbourIndex
from .training import VoronoiAT

METHODS = planes.METHODS
CODIMS = (10, 500)
INITS = ("torch", "xavier", "he")
SCHEDULES = ("constant", "cosine", "step")
EARLY_STOPS = ("none", "heldout", "train_robust")
CLAIMS = ("Voronoi > Madry (codim 10)", "Voronoi > Madry (codim 500)", "Madry codim 10 > codim 500")

# Today's evaluation (config/config.yaml voronoi.figure3; tests check they agree), the same for every configuration.
# The sweep of 2026-12-01 (benchmarks/out/voronoi_planes_study_eval11.*) ran before issue 15 part 1 changed it, with
# eval_eps_points=11 and no line search; cache files are tagged with EVAL so results of another evaluation are never
# reused.
EVAL = dict(eval_eps_max=1.0, eval_eps_points=21, eval_steps=20, eval_step_sizes=(0.1, 0.25), eval_line_points=100)
# The paper's stated settings (planes.PAPER): never varied here.
FIXED = dict(lr=0.1, hidden=100, madry_eps=1.0, m=10)

# Held-out criterion for early stopping: fresh points drawn uniformly on the two planes (neither training vertices
# nor test cell centres), robust accuracy under a cheap version of the evaluation, integrated over a coarse grid.
HELDOUT_PER_PLANE = 100
HELDOUT_EPS = (0.0, 0.25, 0.5, 0.75, 1.0)
HELDOUT_ATTACKS = (("fgsm", {}), ("pgd", {"steps": 10, "alpha_per_eps": 0.25, "random_start": False}))


@dataclass(frozen=True)
class StudyConfig:
    """One configuration of the open settings; the defaults are today's ``voronoi.figure3`` training settings.

    ``batch_size``: None = full batch (one step per epoch).  ``attack_steps``/``attack_alpha``: the inner
    maximisation of both methods (PLANES units).  ``madry_steps``/``madry_alpha``: Madry's training attack alone
    (None = the shared ones); ``madry_random_start``: PGD's uniform start in the ball.  ``init``: ``torch`` (PyTorch's
    default for nn.Linear: U(+-1/sqrt(fan_in)) weights and biases), ``xavier`` (Glorot uniform, zero biases) or
    ``he`` (Kaiming normal for ReLU, zero biases).  ``schedule``: Adam's lr over training, ``constant``, ``cosine``
    (to 0 at the last step) or ``step`` (x ``step_gamma`` at half the epochs), set per iteration.  ``reset_adam``:
    clear Adam's moments at the start of every epoch.  ``early_stop``: ``none``, ``heldout`` (the held-out robust
    NAUC of :data:`HELDOUT_EPS` on fresh points of the planes) or ``train_robust`` (the epoch's mean training
    robust loss); training stops after ``patience`` epochs without improvement (by more than ``min_delta``) and the
    best epoch's weights are kept; ``epochs`` is then the maximum.
    """

    name: str
    factor: str  # the setting this configuration varies ("baseline", "combined", or one open setting)
    level: str  # its value, as text (plot labels)
    epochs: int = 20
    batch_size: int | None = 50
    attack_steps: int = 10
    attack_alpha: float = 0.25
    madry_steps: int | None = None
    madry_alpha: float | None = None
    madry_random_start: bool = True
    init: str = "torch"
    schedule: str = "constant"
    step_gamma: float = 0.1
    reset_adam: bool = False
    early_stop: str = "none"
    patience: int = 5
    min_delta: float = 1e-3

    def __post_init__(self):
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or None (full batch), got {self.batch_size}")
        if self.attack_steps < 1 or not self.attack_alpha > 0:
            problems.append(f"attack_steps >= 1 and attack_alpha > 0 needed, got {self.attack_steps}, "
                            f"{self.attack_alpha}")
        if self.madry_steps is not None and self.madry_steps < 1:
            problems.append(f"madry_steps must be >= 1 or None, got {self.madry_steps}")
        if self.madry_alpha is not None and not self.madry_alpha > 0:
            problems.append(f"madry_alpha must be > 0 or None, got {self.madry_alpha}")
        for key, value, allowed in (("init", self.init, INITS), ("schedule", self.schedule, SCHEDULES),
                                    ("early_stop", self.early_stop, EARLY_STOPS)):
            if value not in allowed:
                problems.append(f"{key} must be one of {allowed}, got {value!r}")
        if self.patience < 1:
            problems.append(f"patience must be >= 1, got {self.patience}")
        if problems:
            raise ValueError(f"StudyConfig {self.name!r}: " + "; ".join(problems))

    @property
    def settings(self) -> planes.PlanesSettings:
        """The planes.PlanesSettings this configuration shares with the figure (its evaluation fields are what
        :func:`run_task` uses; training fields it cannot express, such as the schedule, live on the config only;
        ``batch_size`` None = full batch, which planes.train_one does not know)."""
        return planes.PlanesSettings(epochs=self.epochs, batch_size=self.batch_size, attack_steps=self.attack_steps,
                                     attack_alpha=self.attack_alpha, retrainings=1, **FIXED, **EVAL)

    def describe(self) -> dict:
        d = asdict(self)
        d["batch_size"] = "full" if self.batch_size is None else self.batch_size
        return d


def configs() -> list[StudyConfig]:
    """The design: today's config, one factor at a time around it, and combined configs."""
    B = StudyConfig("baseline", "baseline", "today")
    one = [
        # epochs
        replace(B, name="epochs5", factor="epochs", level="5", epochs=5),
        replace(B, name="epochs10", factor="epochs", level="10", epochs=10),
        replace(B, name="epochs40", factor="epochs", level="40", epochs=40),
        # batch size (the training set has 450 points)
        replace(B, name="batch25", factor="batch_size", level="25", batch_size=25),
        replace(B, name="batch150", factor="batch_size", level="150", batch_size=150),
        replace(B, name="fullbatch", factor="batch_size", level="full", batch_size=None),
        # inner maximisation, both methods
        replace(B, name="steps1", factor="attack_steps", level="1", attack_steps=1),
        replace(B, name="steps3", factor="attack_steps", level="3", attack_steps=3),
        replace(B, name="steps20", factor="attack_steps", level="20", attack_steps=20),
        replace(B, name="alpha0.05", factor="attack_alpha", level="0.05", attack_alpha=0.05),
        replace(B, name="alpha0.1", factor="attack_alpha", level="0.1", attack_alpha=0.1),
        replace(B, name="alpha0.5", factor="attack_alpha", level="0.5", attack_alpha=0.5),
        replace(B, name="alpha1", factor="attack_alpha", level="1", attack_alpha=1.0),
        # Madry's training attack alone (step size 2.5 eps / steps: Madry et al.'s rule; 1 step of eps = FGM)
        replace(B, name="madry_fgm", factor="madry_attack", level="1 x 1.0", madry_steps=1, madry_alpha=1.0),
        replace(B, name="madry_pgd3", factor="madry_attack", level="3 x 0.83", madry_steps=3, madry_alpha=2.5 / 3),
        replace(B, name="madry_pgd20", factor="madry_attack", level="20 x 0.125", madry_steps=20,
                madry_alpha=2.5 / 20),
        replace(B, name="madry_nostart", factor="madry_attack", level="no random start", madry_random_start=False),
        # initialisation
        replace(B, name="init_xavier", factor="init", level="xavier", init="xavier"),
        replace(B, name="init_he", factor="init", level="he", init="he"),
        # Adam: lr decay and state reset
        replace(B, name="cosine", factor="optimizer", level="cosine", schedule="cosine"),
        replace(B, name="step", factor="optimizer", level="step x0.1 at 1/2", schedule="step"),
        replace(B, name="reset_adam", factor="optimizer", level="reset each epoch", reset_adam=True),
        # early stopping (epochs = the maximum)
        replace(B, name="es_heldout", factor="early_stop", level="held-out", early_stop="heldout", epochs=30),
        replace(B, name="es_train", factor="early_stop", level="train robust loss", early_stop="train_robust",
                epochs=30),
    ]
    combined = [
        replace(B, name="full100", factor="combined", level="full batch, 100 ep", batch_size=None, epochs=100),
        replace(B, name="full100_cosine", factor="combined", level="full batch, 100 ep, cosine", batch_size=None,
                epochs=100, schedule="cosine"),
        replace(B, name="cosine_steps3", factor="combined", level="steps 3, cosine", attack_steps=3,
                schedule="cosine"),
        replace(B, name="fgm_cosine", factor="combined", level="Madry FGM, steps 3, cosine", attack_steps=3,
                madry_steps=1, madry_alpha=1.0, schedule="cosine"),
        replace(B, name="fgm_epochs40", factor="combined", level="Madry FGM, 40 ep", epochs=40, madry_steps=1,
                madry_alpha=1.0),
        replace(B, name="xavier_cosine", factor="combined", level="xavier, cosine", init="xavier",
                schedule="cosine"),
        replace(B, name="alpha0.05_cosine", factor="combined", level="alpha 0.05, cosine", attack_alpha=0.05,
                schedule="cosine"),
    ]
    out = [B, *one, *combined]
    names = [c.name for c in out]
    assert len(set(names)) == len(names), names
    return out


def post_hoc() -> list[StudyConfig]:
    """Configurations chosen after seeing the sweep (not part of the design): to be run with fresh seeds
    (``--seed 1``) as a confirmation.  ``posthoc_v3_m005``: the closest recombination of the sweep's results
    (:func:`mix`), Voronoi trained as ``steps3`` and Madry as ``alpha0.05``."""
    B = StudyConfig("baseline", "baseline", "today")
    return [replace(B, name="posthoc_v3_m005", factor="post hoc", level="Voronoi 3 x 0.25, Madry 10 x 0.05",
                    attack_steps=3, madry_steps=10, madry_alpha=0.05)]


def by_name(names) -> list[StudyConfig]:
    """The configurations named (design or :func:`post_hoc`), in the order given; unknown names raise."""
    table = {c.name: c for c in [*configs(), *post_hoc()]}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown study config(s) {unknown}; known: {sorted(table)}")
    return [table[n] for n in names]


# ----------------------------------------------------------------------------------------------------- training


def initialise(model: nn.Module, scheme: str, seed: int) -> None:
    """Re-initialise the MLP's linear layers with ``scheme`` (``torch`` leaves them as built)."""
    if scheme not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {scheme!r}")
    if scheme == "torch":
        return
    g = torch.Generator().manual_seed(int(seed) + 7919)
    with torch.no_grad():
        for layer in (mod for mod in model.modules() if isinstance(mod, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(layer.weight, generator=g)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=g)
            nn.init.zeros_(layer.bias)


def objective_for(method: str, cfg: StudyConfig, u: torch.Tensor, y: np.ndarray):
    """Madry's PGDAT or VoronoiAT in the embedded [0, 1] coordinates (every distance / SPAN), as planes.train_one."""
    span = planes.SPAN
    if method == "Madry":
        steps = cfg.madry_steps if cfg.madry_steps is not None else cfg.attack_steps
        alpha = cfg.madry_alpha if cfg.madry_alpha is not None else cfg.attack_alpha
        return PGDAT(eps=FIXED["madry_eps"] / span, alpha=alpha / span, steps=steps, norm="l2",
                     random_start=cfg.madry_random_start)
    if method == "Voronoi":
        return VoronoiAT(NeighbourIndex(u.numpy(), y), m=FIXED["m"], steps=cfg.attack_steps,
                         alpha=cfg.attack_alpha / span, step_norm="l2", p=2.0, box=(0.0, 1.0))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def heldout_set(codim: int, seed: int, per_plane: int = HELDOUT_PER_PLANE, extent: float = 10.0):
    """Fresh points uniform on the two planes (label = plane), for the held-out early-stopping criterion."""
    rng = np.random.default_rng([int(seed), int(codim), 15])
    dim = codim + 2
    x = np.zeros((2 * per_plane, dim), dtype=np.float32)
    x[:, :2] = rng.uniform(-extent, extent, size=(2 * per_plane, 2))
    x[per_plane:, dim - 1] = 2.0  # the second plane (make_planes' gap)
    y = np.repeat(np.array([0, 1], dtype=np.int64), per_plane)
    return x, y


def heldout_score(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    ok = robust_accuracy_at(model, planes.embed(x), torch.from_numpy(y), [e / planes.SPAN for e in HELDOUT_EPS],
                            list(HELDOUT_ATTACKS), norm="l2")
    return nauc(HELDOUT_EPS, ok.mean(1))


@dataclass
class TrainLog:
    epochs_run: int = 0
    best_epoch: int = -1  # 0-based epoch whose weights were kept
    steps: int = 0
    lrs: list = field(default_factory=list)  # lr of every optimizer step
    losses: list = field(default_factory=list)  # mean training robust loss per epoch
    scores: list = field(default_factory=list)  # held-out criterion per epoch (early_stop="heldout")


def train(method: str, cfg: StudyConfig, x_train: np.ndarray, y_train: np.ndarray, seed: int, *,
          heldout=None) -> tuple[nn.Module, TrainLog]:
    """Train one model; the same steps as planes.train_one (fit's seeding, data order and train_step) plus the
    study's variants.  ``heldout``: (x, y) for ``early_stop="heldout"`` (default: :func:`heldout_set`)."""
    seed = int(seed)
    u, y = planes.embed(x_train), torch.from_numpy(y_train)
    model = planes.make_model(x_train.shape[1], FIXED["hidden"], seed)
    initialise(model, cfg.init, seed)
    objective = objective_for(method, cfg, u, y_train)
    dataset = TensorDataset(u, y)
    if method == "Voronoi":
        dataset = IndexedDataset(dataset)
    loader = DataLoader(dataset, batch_size=cfg.batch_size or len(dataset), shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=FIXED["lr"])
    steps_per_epoch = len(loader)
    schedule = None
    if cfg.schedule == "cosine":
        schedule = LRSchedule(optimizer, name="cosine", epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    elif cfg.schedule == "step":
        schedule = LRSchedule(optimizer, name="step", epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              step_size=cfg.epochs / 2, gamma=cfg.step_gamma)
    if cfg.early_stop == "heldout" and heldout is None:
        heldout = heldout_set(x_train.shape[1] - 2, seed)
    log = TrainLog()
    best, best_state, waited = -math.inf, None, 0
    seed_everything(seed)
    ctx = EpochContext(epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, device=torch.device("cpu"))
    for epoch in range(cfg.epochs):
        _seed_epoch(seed, epoch)
        _prepare_loader(loader, seed, epoch)
        if cfg.reset_adam:
            optimizer.state.clear()
        ctx.epoch, ctx.metrics = epoch, {}
        model.train()
        loss_sum, n = 0.0, 0
        for i, batch in enumerate(loader):
            step = epoch * steps_per_epoch + i
            if schedule is not None:
                schedule.set(step)
            ctx.batch, ctx.step, ctx.index = i, step, batch_index(batch)
            ctx.lr = float(optimizer.param_groups[0]["lr"])
            value, _ = train_step(model, batch[0], batch[1], objective, optimizer, ctx)
            log.lrs.append(ctx.lr)
            loss_sum += value * len(batch[1])
            n += len(batch[1])
        log.steps += steps_per_epoch
        log.epochs_run = epoch + 1
        log.losses.append(loss_sum / n)
        if cfg.early_stop == "none":
            continue
        if cfg.early_stop == "heldout":
            score = heldout_score(model, *heldout)
            log.scores.append(score)
        else:
            score = -log.losses[-1]
        if score > best + cfg.min_delta or best_state is None:
            best, best_state, waited, log.best_epoch = score, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        log.best_epoch = log.epochs_run - 1
    return model.eval(), log


# ----------------------------------------------------------------------------------------------------- one task


_DATA: dict = {}


def planes_data(codim: int):
    if codim not in _DATA:
        from ..data.synthetic import make_planes

        _DATA[codim] = make_planes(codim)
    return _DATA[codim]


def retraining_seed(seed: int, r: int) -> int:
    """Retraining r's seed (planes.py: seed * 10000 + r), shared by both methods and both codims."""
    return int(seed) * 10000 + int(r)


def run_task(task: tuple) -> dict:
    """(config, method, codim, r, seed) -> one training and its evaluation (robust accuracy per eval eps)."""
    cfg, method, codim, r, seed = task
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    x_tr, y_tr, x_te, y_te = planes_data(codim)
    t0 = time.perf_counter()
    model, log = train(method, cfg, x_tr, y_tr, retraining_seed(seed, r))
    t1 = time.perf_counter()
    acc = planes.evaluate_one(model, x_te, y_te, cfg.settings)
    t2 = time.perf_counter()
    return dict(config=cfg.name, method=method, codim=codim, r=r, acc=acc, nauc=nauc(cfg.settings.eval_eps, acc),
                epochs_run=log.epochs_run, best_epoch=log.best_epoch, steps=log.steps, final_loss=log.losses[-1],
                train_s=t1 - t0, eval_s=t2 - t1)


def tasks_for(cfg: StudyConfig, retrainings: int, seed: int, codims=CODIMS) -> list[tuple]:
    return [(cfg, method, codim, r, seed) for codim in codims for method in METHODS for r in range(retrainings)]


# ----------------------------------------------------------------------------------------------------- statistics


def t_interval(values, level: float = 0.95) -> dict:
    """mean, sd (ddof 1), n and the t interval mean +- t_{(1+level)/2, n-1} sd / sqrt(n) (nan bounds for n < 2):
    :func:`advrep.seeds.summarise` under the study's column names."""
    from ..seeds import summarise as summary

    got = summary(values, level)
    return dict(mean=got["value"], sd=got["std"], n=got["n"], ci_low=got["ci_low"], ci_high=got["ci_high"])


def verdict(ci_low: float, ci_high: float) -> str:
    """A claim "A > B" from the interval of A - B: holds (above 0), reversed (below 0), else unresolved."""
    if ci_low > 0:
        return "holds"
    if ci_high < 0:
        return "reversed"
    return "unresolved"


def published_naucs() -> dict:
    """(method, codim) -> the paper's NAUC, read from the published registry (never typed in here)."""
    from ..audit.registry import load

    reg = load("voronoi").numbers
    out = {}
    for method in METHODS:
        for codim in CODIMS:
            row = reg[(reg.target == "figure3") & (reg.row == f"{method} (codim {codim})") & (reg.column == "NAUC")]
            if len(row) != 1:
                raise ValueError(f"published registry: expected one figure3 NAUC for {method} codim {codim}")
            out[(method, codim)] = float(row.published.iloc[0])
    return out


def summarise(cfg: StudyConfig, results: list[dict], paper: dict | None = None, tolerance: float = 0.03
              ) -> list[dict]:
    """Rows for one configuration: 4 NAUCs and 3 paired differences with intervals, and the reproduction verdict."""
    paper = published_naucs() if paper is None else paper
    nauc_of: dict = {}
    for res in results:
        nauc_of.setdefault((res["method"], res["codim"]), {})[res["r"]] = res["nauc"]
    common = dict(config=cfg.name, factor=cfg.factor, level=cfg.level)
    settings = {f"cfg_{k}": v for k, v in cfg.describe().items() if k not in ("name", "factor", "level")}
    rows, within, worst = [], True, 0.0
    for method in METHODS:
        for codim in CODIMS:
            per_r = nauc_of[(method, codim)]
            sel = [x for x in results if x["method"] == method and x["codim"] == codim]
            ci = t_interval([per_r[r] for r in sorted(per_r)])
            close = abs(ci["mean"] - paper[(method, codim)]) <= tolerance
            worst = max(worst, abs(ci["mean"] - paper[(method, codim)]))
            within &= close
            rows.append(dict(**common, quantity=f"NAUC {method} (codim {codim})", kind="nauc", method=method,
                             codim=codim, **ci, paper=paper[(method, codim)], within_tolerance=close, verdict="",
                             epochs_run_mean=float(np.mean([x["epochs_run"] for x in sel])),
                             train_s=float(sum(x["train_s"] for x in sel)),
                             eval_s=float(sum(x["eval_s"] for x in sel)), **settings))
    diffs = [(CLAIMS[0], ("Voronoi", 10), ("Madry", 10)), (CLAIMS[1], ("Voronoi", 500), ("Madry", 500)),
             (CLAIMS[2], ("Madry", 10), ("Madry", 500))]
    holds = True
    for claim, a, b in diffs:
        rs = sorted(set(nauc_of[a]) & set(nauc_of[b]))
        ci = t_interval([nauc_of[a][r] - nauc_of[b][r] for r in rs])
        v = verdict(ci["ci_low"], ci["ci_high"])
        holds &= v == "holds"
        rows.append(dict(**common, quantity=claim, kind="difference", method=f"{a[0]}-{b[0]}",
                         codim=f"{a[1]}-{b[1]}", **ci, paper=paper[a] - paper[b], within_tolerance="", verdict=v,
                         epochs_run_mean=float("nan"), train_s=float("nan"), eval_s=float("nan"), **settings))
    rows.append(dict(**common, quantity="max |NAUC - paper| over the four", kind="deviation", method="", codim="",
                     mean=worst, sd=float("nan"), n=len(results), ci_low=float("nan"), ci_high=float("nan"),
                     paper=0.0, within_tolerance=worst <= tolerance, verdict="", epochs_run_mean=float("nan"),
                     train_s=float("nan"), eval_s=float("nan"), **settings))
    rows.append(dict(**common, quantity="reproduces (4 NAUCs within tolerance and 3 claims hold)", kind="verdict",
                     method="", codim="", mean=float(within and holds), sd=float("nan"), n=len(results),
                     ci_low=float("nan"), ci_high=float("nan"), paper=float("nan"), within_tolerance=within,
                     verdict="reproduces" if within and holds else "does not reproduce", epochs_run_mean=float("nan"),
                     train_s=float("nan"), eval_s=float("nan"), **settings))
    return rows


# Fields that only one method reads: Voronoi's inner attack (attack_*; Madry's unless madry_* override it) and
# Madry's training attack.  Every other field is shared by both methods' trainings.
_ATTACK_FIELDS = ("attack_steps", "attack_alpha", "madry_steps", "madry_alpha", "madry_random_start")


def madry_attack(cfg: StudyConfig) -> tuple:
    """(steps, alpha, random_start) of Madry's training attack under ``cfg``."""
    return (cfg.madry_steps if cfg.madry_steps is not None else cfg.attack_steps,
            cfg.madry_alpha if cfg.madry_alpha is not None else cfg.attack_alpha, cfg.madry_random_start)


def mix(voronoi_from: StudyConfig, madry_from: StudyConfig) -> StudyConfig | None:
    """The configuration that trains Voronoi as ``voronoi_from`` and Madry as ``madry_from`` (Madry's attack set by
    the madry_* fields), or None when the two differ in a setting both methods share.  Its trainings are exactly
    those of the two configurations (same seeds, same code path), so its results are theirs, recombined: see
    :func:`mixed_results`."""
    shared = [f.name for f in dataclasses.fields(StudyConfig) if f.name not in ("name", "factor", "level",
                                                                                  *_ATTACK_FIELDS)]
    if any(getattr(voronoi_from, k) != getattr(madry_from, k) for k in shared):
        return None
    steps, alpha, start = madry_attack(madry_from)
    return replace(voronoi_from, name=f"V:{voronoi_from.name}+M:{madry_from.name}", factor="mixed (post hoc)",
                   level=f"Voronoi as {voronoi_from.name}, Madry as {madry_from.name}", madry_steps=steps,
                   madry_alpha=alpha, madry_random_start=start)


def mixed_results(voronoi_results: list[dict], madry_results: list[dict]) -> list[dict]:
    return ([r for r in voronoi_results if r["method"] == "Voronoi"]
            + [r for r in madry_results if r["method"] == "Madry"])


# ----------------------------------------------------------------------------------------------------- outputs

COLUMNS = ("config", "factor", "level", "quantity", "kind", "method", "codim", "mean", "sd", "n", "ci_low", "ci_high",
           "paper", "within_tolerance", "verdict", "epochs_run_mean", "train_s", "eval_s")


def write_csv(rows: list[dict], path) -> None:
    import pandas as pd

    from ..io import atomic_path

    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[[*COLUMNS, *extra]]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def plot(rows: list[dict], path) -> None:
    """The orderings against each setting: Voronoi - Madry per codim, Madry codim 10 - codim 500 (95 % intervals),
    configurations grouped by the factor they vary (colour); the paper's difference as a dashed line, the baseline's
    as a dotted one.  ``rows``: :func:`summarise` rows (or the CSV's records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    diffs = [r for r in rows if r["kind"] == "difference"]
    names = list(dict.fromkeys(r["config"] for r in diffs))
    factor = {r["config"]: r["factor"] for r in diffs}
    fig, axes = plt.subplots(len(CLAIMS), 1, figsize=(max(8.0, 0.32 * len(names) + 2), 3.2 * len(CLAIMS)),
                             sharex=True, squeeze=False)
    x = np.arange(len(names))
    colours = {f: plt.cm.tab20(i % 20) for i, f in enumerate(dict.fromkeys(factor.values()))}
    for ax, claim in zip(axes[:, 0], CLAIMS):
        sel = {r["config"]: r for r in diffs if r["quantity"] == claim}
        mean = np.array([sel[n]["mean"] for n in names])
        lo = np.array([sel[n]["ci_low"] for n in names])
        hi = np.array([sel[n]["ci_high"] for n in names])
        for i, n in enumerate(names):
            ax.errorbar(x[i], mean[i], yerr=[[mean[i] - lo[i]], [hi[i] - mean[i]]], fmt="o", ms=4, capsize=2,
                        color=colours[factor[n]])
        ax.axhline(0.0, color="k", lw=0.8)
        ax.axhline(sel[names[0]]["paper"], color="tab:red", ls="--", lw=1, label="paper")
        if "baseline" in sel:
            ax.axhline(sel["baseline"]["mean"], color="grey", ls=":", lw=1, label="baseline (today's config)")
        ax.set_ylabel("NAUC difference")
        ax.set_title(f"{claim}: mean and 95% t interval over retrainings (paired)", fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels([f"{n} [{factor[n]}]" for n in names], rotation=75, ha="right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def cache_file(cache_dir, cfg: StudyConfig, retrainings: int, seed: int):
    from pathlib import Path

    import hashlib

    tag = hashlib.sha256(repr(sorted(EVAL.items())).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{cfg.name}-r{retrainings}-s{seed}-eval{tag}.pkl"


def load_cached(cache_dir, cfg: StudyConfig, retrainings: int, seed: int) -> list[dict] | None:
    """A configuration's per-training results from :func:`run_study`'s cache, or None (absent, or written for a
    configuration of the same name with other settings)."""
    import pickle

    path = cache_file(cache_dir, cfg, retrainings, seed)
    if not path.exists():
        return None
    stored = pickle.loads(path.read_bytes())
    return stored["results"] if stored["config"] == cfg else None


def mixed_rows(cfgs: list[StudyConfig], results: dict, paper: dict | None = None) -> list[dict]:
    """Post hoc: :func:`summarise` rows of every valid :func:`mix` of two different configurations whose results
    are in ``results`` (name -> per-training results).  Chosen after seeing the data, so a mix that reproduces needs
    a confirmatory run with fresh seeds before it can be a default."""
    paper = published_naucs() if paper is None else paper
    rows = []
    for a in cfgs:
        for b in cfgs:
            m = None if a.name == b.name else mix(a, b)
            if m is None or a.name not in results or b.name not in results:
                continue
            if madry_attack(a) == madry_attack(b) or (a.attack_steps, a.attack_alpha) == (b.attack_steps,
                                                                                        b.attack_alpha):
                continue  # the mix is a or b itself
            rows.extend(summarise(m, mixed_results(results[a.name], results[b.name]), paper))
    return rows


def run_study(cfgs: list[StudyConfig], *, retrainings: int = 20, seed: int = 0, jobs: int = 1, codims=CODIMS,
              out_csv, out_png, cache_dir=None, progress=print) -> list[dict]:
    """Train and evaluate every (config, method, codim, retraining); write the CSV and the plot after every
    configuration (so a long run leaves usable partial outputs).  ``cache_dir``: per-config results kept there
    (``<name>-r<retrainings>-s<seed>-eval<hash of EVAL>.pkl``) and reused by a rerun.  Returns the CSV rows."""
    import pickle

    from ..io import atomic_path

    paper = published_naucs()
    pool = None
    if jobs > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(jobs)
    rows, t_start = [], time.perf_counter()
    order = {c.name: i for i, c in enumerate(configs())}
    try:
        for k, cfg in enumerate(cfgs):
            cached = None if cache_dir is None else cache_file(cache_dir, cfg, retrainings, seed)
            t0 = time.perf_counter()
            results = None if cache_dir is None else load_cached(cache_dir, cfg, retrainings, seed)
            if results is None:
                tasks = tasks_for(cfg, retrainings, seed, codims)
                results = pool.map(run_task, tasks, chunksize=1) if pool else [run_task(t) for t in tasks]
                if cached is not None:
                    with atomic_path(cached) as tmp:
                        tmp.write_bytes(pickle.dumps({"config": cfg, "results": results}))
            rows.extend(summarise(cfg, results, paper) if tuple(codims) == CODIMS else [])
            rows.sort(key=lambda row: order.get(row["config"], len(order)))  # the design's order, whatever the run's
            if rows:
                write_csv(rows, out_csv)
                plot(rows, out_png)
            done = time.perf_counter() - t_start
            eta = done / (k + 1) * (len(cfgs) - k - 1)
            progress(f"[{k + 1}/{len(cfgs)}] {cfg.name}: {time.perf_counter() - t0:.0f} s "
                     f"(elapsed {done / 60:.1f} min, eta {eta / 60:.1f} min)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return rows


__all__ = ["CLAIMS", "StudyConfig", "configs", "by_name", "train", "run_task", "t_interval", "verdict", "summarise",
           "write_csv", "plot", "run_study", "published_naucs", "heldout_set"]
