"""What every attack class shares: the call contract, the registry, first-success tracking and call counting.

Contract of ``Attack.__call__(x, y) -> AttackResult`` (and of :func:`run_attack`):

* ``x`` in [0, 1], shape (B, ...); the model carries its own normalisation and is attacked in eval mode
  (:func:`~advrep.attacks.core.eval_mode`); its previous mode is restored afterwards.
* A sample already misclassified at ``x`` is a success with ``x_adv = x`` and 0 model calls; only the others are
  handed to the attack proper (:meth:`Attack._run`).  That clean check costs one forward pass of the batch; a caller
  that already has the model's verdict at ``x`` (an evaluation computes it once for all its attacks) passes it as
  ``clean_correct`` ((B,) bool, the eval-mode prediction at ``x`` equals ``y``) and the pass is not repeated.  It is
  trusted: a sample marked misclassified is returned at ``x`` as a success without a look at the model.
* ``x_adv`` is always within ``eps`` of ``x`` in the attack's norm and inside [0, 1]: whatever an attack returns is
  projected onto the ball and the box once more (a no-op for a feasible point), and ``success`` is the model's
  verdict at exactly that ``x_adv`` (``prediction != y``): attacks that evaluated the model at every point they
  return (the hand-written ones) report it, anything else (or any point the projection moved) is checked with one
  more forward pass.  The clean check and that verification are bookkeeping, not counted in ``model_calls``.
* ``model_calls[i]``: forward passes spent on sample ``i`` until its first success, or in all when it was never
  broken (exact for the hand-written attacks and Square; for the other library attacks a forward that does not
  hold the whole batch in order is charged to every sample, so the count is an upper bound).
* Randomness is drawn from ``seed`` (default 0; ``None``: not reseeded) and the caller's global RNG state is
  restored afterwards: runs are reproducible and leave the caller's random stream alone.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Iterator

import torch
from torch import nn

from .core import (NORMS, AttackResult, CallCounter, check_norm, clamp_box, eval_mode, eps_vector, lp_norm,
                   project)

ATTACKS: dict[str, type["Attack"]] = {}


def register(cls):
    """Class decorator: put an attack class in :data:`ATTACKS` under its ``name``."""
    if not cls.name or cls.name in ATTACKS:
        raise ValueError(f"attack name {cls.name!r} is empty or taken")
    ATTACKS[cls.name] = cls
    return cls


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps, norm: str = "linf",
               clean_correct: torch.Tensor | None = None, **params) -> AttackResult:
    """Run the registered attack ``name`` with its parameters ``params`` at radius ``eps`` in ``norm``
    (``clean_correct``: the model's verdict at ``x`` when the caller has it, see the module docstring)."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise KeyError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}") from None
    return cls(model, eps=eps, norm=norm, **params)(x, y, clean_correct=clean_correct)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the global RNG of the CPU (and of ``device`` when it is a GPU) for the block, then restore the
    caller's state (a light ``torch.random.fork_rng``; ``torch.manual_seed`` would also seed every other
    accelerator, which costs more than a small attack step)."""
    cpu = torch.get_rng_state()
    gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if gpu is not None:
                torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        yield
    finally:
        torch.set_rng_state(cpu)
        if gpu is not None:
            torch.cuda.set_rng_state(gpu, device)


class Attack:
    """Base class.  Subclasses set ``name`` and ``norms`` and implement :meth:`_run` on the samples that are
    classified correctly at ``x``; everything in the module docstring is handled here."""

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(self, model: nn.Module, *, eps, norm: str = "linf", seed: int | None = 0):
        check_norm(norm)
        if norm not in self.norms:
            raise ValueError(f"{type(self).__name__} supports norms {self.norms}, not {norm!r}")
        self.model = model
        self.eps = eps
        self.norm = norm
        self.seed = seed

    # -- subclasses ------------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor):
        """Attack samples that are correct at ``x`` with per-sample radii ``eps`` (B,); return ``(x_adv,
        model_calls)``, or ``(x_adv, model_calls, success)`` when the model was evaluated at exactly each returned
        point (``success``: misclassified there).  Runs in eval mode inside the seeded RNG."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor | None = None
                 ) -> AttackResult:
        x = x.detach()
        y = y.detach().to(x.device)
        if x.ndim < 2 or y.shape != (x.shape[0],):
            raise ValueError("x must be (B, ...) and y (B,)")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("inputs must lie in [0, 1]")
        if clean_correct is not None:
            clean_correct = torch.as_tensor(clean_correct, device=x.device)
            if clean_correct.shape != y.shape or clean_correct.dtype != torch.bool:
                raise ValueError(f"clean_correct must be a bool tensor of shape {tuple(y.shape)} (the model's verdict "
                                 f"at x), got {clean_correct.dtype} {tuple(clean_correct.shape)}")
        eps = eps_vector(self.eps, x)
        with eval_mode(self.model), seeded(self.seed, x.device):
            if clean_correct is None:
                with torch.no_grad():
                    todo = self.model(x).argmax(1) == y
            else:
                todo = clean_correct.clone()
            x_adv = x.clone()
            calls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            success = ~todo  # misclassified at x: success, 0 calls
            known = ~todo  # rows whose success is known at exactly x_adv
            if todo.any():
                idx = todo.nonzero().squeeze(1)
                out = self._run(x[idx], y[idx], eps[idx])
                x_adv[idx] = out[0].detach().to(x.dtype)
                calls[idx] = out[1].to(calls.device, torch.long)
                if len(out) > 2:
                    success[idx] = out[2].to(success.device, torch.bool)
                    known[idx] = True
            feasible = (x + clamp_box(x, project(x_adv - x, eps, self.norm))).detach()
            moved = (feasible != x_adv).flatten(1).any(1)
            x_adv = feasible
            check = moved | ~known
            if check.any():
                rows = check.nonzero().squeeze(1)
                with torch.no_grad():
                    success[rows] = self.model(x_adv[rows]).argmax(1) != y[rows]
        return AttackResult(x_adv=x_adv, success=success, model_calls=calls)

    def __repr__(self):
        keys = {k: v for k, v in vars(self).items() if k != "model"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in keys.items())})"

    def generator(self, x: torch.Tensor) -> torch.Generator:
        """A generator on ``x``'s device seeded from the (already seeded) global RNG."""
        g = torch.Generator(device=x.device)
        g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        return g


