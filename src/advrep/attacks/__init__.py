"""Attacks: one call signature for all (model, x, y, eps, norm -> AttackResult), inputs in [0, 1], models attacked
in eval mode.  Shared mechanics live in :mod:`advrep.attacks.core`; the call contract and the registry in
:mod:`advrep.attacks.base`.

``run_attack(name, model, x, y, *, eps, norm="linf", **params)`` runs ``ATTACKS[name]``:

===============  ======================================================  ==========  =============================
name             attack                                                  norms       implementation
===============  ======================================================  ==========  =============================
``pgd``          PGD (Madry et al. 2018), restarts, step schedules        linf, l2    hand-written (core.maximize)
``fgsm``         FGSM / FGM (Goodfellow et al. 2015)                      linf, l2    hand-written
``ifgsm``        I-FGSM / BIM (Kurakin et al. 2017)                       linf, l2    hand-written
``cw_linf``      PGD on the CW margin loss                                linf        hand-written
``gama_pgd``     GAMA-PGD (Sriramanan et al. 2020)                        linf        hand-written
``bpda_pgd``     PGD with a surrogate's gradient, BPDA (Athalye 2018)     linf, l2    hand-written (core.maximize)
``cw_l2``        Carlini-Wagner L2 (2017)                                 l2          foolbox
``boundary``     Boundary attack (Brendel et al. 2018)                    l2          foolbox
``spsa``         SPSA (Uesato et al. 2018)                                linf        torchattacks
``square``       Square attack (Andriushchenko et al. 2020)               linf, l2    torchattacks
``autoattack``   AutoAttack 'standard' (Croce & Hein 2020)                linf, l2    torchattacks
===============  ======================================================  ==========  =============================

Plus :func:`minimal_distance` / :func:`robust_accuracy_curve` (accuracy vs eps from one pass) and
:func:`worst_case` (per-sample worst case over attacks).
"""

from . import bpda, gama, gradient, library  # noqa: F401  (register the attacks)
from .base import ATTACKS, Attack, FirstSuccess, LibraryMonitor, register, run_attack
from .bpda import BPDAPGD
from .core import (NORMS, AttackResult, CallCounter, clamp_box, eps_vector, eval_mode, lp_norm, margin, maximize,
                   misclassified, project, random_start, steepest_ascent)
from .distance import minimal_distance, robust_accuracy_curve
from .ensemble import worst_case
from .gama import GamaPGD
from .gradient import FGSM, IFGSM, PGD, CWLinf
from .library import SPSA, AutoAttack, Boundary, CarliniWagnerL2, Square

__all__ = ["ATTACKS", "NORMS", "Attack", "AttackResult", "AutoAttack", "BPDAPGD", "Boundary", "CWLinf",
           "CallCounter", "CarliniWagnerL2", "FGSM", "FirstSuccess", "GamaPGD", "IFGSM", "LibraryMonitor", "PGD",
           "SPSA", "Square", "clamp_box", "eps_vector", "eval_mode", "lp_norm", "margin", "maximize",
           "minimal_distance", "misclassified", "project", "random_start", "register", "robust_accuracy_curve",
           "run_attack", "steepest_ascent", "worst_case"]
