"""oaat: Addepalli, Jain, Sriramanan, Khare & Babu, "Scaling adversarial training to large perturbation bounds"
(Oracle-Aligned Adversarial Training, OA-AT; text copy ``shared/papers/004_56204911272491b2.txt``).

* :mod:`advrep.oaat.objectives` -- the training objectives the paper adds, registered by name: ``oaat`` (OA-AT),
  ``fat`` (Friendly AT, Zhang et al. 2020) and ``ates`` (AT with early stopping, Sitawarin et al. 2020); PGD-AT,
  TRADES, AWP and ExAT use the toolkit's ``pgd_at``, ``trades`` and ``awp``;
* :mod:`advrep.oaat.lpips` -- LPIPS on a classifier's own intermediate features (OA-AT's perceptual distance).

Importing the package registers the objectives.
"""

from . import objectives  # noqa: F401  (registers fat, ates, oaat)
from .lpips import FeatureLPIPS, default_layers, lpips_from_features
from .objectives import ATES, FAT, OAAT, OAATPhase, early_stopped_pgd

__all__ = ["ATES", "FAT", "FeatureLPIPS", "OAAT", "OAATPhase", "default_layers", "early_stopped_pgd",
           "lpips_from_features"]
