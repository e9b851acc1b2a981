"""Neural-ODE models of the sonet paper: ``sonet``, ``soblock`` and ``odenet``, plus the solver tooling that the
adaptive-step experiments need (solver settings, function-evaluation counts, accepted time grids, solver swaps).

Paper: Huang, Yu, Zhang, Ma, Yao, "Adversarial Robustness of Stabilized Neural ODE Might be from Obfuscated
Gradients" (MSML21 slides, ``/work/shared/papers/002_2e73039d38e64e01.txt``).  Authors' code (a public repository
found through the code index; ids are the index's file ids; the paths follow from the imports in its
``models/__init__.py``, id 46424073250): ``models/misc.py`` (id 46962022240), ``models/sonet_s.py`` (id 46334422906),
``models/odenet_tq.py`` (id 46397858007), ``models/resXsonet.py`` (id 46262986651, SOBlock) and the training
configuration, an argparse module (id 46382632193; its path is unknown, "config" below).  Nothing of that code is
copied here; the facts below are read from it.

The skew-symmetric ODE block (paper eq. (3), lines 140-146, and the theorem, lines 155-163)::

    dx/dt = sigma(W2 z - gamma x),   dz/dt = sigma(W1 x - gamma z),   x(0) = x_k,  z(0) = z_k,  x_{k+1} = z(t0)

with ``W2 = -W1^T`` (the theorem's condition): the linear part ``A = [[0, -W^T], [W, 0]]`` is skew-symmetric, so for
strictly increasing ``sigma`` and ``gamma > 0`` the Jacobian ``D (A - gamma I)`` (``D = diag(sigma') > 0``) has only
eigenvalues with negative real part (appendix, lines 316-356).  In a conv block ``W`` is a convolution and ``W^T`` its
adjoint, the transposed convolution with the *same* kernel.

Facts from the authors' code and where we follow them:

* Conv block (``models/misc.py``, classes ``ODEResnetFunc`` / ``ODEResnetBlock``): the state is a pair (y, z); y has
  the ``planes`` output channels at the output resolution (the paper's z, the block output), z has the ``in_planes``
  input channels (the paper's x).  y(0) = the input, downsampled by ``F.interpolate(scale_factor=0.5)`` (nearest)
  when the stride is 2 and channel-repeated to ``planes`` (``ODEResnetBlock.extend``: repeat, then the first
  ``planes mod in_planes`` channels; fewer planes than input channels: the first ``planes``); z(0) = the input.
  Vector field ``y' = GN(LeakyReLU(conv(GN(z); K, stride, pad 1) - gamma GN(y)))`` and
  ``z' = GN(LeakyReLU(-conv_transpose(GN(y); K, stride, pad 1) - gamma GN(z)))`` with ONE kernel ``K`` of shape
  (planes, in_planes, 3, 3), or (planes, in_planes, 4, 4) when the stride is 2; four ``GroupNorm(min(8, C), C)``;
  LeakyReLU slope 0.01 (``nn.LeakyReLU`` default); no biases (``bias_bool=False``); ``gamma = 0`` (the block never
  passes a gamma to its function); kernel init ``kaiming_uniform_(a=sqrt(5))``; output y(t=1).
  ``norm=False`` here gives the bare field of eq. (3) (no GroupNorms), used for the theorem's test.
  On odd sizes (7x7 -> 3x3 in a 28x28 model's last stage) the transposed convolution needs ``output_padding=1`` to
  return to the input size; the authors only ran 32x32 inputs, where it is 0.  It is still the exact adjoint.
* Integration: ``odeint(func, state, t=[0, 1], rtol=tol, atol=tol, method=solver)`` or ``odeint_adjoint`` when
  ``adjoint`` (every ``ODEBlock*`` class of ``models/misc.py``); training config: ``--solver dopri5``,
  ``--tol 0.1``, ``--adj False``, ``--channel 64``, ``--nb 2 2 2 2``, ``--strides 1 2 2 2``.  The paper: "we set all
  error tolerance as 0.1"; Euler and RK4 with fixed step size h = 1; adaptive Heun, Bosh3, DOPRI5 (lines 204-212).
  torchdiffeq's ``rk4`` is the 3/8 rule (``rk4_alt_step_func``), which is what the paper's Table 3 calls
  "RK4 3/8 rule".
* Head (``models/misc.py``, ``ODEfunc_fc`` / ``ODEBlock_fc``): the skew ODE on [features y (d); logits z (c)] with
  ``W`` of shape (d, c): ``y' = W LeakyReLU(z) + b_y - gamma y``, ``z' = -W^T LeakyReLU(y) + b_z - gamma z``; the
  activation acts on the state *before* the linear map (unlike eq. (3)); one bias vector of length d + c,
  ``U(-1/sqrt(c), 1/sqrt(c))``; ``W`` ``kaiming_uniform_(a=sqrt(5))``; z(0) = 0.1 * ones; output z(1); gamma 0.
  This field is stable for gamma > 0 too: its Jacobian ``[[-g, W D_z], [-W^T D_y, -g]]`` is similar (by
  ``diag(D_y^1/2, D_z^1/2)``) to a skew matrix minus ``g I``.
* SONet (``models/sonet_s.py``, ``odeNet_arch`` / ``sonet``): stem = skew conv block in_channels -> channel (stride 1,
  no BN/ReLU after it); four stages of skew conv blocks, widths ``channel * (1, 2, 4, 8)``, strides (1, 2, 2, 2);
  ``AdaptiveAvgPool2d(1)``; skew ODE head.  ``num_blocks`` default [2, 2, 2, 2] in ``sonet()`` and the config.
* SOBlock (``models/resXsonet.py``, ``ResNet`` / ``ResNet10``): the CIFAR ResNet (BasicBlock, BN) with ``conv1``
  replaced by a skew conv block in_channels -> channel built with dopri5, tol 0.1 hard-coded; the ``bn1`` + ReLU that
  follow the first conv in a ResNet are absent there; ``ResNet10`` defaults to [2, 2, 2, 2] blocks (its ``test()``
  uses [1, 1, 1, 1]).
* ODENet (``models/odenet_tq.py``, ``odeNet_arch`` / ``odenet`` over ``misc.py``'s ``ODEfunc_tq`` / ``ODEBlock_tq`` /
  ``repeat_channel``): ``repeat_channel`` 3 -> channel, then ``num_blocks`` = 10 ODE blocks at full resolution (no
  downsampling), each the field of Chen et al. (2018) (torchdiffeq ``examples/odenet_mnist.py`` ``ODEfunc``):
  GN - ReLU - ConcatConv2d 3x3 (time as an extra input channel, with bias) - GN - ReLU - ConcatConv2d - GN; then
  ``GroupNorm(min(8, C))``, ``AdaptiveAvgPool2d(3)``, ``Linear(9 C, classes)`` (no ReLU before pooling).
  ``odenet()`` defaults to channel 54 and ignores its ``num_blocks`` argument (always 10).

Where we deviate (the paper's words decide where paper and code disagree; otherwise the code):

* ``sonet``/``soblock`` blocks per stage: default (1, 1, 1, 1), the paper's "ResNet with 10 layers ... ResNet10"
  (line 178) and this zoo's ``resnet10``; the authors' code defaults to (2, 2, 2, 2) (an 18-layer layout), so
  ``blocks=(2, 2, 2, 2)`` reproduces it.
* ``sonet`` stem: the paper says only that each residual block is replaced (line 179); we keep the authors' skew ODE
  stem (``ode_stem=True``); ``ode_stem=False`` keeps ResNet10's conv-BN-ReLU stem instead.
* ``soblock`` stem: the paper replaces "the first convolution layer ... and leave[s] the other parts unchanged"
  (line 180), so ResNet10's ``bn1`` + ReLU stay after the ODE block (``stem_bn_relu=True``); ``stem_bn_relu=False``
  is the authors' code.
* ``odenet`` width: default 64 -- the authors' training default ``--channel 64``; ``odenet()``'s own default 54 cannot
  run with its ``GroupNorm(min(8, C))`` (54 is not divisible by 8).  The paper calls it "the original ODENet
  architecture (Chen et al. (2018))"; we build the authors' version described above (Chen et al.'s MNIST example has
  a downsampling conv stem and one ODE block instead).
* ``gamma`` (all blocks and the head): default 0, as in the authors' code; the theorem needs a "small positive"
  gamma, for which the paper gives no value.
* ``tol`` default 0.1 and ``solver`` default ``dopri5`` (paper and code); fixed-step solvers default to h = 1 (paper).

Solver settings are constructor keyword arguments (``create_model("sonet", ..., solver="rk4", step_size=0.1)``):
``solver`` in :data:`SOLVERS`, ``tol`` (rtol = atol, adaptive solvers), ``step_size`` (fixed-step solvers),
``adjoint`` (``torchdiffeq.odeint_adjoint``; default: backpropagation through the solver's operations),
``max_num_steps`` (adaptive solvers; default torchdiffeq's 2**31 - 1).  :func:`solver_override` and
:func:`with_solver` change them afterwards; :func:`nfe` / :func:`reset_nfe` count function evaluations;
:func:`record_grids` records the accepted time grid of every solve.  A failed solve raises :class:`ODESolverError`.

Adaptive step sizes are chosen for the whole batch: torchdiffeq's error norm is taken over the whole state, i.e. over
all images of the batch, so the grid of one image depends on the other images in its batch.  A per-image grid needs
a batch of one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchdiffeq import odeint, odeint_adjoint

from .registry import register_model
from .resnet import CifarResNet

#: Solvers of the paper (lines 204-212), by their torchdiffeq names.
SOLVERS: tuple[str, ...] = ("euler", "rk4", "adaptive_heun", "bosh3", "dopri5")
FIXED_STEP_SOLVERS: tuple[str, ...] = ("euler", "rk4")
ADAPTIVE_SOLVERS: tuple[str, ...] = ("adaptive_heun", "bosh3", "dopri5")

#: LeakyReLU slope of the authors' code (``nn.LeakyReLU()`` default).
NEGATIVE_SLOPE = 0.01

WIDTH_DOC_RESNET = ("the paper's 'channel' (32 or 64): stem width; stages are width x (1, 2, 4, 8); "
                    "< 8 or a multiple of 8 (GroupNorm(min(8, C)))")
WIDTH_DOC_ODENET = ("channels of every ODE block (input channel-repeated to width; < 8 or a multiple of 8), or a "
                    "(channels, num_blocks) pair; published 64 with 10 blocks, tiny (2, 2)")


class ODESolverError(RuntimeError):
    """An ODE solve failed: the step size underflowed, the step budget ran out, or the solution is not finite."""


# --------------------------------------------------------------------------------------------- solver settings

@dataclass(frozen=True)
class SolverSettings:
    """How an ODE block integrates over t in [0, 1].

    ``solver``: one of :data:`SOLVERS`; ``tol``: rtol = atol of the adaptive solvers (the authors' code passes the
    same value for both); ``step_size``: h of the fixed-step solvers (grid 0, h, 2h, ..., 1; the last step is
    shortened when h does not divide 1); ``adjoint``: integrate with ``torchdiffeq.odeint_adjoint`` (gradients by
    the adjoint ODE, solved with the same solver, tol and grid); ``max_num_steps``: step budget of the adaptive
    solvers per solve (None: torchdiffeq's default)."""

    solver: str = "dopri5"
    tol: float = 0.1
    step_size: float = 1.0
    adjoint: bool = False
    max_num_steps: int | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown ODE solver {self.solver!r}; known: {', '.join(SOLVERS)}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) \
                or self.tol <= 0:
            raise ValueError(f"tol must be a positive finite number, got {self.tol!r}")
        if isinstance(self.step_size, bool) or not isinstance(self.step_size, (int, float)) \
                or not math.isfinite(self.step_size) or not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1] (the integration interval is [0, 1]), got "
                             f"{self.step_size!r}")
        if not isinstance(self.adjoint, bool):
            raise ValueError(f"adjoint must be a bool, got {self.adjoint!r}")
        if self.max_num_steps is not None and (isinstance(self.max_num_steps, bool) or
                                               not isinstance(self.max_num_steps, int) or self.max_num_steps < 1):
            raise ValueError(f"max_num_steps must be None or a positive int, got {self.max_num_steps!r}")
        object.__setattr__(self, "tol", float(self.tol))
        object.__setattr__(self, "step_size", float(self.step_size))

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    def replace(self, **changes) -> "SolverSettings":
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def options(self) -> dict:
        """torchdiffeq ``options`` for this setting."""
        if not self.adaptive:
            return {"grid_constructor": _uniform_grid(self.step_size)}
        return {} if self.max_num_steps is None else {"max_num_steps": self.max_num_steps}

    def describe(self) -> str:
        if self.adaptive:
            return f"solver={self.solver!r}, tol={self.tol:g}"
        return f"solver={self.solver!r}, step_size={self.step_size:g} (tol={self.tol:g} unused)"