class FirstSuccess:
    """Tracks, over the forward passes of an attack on a batch, each sample's first misclassified input.

    ``logits(z, rows)`` takes inputs ``z`` for the batch rows ``rows`` (global indices; the whole batch by
    default), forwards them, counts the call for the samples not yet broken through a
    :class:`~advrep.attacks.core.CallCounter`, records the samples misclassified at ``z`` (their ``x_adv`` and the
    calls spent until then) and returns ``(local, logits, live)``: the forwarded rows as indices into ``z``, their
    logits, and which of them are still unbroken (their loss is the one to ascend; the others' must not move).
    Once fewer than ``gather_below`` of the rows are unbroken, only those are forwarded (a broken sample costs
    nothing more); above it the whole ``z`` is forwarded, which is cheaper than gathering.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, gather_below: float = 0.5):
        self.y = y
        self.counter = CallCounter(model, x.shape[0], device=x.device)
        self.active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        self.x_adv = x.detach().clone()
        self.calls = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.gather_below = gather_below

    def logits(self, z: torch.Tensor, rows: torch.Tensor | None = None):
        if rows is not None and rows.numel() == self.active.shape[0]:
            rows = None  # the whole batch, in order
        act = self.active.clone() if rows is None else self.active[rows]
        n_act = int(act.sum())
        if n_act == 0:
            return act.nonzero().squeeze(1), None, None
        if n_act >= self.gather_below * act.numel():  # forward every row
            local, zz = self._arange(z.shape[0], z.device), z
            glob = rows
            everyone = n_act == act.numel()
            if rows is None and everyone:
                self.counter.active = None
            else:
                self.counter.active = act if rows is None else self._mask(rows[act])
        else:  # forward the unbroken rows only
            local = act.nonzero().squeeze(1)
            zz = z[local]
            glob = local if rows is None else rows[local]
            self.counter.active = self._mask(glob)
            act, everyone = None, True
        out = self.counter(zz)
        live = out.detach().argmax(1) == (self.y if glob is None else self.y[glob])
        if not everyone:
            live = live | ~act  # rows broken before: not hits
        if not bool(live.all()):
            hit = ~live
            broken = local[hit] if rows is None else rows[local[hit]]
            self.x_adv[broken] = zz[hit].detach()
            self.active[broken] = False
            self.calls[broken] = self.counter.counts[broken]
        if not everyone:
            live = live & act
        return local, out, live

    def _arange(self, n: int, device) -> torch.Tensor:
        if getattr(self, "_ar", None) is None or self._ar.numel() != n:
            self._ar = torch.arange(n, device=device)
        return self._ar

    def _mask(self, rows: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(self.active)
        mask[rows] = True
        return mask

    def finish(self, z: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Check the final iterate of the samples still unbroken (one more counted call); an unbroken sample
        keeps its last iterate as ``x_adv``."""
        with torch.no_grad():
            local, _, live = self.logits(z, rows)
        if live is not None and bool(live.any()):
            keep = local[live]
            self.x_adv[keep if rows is None else rows[keep]] = z[keep].detach()

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_adv, model_calls, success)``: calls until the first success, or all calls for unbroken samples
        (valid once :meth:`finish` has checked the final iterate)."""
        return self.x_adv, torch.where(self.active, self.counter.counts, self.calls), ~self.active


class LibraryMonitor(nn.Module):
    """Wraps the model handed to a library attack: counts its forward calls and, for every call that holds the
    whole batch in order (same shape as ``x``), records each sample's first input that is misclassified, inside
    the ``eps``-ball and inside [0, 1]; such a point is a valid adversarial example whatever the library does
    afterwards (for minimisation attacks, the points they visit outside the ball are ignored)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str):
        super().__init__()
        self.model = model
        self.x, self.y, self.eps, self.norm = x.detach(), y, eps, norm
        self.calls = 0
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.first_call = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.x_found = x.detach().clone()
        self.eval()

    def forward(self, z):
        out = self.model(z)
        self.calls += 1
        if z.shape == self.x.shape:
            with torch.no_grad():
                zd = z.detach()
                inside = (lp_norm(zd - self.x, self.norm) <= self.eps * (1 + 1e-6) + 1e-7) \
                    & (zd.flatten(1).amin(1) >= 0) & (zd.flatten(1).amax(1) <= 1)
                new = (out.detach().argmax(1) != self.y) & inside & ~self.found
                if new.any():
                    self.found |= new
                    self.first_call[new] = self.calls
                    self.x_found[new] = zd[new]
        return out

    def combine(self, x_lib: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The library's output, replaced by the first recorded adversarial where there is one; calls: the first
        success's call index where recorded, otherwise every call made."""
        x_adv = torch.where(self.found.view(-1, *([1] * (self.x.ndim - 1))), self.x_found, x_lib.detach())
        calls = torch.where(self.found, self.first_call, torch.full_like(self.first_call, self.calls))
        return x_adv, calls


def scalar_eps(eps: torch.Tensor, who: str) -> float:
    """The common radius of a batch, for libraries that take one float."""
    if eps.numel() and not torch.allclose(eps, eps[0].expand_as(eps)):
        raise ValueError(f"{who} needs the same eps for every sample")
    return float(eps[0]) if eps.numel() else 0.0
