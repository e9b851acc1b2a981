"""Adversarial detection by the norm of the model Jacobian (lipreg = Finlay, Calder, Abbasi & Oberman, text copy
``shared/papers/001_92ec5d875816d6ad.txt``, Sec. 7, L532-536, Table 6, Figure 4).

An image is flagged as adversarially perturbed when ``||grad_x f(x)||_{2,inf} > c`` (7.1), ``f`` the softmax output
(:func:`advrep.evaluate.per_sample.input_gradient_norms`, whose docstring gives the norm's definition).  The
threshold ``c`` is set from clean data so that the rate of false positives is 5%: the 95th percentile of the norm
over the clean test images the model classifies correctly (the paper obtained c = 2.45 on CIFAR-10, L536).

The paper writes (7.1) with ``>=``; here a norm equal to ``c`` is not flagged (``>``).  The two differ only for a
norm that equals the threshold exactly, which with the percentile's linear interpolation happens for one clean
image when ``percentile / 100 * (n - 1)`` is a whole number.  Either way the rate of false positives on the ``n``
correct clean images is ``1 - percentile / 100`` to within one image (``1 / n``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _finite_1d(values, what: str) -> np.ndarray:
    a = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional (one norm per image), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def detection_threshold(grad_f_2inf, clean_correct, percentile: float = 95.0) -> float:
    """The threshold ``c`` of (7.1): the ``percentile``-th percentile (numpy's linear interpolation) of
    ``||grad f(x)||_{2,inf}`` (``grad_f_2inf``, one value per clean image) over the images with
    ``clean_correct`` True (a bool array of the same length)."""
    p = float(percentile)
    if not 0.0 < p < 100.0:
        raise ValueError(f"percentile must lie in (0, 100), got {percentile!r}")
    norms = _finite_1d(grad_f_2inf, "grad_f_2inf")
    correct = np.asarray(clean_correct.detach().cpu().numpy() if isinstance(clean_correct, torch.Tensor)
                         else clean_correct)
    if correct.dtype != bool:
        raise ValueError(f"clean_correct must be a bool array, got dtype {correct.dtype}")
    if correct.shape != norms.shape:
        raise ValueError(f"clean_correct has shape {correct.shape}, grad_f_2inf {norms.shape}")
    if not correct.any():
        raise ValueError("no clean image is classified correctly: the detection threshold is undefined")
    return float(np.percentile(norms[correct], p))


def detection_rate(grad_f_2inf_adv, c: float) -> float:
    """Fraction of the images (one norm each, ``grad_f_2inf_adv``) that the detector flags: ``norm > c``."""
    c = float(c)
    if not math.isfinite(c):
        raise ValueError(f"threshold c must be finite, got {c}")
    norms = _finite_1d(grad_f_2inf_adv, "grad_f_2inf_adv")
    if norms.size == 0:
        raise ValueError("no images to detect: the detection rate of an empty set is undefined")
    return float((norms > c).mean())


def adversarial_gradient_norms(model: nn.Module, x_adv: torch.Tensor, *, batch_size: int = 256,
                               jacobian_of: str = "softmax") -> np.ndarray:
    """``||grad_x f(x_adv)||_{2,inf}`` per image (eval mode, on the model's device), by
    :func:`advrep.evaluate.per_sample.input_gradient_norms`; ``f`` does not depend on the label, so none is needed."""
    from ..evaluate.per_sample import input_gradient_norms

    x_adv = torch.as_tensor(x_adv)
    if x_adv.ndim < 2:
        raise ValueError(f"x_adv must be a batch (B, ...), got shape {tuple(x_adv.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    out = []
    for s in range(0, x_adv.shape[0], batch_size):
        xb = x_adv[s:s + batch_size].to(device, p.dtype if p is not None else None)
        dummy = torch.zeros(xb.shape[0], dtype=torch.long, device=device)  # the loss norm it also returns is unused
        _, jac = input_gradient_norms(model, xb, dummy, jacobian_of=jacobian_of)
        out.append(jac.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