def _uniform_grid(step_size: float):
    """torchdiffeq ``grid_constructor``: t0, t0 + h, ..., t1 with the count of steps computed in float64, so that a
    step that divides the interval (h = 0.05 on [0, 1]) gives exactly 1/h steps.  (torchdiffeq's own ``step_size``
    grid takes ``ceil(span / h + 1)`` points in the time dtype and can add a zero-length step to float32 rounding.)
    Decreasing intervals work too: the adjoint pass integrates from 1 back to 0, and torchdiffeq's ``_check_inputs``
    then calls the constructor with the decreasing times (and negates the grid it returns)."""

    def grid(func, y0, t: torch.Tensor) -> torch.Tensor:
        start, end = float(t[0]), float(t[-1])
        n = max(1, math.ceil(abs(end - start) / step_size - 1e-9))
        step = math.copysign(step_size, end - start)
        points = start + step * torch.arange(n + 1, dtype=torch.float64)
        points[-1] = end
        return points.to(dtype=t.dtype, device=t.device)

    return grid


# -------------------------------------------------------------------------------------------- vector fields

def group_norm(channels: int) -> nn.GroupNorm:
    """``GroupNorm(min(8, C), C)``, the authors' ``norm`` (``models/misc.py``), with a clear error when C is not
    divisible by the group count."""
    groups = min(8, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm(min(8, C)) needs C < 8 or a multiple of 8, got C = {channels}; pick another "
                         "width")
    return nn.GroupNorm(groups, channels)


