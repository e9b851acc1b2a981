"""What every attack and every adversarial-training objective shares: norms, projection onto the eps-ball and the
[0,1] box, steepest-ascent directions, random starts, eval mode, counting model calls, and one generic projected
gradient ascent (:func:`maximize`) that evaluation attacks and training inner loops both build on.

Conventions: inputs ``x`` in [0, 1] with shape (B, ...); ``eps`` a float or a (B,) tensor; ``norm`` ``"linf"`` or
``"l2"``; models carry their own normalisation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

NORMS = ("linf", "l2")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float or (B,) tensor as a tensor broadcastable against ``like`` (B, ...)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.view(-1, *([1] * (like.ndim - 1)))


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``v`` (B, ...) -> (B,)."""
    flat = v.flatten(1)
    return flat.abs().amax(1) if check_norm(norm) == "linf" else flat.norm(p=2, dim=1)


def project(delta: torch.Tensor, eps, norm: str) -> torch.Tensor:
    """Euclidean projection of each sample's perturbation onto its eps-ball."""
    e = _per_sample(eps, delta)
    if check_norm(norm) == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    n = lp_norm(delta, "l2").view(e.shape)
    factor = torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * factor


def clamp_box(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The perturbation that keeps ``x + delta`` inside [0, 1]."""
    return (x + delta).clamp(0.0, 1.0) - x


def steepest_ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit-norm steepest-ascent direction for the norm: sign(g) for L-inf, g/||g||_2 for L2."""
    if check_norm(norm) == "linf":
        return grad.sign()
    n = lp_norm(grad, "l2").view(-1, *([1] * (grad.ndim - 1)))
    return grad / n.clamp_min(1e-12)


def random_start(x: torch.Tensor, eps, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random perturbation inside the eps-ball (uniform in the L-inf cube; uniform in the L2 ball), box-clamped."""
    e = _per_sample(eps, x)
    if check_norm(norm) == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = (2 * u - 1) * e
    else:
        g = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        d = g.flatten(1).shape[1]
        r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
        delta = steepest_ascent(g, "l2") * r.view(-1, *([1] * (x.ndim - 1))) * e
    return clamp_box(x, delta)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Attack in eval mode (BatchNorm statistics fixed, no dropout); restore the previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class CallCounter(nn.Module):
    """Wraps a model and counts forward calls per sample (``counts``, shape (B,)) over the batch being attacked.

    ``active`` (a (B,) bool mask, optional) says which samples a call was spent on when an attack only forwards a
    subset; by default every call counts for the whole batch.
    """

    def __init__(self, model: nn.Module, batch_size: int, device=None):
        super().__init__()
        self.model = model
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.active: torch.Tensor | None = None

    def forward(self, x):
        if self.active is None:
            self.counts += 1
        else:
            self.counts[self.active] += 1
        return self.model(x)


@dataclass
class AttackResult:
    """Output of every attack: adversarial inputs, which samples are misclassified at them, and model calls."""

    x_adv: torch.Tensor  # (B, ...) in [0, 1], within eps of x
    success: torch.Tensor  # (B,) bool: the model's prediction at x_adv differs from y (or equals target)
    model_calls: torch.Tensor  # (B,) long: forward passes spent on each sample until its first success (or in all)


def misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def start_delta(x: torch.Tensor, eps, norm: str, init: torch.Tensor | str | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The first perturbation of an iterative attack: ``init`` projected into the ball and box (a tensor), a random
    start (``"random"``), or zero (``None``/``"zero"``)."""
    if isinstance(init, torch.Tensor):
        return clamp_box(x, project(init, eps, norm))
    if init == "random":
        return random_start(x, eps, norm, generator)
    return torch.zeros_like(x)


def maximize(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps, alpha, steps: int,
             norm: str = "linf", init: torch.Tensor | str | None = "random",
             generator: torch.Generator | None = None,
             on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Projected steepest ascent on ``loss_fn(x_adv) -> (B,) per-sample losses``; returns the final ``x_adv``.

    ``alpha``: a float, a (B,) tensor, or a callable ``step -> float`` (step-size schedule).  ``init``: ``"random"``
    (uniform in the ball), ``None``/``"zero"`` (start at x) or a starting perturbation.  Each iterate stays inside the
    eps-ball and [0, 1].  ``on_step(step, x_adv)`` is called after every step (e.g. to record per-sample success).
    The caller decides train/eval mode; gradients flow only into the perturbation.

    Under fp16 autocast (e.g. inside a mixed-precision training step), samples whose input gradient underflowed in
    the fp16 backward pass get it recomputed from a loss scaled by a power of two (see :func:`_input_grad`); the
    step direction does not depend on the gradient's scale.  Without fp16 autocast the gradient is exactly
    ``autograd.grad(loss.sum(), x_adv)``.
    """
    check_norm(norm)
    delta = start_delta(x, eps, norm, init, generator)
    x = x.detach()
    delta = delta.detach()  # a fresh tensor in every branch above: updated in place below
    # Per step this does exactly the arithmetic of the plain form
    #   delta <- clamp_box(x, project(delta + alpha * steepest_ascent(grad), eps)),  x_adv = x + delta
    # (the same floating-point operations in the same order, so bit-for-bit the same iterates), but in place in
    # two perturbation buffers used in turn, with the broadcast eps/alpha tensors built once and the gradient taken
    # with respect to the iterate itself.  Fresh full-size temporaries are what made the plain form slow: on CPU
    # each one costs page faults as the allocator hands memory back to the system and asks for it again.
    e = _per_sample(eps, x)
    neg_e = -e
    linf = norm == "linf"
    const_alpha = None if callable(alpha) else _step_factor(alpha, x)
    spare = torch.empty_like(delta)
    direction = torch.empty_like(delta) if linf else None
    z = x + delta
    for step in range(steps):
        z = z.detach().requires_grad_(True)  # a new leaf (the tensor on_step saw is left alone)
        grad = _input_grad(loss_fn(z), z)  # no reference kept: the graph is freed here
        a = const_alpha if const_alpha is not None else _step_factor(alpha(step), x)
        if linf:  # a * sign(g) is exact, so the fused multiply-add rounds once, as delta + a * sign(g) does
            torch.sign(grad, out=direction)
            if isinstance(a, torch.Tensor):
                delta.addcmul_(a, direction)
            else:
                delta.add_(direction, alpha=a)
            torch.maximum(torch.minimum(delta, e, out=delta), neg_e, out=delta)  # project
        else:
            delta.add_(steepest_ascent(grad, norm).mul_(a))
            delta = project(delta, e, norm)
        delta, spare = torch.add(x, delta, out=spare).clamp_(0.0, 1.0).sub_(x), delta  # clamp_box
        z = x + delta
        if on_step is not None:
            on_step(step, z)
    return z.detach()


# fp16 autocast and input gradients.  Under fp16 autocast the backward pass through the model's fp16 layers
# (convolutions, linear layers) is computed in fp16, whose smallest positive (subnormal) number is 2**-24 ~ 6e-8
# and smallest normal one 2**-14 ~ 6e-5.  The input gradient of a confidently classified sample is tiny (for the
# cross-entropy it is proportional to 1 - p_y ~ exp(-margin)), so from a logit margin of about 17 it underflows to
# exactly 0 in fp16 although float32 still resolves it: sign(0) = 0 and PGD does not move that sample.  GradScaler
# does not help, as it scales only the training loss, not the attack's.
_FP16_SMALL = 2.0 ** -14  # fp16's smallest normal number: a row whose largest entry is below it lost precision
_FP16_FIRST_SCALE = 2.0 ** 24  # 1 / fp16's smallest subnormal
_FP16_UP, _FP16_DOWN = 2.0 ** 24, 2.0 ** -12  # next factor for rows still too small / for rows that overflowed
_FP16_MAX_PASSES = 3  # extra backward passes per step at most (scales 2**24, then 2**12 or 2**48, then ...)


def _fp16_autocast(device_type: str) -> bool:
    """Whether fp16 (not bf16, which has float32's exponent range) autocast is on for ``device_type`` now."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


def _row_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


def _input_grad(loss: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``d loss.sum() / dz`` for the (B,) per-sample ``loss``, up to a positive factor per sample under fp16 autocast.

    Without fp16 autocast: exactly ``torch.autograd.grad(loss.sum(), z)`` (so the iterates of :func:`maximize` are
    unchanged bit for bit).  Under fp16 autocast the unscaled gradient is taken first (graph retained).  Rows (samples)
    whose largest entry is below fp16's normal range (all zeros after underflow, or subnormal) are recomputed from
    the gradient of ``s * loss.sum()`` with ``s = 2**24``; a row of that which overflows (inf/NaN) is retried with a
    smaller factor (``s / 2**12``), a finite row still below the normal range with a larger one (``s * 2**24``), for
    at most three extra passes.  Each row keeps the last finite value it got; a row never finite keeps its
    unscaled value (the behaviour before this rescue).

    Why this is safe: (1) a factor multiplies the *whole* summed loss, so every row of the scaled gradient is the
    same positive multiple of that row of the true gradient, also when samples interact (BatchNorm in train mode);
    per-sample factors would instead mix the other samples' terms in with changed weights.  Rows from passes with
    different factors can be combined because only each row's direction is used.  (2) :func:`maximize` uses only
    that direction (sign for L-inf, g/||g||_2 for L2), which a positive factor does not change, and a power of two is
    applied exactly in floating point.  (3) A row is replaced only by a finite one, so an overflow never reaches the
    iterate.  (4) The factors stay far below float32's range (at most 2**72), so float32 parts of the backward pass
    (the loss, casts) stay finite; if ``loss`` is itself fp16, 2**24 overflows there and the retry with 2**12 takes
    over.  Cost: extra backward passes only in steps where some sample's gradient is below fp16's normal range
    (underflowed, or genuinely zero, e.g. a saturated loss: then in vain); none otherwise.
    Limit: gradients below ~2**-96 (cross-entropy margins beyond ~65, close to where float32 underflows too) stay 0.
    """
    total = loss.sum()
    if not _fp16_autocast(z.device.type):
        (grad,) = torch.autograd.grad(total, z)
        return grad
    (grad,) = torch.autograd.grad(total, z, retain_graph=True)
    pending = grad.detach().flatten(1).abs().amax(1) < _FP16_SMALL  # NaN rows compare False: left alone
    scale = _FP16_FIRST_SCALE
    for p in range(_FP16_MAX_PASSES):
        if not bool(pending.any()):
            break
        (scaled,) = torch.autograd.grad(total * scale, z, retain_graph=p + 1 < _FP16_MAX_PASSES)
        finite = torch.isfinite(scaled).flatten(1).all(1)
        take = pending & finite
        grad = torch.where(_row_view(take, grad), scaled, grad)
        overflow = pending & ~finite
        if bool(overflow.any()):  # first give the rows without any usable gradient a smaller factor
            pending, scale = overflow, scale * _FP16_DOWN
        else:
            pending, scale = take & (scaled.flatten(1).abs().amax(1) < _FP16_SMALL), scale * _FP16_UP
    return grad


def _step_factor(a, x: torch.Tensor):
    """A step size as a Python float (a plain number) or a broadcastable (B, 1, ...) tensor (anything else)."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(torch.tensor(a, dtype=x.dtype))  # the value the plain form multiplies by
    return _per_sample(a, x)


def margin(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample margin ``max_{j != y} s_j - s_y`` of scores (B, K) -> (B,); positive iff misclassified.

    On logits this is the Carlini-Wagner loss (f_6 of Carlini & Wagner, S&P 2017, with kappa = 0); on softmax
    probabilities it is the margin term of GAMA (Sriramanan et al., NeurIPS 2020).
    """
    true = scores.gather(1, y.view(-1, 1)).squeeze(1)
    others = scores.masked_fill(nn.functional.one_hot(y, scores.shape[1]).bool(), float("-inf"))
    return others.amax(1) - true


def eps_vector(eps, x: torch.Tensor) -> torch.Tensor:
    """``eps`` (a float or a (B,) tensor) as a (B,) tensor on ``x``'s device and dtype."""
    t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"eps must be a float or a ({x.shape[0]},) tensor, got shape {tuple(t.shape)}")
    if (t < 0).any():
        raise ValueError("eps must be non-negative")
    return t.clone()
