"""abstain: Balcan, Blum, Sharma, Zhang, "Can non-Lipschitz networks be robust? The power of abstention and
data-driven decision making" (paper text: shared/papers/000_871a667a1cb44412.txt).

Modules
-------
``defence``    Algorithm 1 (ROBUSTCLASSIFIER(tau, sigma)): preprocessing, classification, natural E_nat / D_nat.
``subspace``   Haar-random n3-dimensional adversarial subspaces, seeded.
``adversary``  the exact random-subspace adversary: tau*(x, S) per test point (one pass gives E_adv for every tau).
``cutting``    n3 >= 2: candidates in increasing half-space lower bound, each solved by constraint generation.
``qp``         exact per-candidate programs (Goldfarb-Idnani active set; cvxpy/CLARABEL reference).
``linear``     the linear protocol and its exact adversary.
``tuning``     data-driven tau: exact batch minimisation of g = E_adv + c D_nat, online continuous exponential weights.
``theory``     synthetic check of Theorems 2.1 / 2.2.
``table1``     Table 1 / Figure 1 rows in the layout of ``published/abstain.layout.yaml``.
``features``   contrastive encoders (SimCLR / SupCon on the training engine) and their 512-d feature files.
``workflow``   the workflow's targets: the exact adversary pass per feature set, then table1, figure1, tuning,
               n3_sweep, theory (imported by ``rules/abstain.smk``; not re-exported here: they import torch).

Inputs are plain arrays: ``train_feats (N, d)``, ``train_labels (N,)``, ``test_feats (M, d)``, ``test_labels (M,)``.
"""

from .adversary import AttackResult, tau_star, tau_star_multi, tau_star_naive
from .defence import classify, exact_nearest, natural_rates, nearest_other_label_distance, preprocess
from .linear import fit_linear, linear_adversary_wins, linear_adversary_wins_lp, linear_predict
from .subspace import random_subspaces
from .table1 import evaluate_features, figure1_rows, long_format, table1_rows, tradeoff_curve
from .tuning import online_exp_weights, regret_rows, tune_and_evaluate, tune_tau_batch

__all__ = [
    "AttackResult", "tau_star", "tau_star_multi", "tau_star_naive", "classify", "exact_nearest", "natural_rates",
    "nearest_other_label_distance", "preprocess", "fit_linear", "linear_adversary_wins", "linear_adversary_wins_lp",
    "linear_predict", "random_subspaces", "evaluate_features", "figure1_rows", "long_format", "table1_rows",
    "tradeoff_curve",
    "online_exp_weights", "regret_rows", "tune_and_evaluate", "tune_tau_batch",
]