def repeat_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Channel ``i`` of the result is channel ``i mod C_in`` of ``x``: the authors' ``repeat_channel`` and
    ``ODEResnetBlock.extend`` (repeat, then the first ``channels mod C_in``; or the first ``channels`` when fewer)."""
    idx = torch.arange(channels, device=x.device) % x.shape[1]
    return x.index_select(1, idx)


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma (the damping factor) must be a finite number >= 0, got {gamma!r}")
    return float(gamma)


class ODEFunc(nn.Module):
    """A vector field ``f(t, state)`` that counts its evaluations in ``nfe`` (every call, including those of the
    solver's initial-step selection and of an adjoint backward solve).  Subclasses implement :meth:`field`."""

    def __init__(self) -> None:
        super().__init__()
        self.nfe = 0

    def forward(self, t: torch.Tensor, state):
        self.nfe += 1
        return self.field(t, state)

    def field(self, t: torch.Tensor, state):
        raise NotImplementedError


class SkewConvFunc(ODEFunc):
    """The skew-symmetric conv field on (y, z) (``planes`` output / ``in_planes`` input channels): see the module
    docstring.  ``norm=False``: the bare field of eq. (3), ``y' = s(W z - g y)``, ``z' = s(-W^T y - g z)``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, gamma: float = 0.0, norm: bool = True,
                 bias: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_planes, self.planes, self.stride = int(in_planes), int(planes), int(stride)
        self.gamma = _check_gamma(gamma)
        self.norm = bool(norm)
        k = 4 if stride == 2 else 3   # authors: 4x4 for stride 2 (pad 1 halves even sizes exactly), else 3x3
        self.kernel = nn.Parameter(torch.empty(planes, in_planes, k, k))
        nn.init.kaiming_uniform_(self.kernel, a=math.sqrt(5))
        if bias:
            bound = 1 / math.sqrt(in_planes * k * k)
            self.bias_y = nn.Parameter(torch.empty(planes).uniform_(-bound, bound))
            self.bias_z = nn.Parameter(torch.empty(in_planes).uniform_(-bound, bound))
        else:
            self.register_parameter("bias_y", None)
            self.register_parameter("bias_z", None)
        make = group_norm if self.norm else (lambda c: nn.Identity())
        self.norm_y_in, self.norm_z_in = make(planes), make(in_planes)
        self.norm_y_out, self.norm_z_out = make(planes), make(in_planes)

    def conv(self, z: torch.Tensor) -> torch.Tensor:
        """``W z``: in_planes -> planes, stride ``stride``, padding 1, no bias."""
        return F.conv2d(z, self.kernel, stride=self.stride, padding=1)

    def conv_t(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``W^T y``, the adjoint of :meth:`conv` from inputs of spatial ``size``: the transposed convolution with
        the same kernel; ``output_padding`` restores odd sizes (7 -> 3 -> 7)."""
        k = self.kernel.shape[-1]
        out_pad = [int(n) - ((int(m) - 1) * self.stride - 2 + k) for n, m in zip(size, y.shape[-2:])]
        return F.conv_transpose2d(y, self.kernel, stride=self.stride, padding=1, output_padding=tuple(out_pad))

    def field(self, t, state):
        y, z = state
        yn, zn = self.norm_y_in(y), self.norm_z_in(z)
        dy = self.conv(zn) - self.gamma * yn
        dz = -self.conv_t(yn, z.shape[-2:]) - self.gamma * zn
        if self.bias_y is not None:   # authors' sign convention: -(W^T y + b_z)
            dy = dy + self.bias_y.view(1, -1, 1, 1)
            dz = dz - self.bias_z.view(1, -1, 1, 1)
        dy = self.norm_y_out(F.leaky_relu(dy, NEGATIVE_SLOPE))
        dz = self.norm_z_out(F.leaky_relu(dz, NEGATIVE_SLOPE))
        return dy, dz

    def extra_repr(self) -> str:
        return (f"{self.in_planes} <-> {self.planes}, stride={self.stride}, kernel={tuple(self.kernel.shape[-2:])}, "
                f"gamma={self.gamma:g}, norm={self.norm}")


class SkewLinearFunc(ODEFunc):
    """The authors' skew ODE head field (``ODEfunc_fc``) on (y: features, z: logits):
    ``y' = W s(z) + b_y - g y``, ``z' = -W^T s(y) + b_z - g z``."""

    def __init__(self, in_features: int, num_classes: int, *, gamma: float = 0.0, bias: bool = True):
        super().__init__()
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.gamma = _check_gamma(gamma)
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            bound = 1 / math.sqrt(num_classes)   # fan-in of the (d, c) weight, as the authors compute it
            self.bias = nn.Parameter(torch.empty(in_features + num_classes).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def field(self, t, state):
        y, z = state
        b_y = b_z = None
        if self.bias is not None:
            b_y, b_z = self.bias[:self.in_features], self.bias[self.in_features:]
        dy = F.linear(F.leaky_relu(z, NEGATIVE_SLOPE), self.weight, b_y) - self.gamma * y
        dz = F.linear(F.leaky_relu(y, NEGATIVE_SLOPE), -self.weight.t(), b_z) - self.gamma * z
        return dy, dz

    def extra_repr(self) -> str:
        return f"{self.in_features} <-> {self.num_classes}, gamma={self.gamma:g}, bias={self.bias is not None}"


class ConcatConv2d(nn.Module):
    """3x3 conv (padding 1, bias) of ``[t; x]``: the time enters as a constant extra input channel (Chen et al.)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.layer = nn.Conv2d(dim_in + 1, dim_out, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t.to(x.dtype)
        return self.layer(torch.cat([tt, x], 1))


class ChenConvFunc(ODEFunc):
    """Chen et al.'s conv ODE field (the authors' ``ODEfunc_tq``): GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(dim), ConcatConv2d(dim, dim)
        self.norm2, self.conv2 = group_norm(dim), ConcatConv2d(dim, dim)
        self.norm3 = group_norm(dim)

    def field(self, t, x):
        out = self.conv1(t, F.relu(self.norm1(x)))
        out = self.conv2(t, F.relu(self.norm2(out)))
        return self.norm3(out)


# ----------------------------------------------------------------------------------------------- ODE blocks

class ODEBlock(nn.Module):
    """Integrates ``func`` over t in [0, 1] with :attr:`settings`.  ``label`` names the block in errors (set by the
    model constructors to ``"<model>.<module path>"``)."""

    def __init__(self, func: ODEFunc, settings: SolverSettings | None = None):
        super().__init__()
        self.func = func
        self.settings = settings if settings is not None else SolverSettings()
        self.label = type(self).__name__
        self._recorder: GridRecorder | None = None

    def integrate(self, state0):
        """The state at t = 1 (a tensor or a tuple of tensors, like ``state0``)."""
        s = self.settings
        ref = state0[0] if isinstance(state0, tuple) else state0
        t = torch.tensor([0.0, 1.0], dtype=ref.dtype, device=ref.device)
        solve = odeint_adjoint if s.adjoint else odeint
        recorder, times = self._recorder, []
        # torchdiffeq's callbacks (read from the func by ``_check_inputs``): the adaptive solvers call
        # ``callback_accept_step(t0, y0, dt)`` once per accepted step (rk_common.py, _adaptive_step); the fixed-grid
        # solvers call ``callback_step(t0, y0, dt)`` before each step (solvers.py, FixedGridODESolver.integrate).
        hook = "callback_accept_step" if s.adaptive else "callback_step"
        if recorder is not None:
            setattr(self.func, hook, lambda t0, y0, dt: times.append(float(t0 + dt)))
        try:
            sol = solve(self.func, state0, t, rtol=s.tol, atol=s.tol, method=s.solver, options=s.options())
        except AssertionError as err:   # torchdiffeq asserts: 'underflow in dt', 'max_num_steps exceeded', ...
            raise self._error(str(err)) from err
        except RuntimeError as err:
            if "underflow" in str(err) or "max_num_steps" in str(err):
                raise self._error(str(err)) from err
            raise
        finally:
            if recorder is not None:
                delattr(self.func, hook)
        out = tuple(x[-1] for x in sol) if isinstance(sol, tuple) else sol[-1]
        if not all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else (out,))):
            raise self._error("the solution at t = 1 is not finite (inf/NaN)")
        if recorder is not None:
            recorder._add(self.label, times)
        return out

    def _error(self, detail: str) -> ODESolverError:
        s = self.settings
        return ODESolverError(
            f"{self.label}: ODE solve failed with {s.describe()}: {detail}. "
            "Check the weights and inputs for inf/NaN; for an adaptive solver try a larger tol or a larger "
            "max_num_steps, or use a fixed-step solver (solver_override(model, solver='rk4', step_size=...)).")

    def extra_repr(self) -> str:
        return self.settings.describe() + (", adjoint" if self.settings.adjoint else "")


class SkewConvBlock(ODEBlock):
    """The skew-symmetric conv ODE block ``in_planes -> planes`` (authors' ``ODEResnetBlock``): output y(1)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, gamma: float = 0.0, norm: bool = True,
                 bias: bool = False, settings: SolverSettings | None = None):
        super().__init__(SkewConvFunc(in_planes, planes, stride, gamma=gamma, norm=norm, bias=bias), settings)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y(0), z(0)): y(0) = x downsampled (stride 2: nearest, scale 0.5) and channel-repeated; z(0) = x."""
        f = self.func
        if x.ndim != 4 or x.shape[1] != f.in_planes:
            raise ValueError(f"{self.label} expects (B, {f.in_planes}, H, W), got {tuple(x.shape)}")
        y0 = F.interpolate(x, scale_factor=0.5, mode="nearest") if f.stride == 2 else x
        return repeat_channels(y0, f.planes), x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.integrate(self.initial_state(x))[0]


class SkewLinearHead(ODEBlock):
    """The authors' skew ODE classifier (``ODEBlock_fc``): z(0) = 0.1 * ones(num_classes), output z(1)."""

    def __init__(self, in_features: int, num_classes: int, *, gamma: float = 0.0, bias: bool = True,
                 settings: SolverSettings | None = None):
        super().__init__(SkewLinearFunc(in_features, num_classes, gamma=gamma, bias=bias), settings)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z0 = torch.full((feats.shape[0], self.func.num_classes), 0.1, dtype=feats.dtype, device=feats.device)
        return self.integrate((feats, z0))[1]


class ChenConvBlock(ODEBlock):
    """One ODE block of the authors' ODENet (``ODEBlock_tq`` over ``ODEfunc_tq``): output x(1), same shape."""

    def __init__(self, dim: int, *, settings: SolverSettings | None = None):
        super().__init__(ChenConvFunc(dim), settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.integrate(x)


# ---------------------------------------------------------------------------------------------------- models

class SONet(nn.Module):
    """SONet: ResNet10's layout with every residual block (and, by default, the stem) a skew ODE block and the
    skew ODE head as classifier (authors' ``models/sonet_s.py``)."""

    def __init__(self, blocks: Sequence[int] = (1, 1, 1, 1), *, in_channels: int = 3, num_classes: int = 10,
                 width: int = 64, ode_stem: bool = True, gamma: float = 0.0, norm: bool = True,
                 settings: SolverSettings | None = None):
        super().__init__()
        width = _check_width(width)
        settings = settings if settings is not None else SolverSettings()
        self.blocks = tuple(int(n) for n in blocks)
        if len(self.blocks) != 4 or any(n < 1 for n in self.blocks):
            raise ValueError(f"blocks must be four positive ints, got {blocks!r}")
        kw = dict(gamma=gamma, norm=norm, settings=settings)
        if ode_stem:   # authors: conv1 = the skew block in_channels -> channel, nothing after it
            self.stem = SkewConvBlock(in_channels, width, 1, **kw)
        else:          # ResNet10's stem
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                      nn.ReLU(inplace=True))
        layers, in_planes = [], width
        for i, n in enumerate(self.blocks):
            planes = width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(SkewConvBlock(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1, **kw))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.head = SkewLinearHead(in_planes, num_classes, gamma=gamma, settings=settings)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SOBlockNet(CifarResNet):
    """SOBlock: this zoo's CIFAR ResNet (``resnet10`` by default) with only ``conv1`` replaced by the skew ODE block
    in_channels -> width (stride 1); ``stem_bn_relu=False`` drops the ``bn1`` + ReLU after it (authors' code)."""

    def __init__(self, blocks: Sequence[int] = (1, 1, 1, 1), *, in_channels: int = 3, num_classes: int = 10,
                 width: int = 64, stem_bn_relu: bool = True, gamma: float = 0.0, norm: bool = True,
                 settings: SolverSettings | None = None):
        super().__init__(tuple(blocks), in_channels=in_channels, num_classes=num_classes, width=_check_width(width))
        self.conv1 = SkewConvBlock(in_channels, width, 1, gamma=gamma, norm=norm, settings=settings)
        self.stem_bn_relu = bool(stem_bn_relu)
        if not self.stem_bn_relu:
            self.bn1 = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.stem_bn_relu:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)


class ODENet(nn.Module):
    """The authors' ODENet (``models/odenet_tq.py``): repeat channels -> ``num_blocks`` Chen ODE blocks at full
    resolution -> GroupNorm -> AdaptiveAvgPool2d(3) -> Linear."""

    def __init__(self, *, in_channels: int = 3, num_classes: int = 10, width: int = 64, num_blocks: int = 10,
                 settings: SolverSettings | None = None):
        super().__init__()
        width = _check_width(width)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        settings = settings if settings is not None else SolverSettings()
        self.width = width
        self.blocks = nn.Sequential(*[ChenConvBlock(width, settings=settings) for _ in range(num_blocks)])
        self.norm = group_norm(width)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.linear = nn.Linear(width * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.blocks(repeat_channels(x, self.width)))
        return self.linear(torch.flatten(self.pool(out), 1))


def _check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or int(width) != width or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    width = int(width)
    if width >= 8 and width % 8:
        raise ValueError(f"width must be < 8 or a multiple of 8 (GroupNorm(min(8, C)) of the authors' code), "
                         f"got {width}")
    return width


def _label_blocks(model: nn.Module, name: str) -> nn.Module:
    for path, m in model.named_modules():
        if isinstance(m, ODEBlock):
            m.label = f"{name}.{path}" if path else name
    return model


# ------------------------------------------------------------------------------- nfe, solver swaps, grids

def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """The ODE blocks of ``model``, in module order (which is the order a forward solves them in for the models
    here)."""
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def _blocks_or_raise(model: nn.Module) -> list[ODEBlock]:
    blocks = ode_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no ODE blocks")
    return blocks


def nfe(model: nn.Module) -> int:
    """Function evaluations of all ODE blocks since the last :func:`reset_nfe` (or construction)."""
    return sum(b.func.nfe for b in ode_blocks(model))


def reset_nfe(model: nn.Module) -> None:
    for b in ode_blocks(model):
        b.func.nfe = 0


@contextmanager
def solver_override(model: nn.Module, solver: str | None = None, *, tol: float | None = None,
                    step_size: float | None = None, adjoint: bool | None = None,
                    max_num_steps: int | None = None) -> Iterator[nn.Module]:
    """Within the ``with`` block every ODE block of ``model`` uses the given settings (``None``: unchanged); the
    previous settings come back on exit, also on an exception.  Yields ``model``."""
    blocks = _blocks_or_raise(model)
    saved = [b.settings for b in blocks]
    new = [s.replace(solver=solver, tol=tol, step_size=step_size, adjoint=adjoint, max_num_steps=max_num_steps)
           for s in saved]   # validated before anything changes
    try:
        for b, s in zip(blocks, new):
            b.settings = s
        yield model
    finally:
        for b, s in zip(blocks, saved):
            b.settings = s


def with_solver(model: nn.Module, solver: str | None = None, *, tol: float | None = None,
                step_size: float | None = None, adjoint: bool | None = None,
                max_num_steps: int | None = None) -> nn.Module:
    """A copy of ``model`` whose ODE blocks use other settings, sharing every parameter and buffer with ``model``
    (the same tensor objects: training one trains the other, BN statistics included).  The module objects are new,
    so the train/eval mode, hooks and nfe counters are the copy's own from now on.  For BPDA-style attacks: the
    forward of ``model`` with its adaptive solver, the gradient through e.g. ``with_solver(model, "rk4",
    step_size=0.05)``.  Make the copy outside :func:`record_grids` (it would copy the recorder's hook too)."""
    _blocks_or_raise(model)
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    twin = copy.deepcopy(model, memo)
    for b in ode_blocks(twin):
        b.settings = b.settings.replace(solver=solver, tol=tol, step_size=step_size, adjoint=adjoint,
                                        max_num_steps=max_num_steps)
        b._recorder = None
    return twin


class GridRecorder:
    """The time grids of the solves made while :func:`record_grids` is active.

    ``grids[i][j]``: forward ``i``, the ``j``-th ODE solve of that forward (module order here; ``labels[i][j]``
    names the block): ``[0.0, t_1, ..., 1.0]``, the ends of the accepted steps (adaptive solvers) or the grid
    (fixed-step solvers).  torchdiffeq's adaptive solvers may step past t = 1 and evaluate y(1) by dense-output
    interpolation inside the last step; that step's end is then reported as 1.0 here and kept unclipped in
    ``raw[i][j]``.  The step size is chosen for the whole batch (one error norm over the batch): for the grid of one
    image, forward a batch of one."""

    def __init__(self) -> None:
        self.grids: list[list[list[float]]] = []
        self.raw: list[list[list[float]]] = []
        self.labels: list[list[str]] = []

    def _new_forward(self) -> None:
        self.grids.append([])
        self.raw.append([])
        self.labels.append([])

    def _add(self, label: str, ends: list[float]) -> None:
        if not self.grids:
            self._new_forward()
        self.raw[-1].append([0.0, *ends])
        self.grids[-1].append([0.0, *(min(t, 1.0) for t in ends)])
        self.labels[-1].append(label)

    @property
    def last(self) -> list[list[float]]:
        """The grids of the last forward."""
        if not self.grids:
            raise IndexError("no forward recorded yet")
        return self.grids[-1]

    def steps(self) -> list[list[int]]:
        """Accepted steps per forward and solve."""
        return [[len(g) - 1 for g in fwd] for fwd in self.grids]


@contextmanager
def record_grids(model: nn.Module) -> Iterator[GridRecorder]:
    """Record the accepted time grid of every ODE solve of ``model`` (see :class:`GridRecorder`); each call of
    ``model`` starts a new forward entry.  Everything is restored on exit."""
    blocks = _blocks_or_raise(model)
    if any(b._recorder is not None for b in blocks):
        raise RuntimeError("record_grids is already active on this model")
    rec = GridRecorder()
    handle = model.register_forward_pre_hook(lambda module, args: rec._new_forward())
    try:
        for b in blocks:
            b._recorder = rec
        yield rec
    finally:
        handle.remove()
        for b in blocks:
            b._recorder = None


# ------------------------------------------------------------------------------------------------- registry

def _settings(solver, tol, step_size, adjoint, max_num_steps) -> SolverSettings:
    return SolverSettings(solver=solver, tol=tol, step_size=step_size, adjoint=adjoint, max_num_steps=max_num_steps)


# Tiny widths: a forward + backward of 64 28x28 images with dopri5, tol 0.1 takes about 0.5 s (sonet, width 1),
# 0.26 s (soblock, width 4) and 0.31 s (odenet, 2 channels x 2 blocks) on one CPU core here; the cost is torchdiffeq's
# Runge-Kutta arithmetic on the batch-sized state and ~2-4 ms per small-channel conv backward at 28x28, whatever the
# channel count, so ten full-resolution ODENet blocks cannot be made fast by narrowing alone.

@register_model(default_width=64, tiny_width=1, width_doc=WIDTH_DOC_RESNET)
def sonet(*, in_shape, num_classes, width=64, solver="dopri5", tol=0.1, step_size=1.0, adjoint=False,
          max_num_steps=None, gamma=0.0, norm=True, blocks=(1, 1, 1, 1), ode_stem=True):
    """SONet (sonet paper): ResNet10 with skew-symmetric ODE blocks and ODE head; width 32 or 64 ("channel")."""
    net = SONet(blocks, in_channels=in_shape[0], num_classes=num_classes, width=width, ode_stem=ode_stem,
                gamma=gamma, norm=norm, settings=_settings(solver, tol, step_size, adjoint, max_num_steps))
    return _label_blocks(net, "sonet")


@register_model(default_width=64, tiny_width=4, width_doc=WIDTH_DOC_RESNET)
def soblock(*, in_shape, num_classes, width=64, solver="dopri5", tol=0.1, step_size=1.0, adjoint=False,
            max_num_steps=None, gamma=0.0, norm=True, blocks=(1, 1, 1, 1), stem_bn_relu=True):
    """SOBlock (sonet paper): ResNet10 with the first conv replaced by the skew-symmetric ODE block."""
    net = SOBlockNet(blocks, in_channels=in_shape[0], num_classes=num_classes, width=width,
                     stem_bn_relu=stem_bn_relu, gamma=gamma, norm=norm,
                     settings=_settings(solver, tol, step_size, adjoint, max_num_steps))
    return _label_blocks(net, "soblock")


@register_model(default_width=64, tiny_width=(2, 2), width_doc=WIDTH_DOC_ODENET)
def odenet(*, in_shape, num_classes, width=64, solver="dopri5", tol=0.1, step_size=1.0, adjoint=False,
           max_num_steps=None, num_blocks=None):
    """ODENet as in the sonet authors' code: 10 Chen et al. conv ODE blocks at full resolution, GN, pool 3, linear."""
    if isinstance(width, (tuple, list)):
        if len(width) != 2:
            raise ValueError(f"odenet width must be channels or (channels, num_blocks), got {width!r}")
        width, pair_blocks = width
        if num_blocks is not None and num_blocks != pair_blocks:
            raise ValueError(f"num_blocks={num_blocks!r} contradicts width={(width, pair_blocks)!r}")
        num_blocks = pair_blocks
    net = ODENet(in_channels=in_shape[0], num_classes=num_classes, width=width,
                 num_blocks=10 if num_blocks is None else num_blocks,
                 settings=_settings(solver, tol, step_size, adjoint, max_num_steps))
    return _label_blocks(net, "odenet")


__all__ = ["ADAPTIVE_SOLVERS", "FIXED_STEP_SOLVERS", "SOLVERS", "ChenConvBlock", "ChenConvFunc", "GridRecorder",
           "ODEBlock", "ODEFunc", "ODENet", "ODESolverError", "SOBlockNet", "SONet", "SkewConvBlock",
           "SkewConvFunc", "SkewLinearFunc", "SkewLinearHead", "SolverSettings", "group_norm", "nfe", "ode_blocks",
           "record_grids", "repeat_channels", "reset_nfe", "solver_override", "with_solver"]
