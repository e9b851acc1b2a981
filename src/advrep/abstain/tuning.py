"""Data-driven choice of the threshold tau (paper Section 3, L83-85 and Theorem 3.1, L105).

Objective (L85, an adversarial Chow objective): ``g(tau) = E_adv(tau) + c * D_nat(tau)`` with
``E_adv(tau) = mean 1{tau*_x < tau}`` and ``D_nat(tau) = mean 1{d_nn(x) >= tau}``, from one exact adversary pass
(:class:`advrep.abstain.adversary.AttackResult`).  Both terms are left-continuous step functions of ``tau`` whose
jumps sit at the values ``tau*_x`` and ``d_nn(x)``: ``g`` is constant on every interval ``(p_k, p_{k+1}]`` between
consecutive breakpoints and on ``(p_K, inf)``, so evaluating it once per interval minimises it exactly.

(a) Batch: :func:`tune_tau_batch` minimises ``g`` exactly on a validation split; :func:`tune_and_evaluate` reports
    the chosen tau on the held-out split.
(b) Online: :func:`online_exp_weights` is the continuous exponentially weighted forecaster ("continuous version of
    the multiplicative updates algorithm", Theorem 3.1) over ``tau in [0, tau_max]``: density
    ``p_t(tau) ∝ exp(-eta_t * sum_{s<t} l_s(tau))`` with ``l_s`` the batch objective of round ``s`` (batch size
    ``b``).
    Losses are piecewise constant, so the density is piecewise constant on the breakpoint partition and is sampled
    exactly (pick a piece with probability ∝ length * weight, then uniformly inside it); the expected loss of a round
    is an exact finite sum.  Regret is against the best fixed tau in hindsight, tracked for every prefix ``T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _counts(tau_star, d_nn, taus):
    """``#{tau* < tau}`` and ``#{d_nn >= tau}`` for every tau (exact, via sorted searches)."""
    ts = np.sort(np.asarray(tau_star, dtype=np.float64))
    ds = np.sort(np.asarray(d_nn, dtype=np.float64))
    taus = np.asarray(taus, dtype=np.float64)
    adv = np.searchsorted(ts, taus, side="left")
    abst = len(ds) - np.searchsorted(ds, taus, side="left")
    return adv, abst


def objective(tau_star, d_nn, c: float, taus) -> np.ndarray:
    """``g(tau) = E_adv(tau) + c D_nat(tau)`` at each tau (L85)."""
    adv, abst = _counts(tau_star, d_nn, taus)
    return (adv + c * abst) / max(len(np.asarray(tau_star)), 1)


def breakpoints(tau_star, d_nn) -> np.ndarray:
    """Sorted distinct finite jump points of ``g``."""
    v = np.concatenate([np.asarray(tau_star, dtype=np.float64), np.asarray(d_nn, dtype=np.float64)])
    return np.unique(v[np.isfinite(v)])


@dataclass(frozen=True)
class TuneResult:
    c: float
    tau: float  # representative threshold: the midpoint of the optimal interval (or its point)
    lo: float  # the optimal set is the interval (lo, hi]  (lo == hi: the single point tau = 0)
    hi: float
    g: float
    E_adv: float
    D_nat: float


def tune_tau_batch(tau_star, d_nn, c: float, *, tau_max: float = math.inf) -> TuneResult:
    """Exact ``argmin_{0 <= tau <= tau_max} g(tau)``: one evaluation per constancy interval (smallest tau on ties)."""
    p = breakpoints(tau_star, d_nn)
    p = p[(p > 0) & (p < tau_max)]
    # constancy sets: {0}, (0, p_1], (p_1, p_2], ..., (p_K, tau_max]; g is attained at every right end
    lo = np.r_[0.0, 0.0, p]
    hi = np.r_[0.0, p, tau_max]
    ev = hi.copy()
    if not math.isfinite(tau_max):
        ev[-1] = (p[-1] if len(p) else 0.0) + 1.0
    g = objective(tau_star, d_nn, c, ev)
    k = int(np.argmin(g))
    if k == 0:
        tau = 0.0
    elif math.isfinite(hi[k]):
        tau = float(0.5 * (lo[k] + hi[k]))
    else:
        tau = float(lo[k] + 1.0)
    adv, abst = _counts(tau_star, d_nn, [tau])
    M = max(len(np.asarray(tau_star)), 1)
    return TuneResult(c, tau, float(lo[k]), float(hi[k]), float(g[k]), float(adv[0] / M), float(abst[0] / M))


def validation_split(m: int, frac: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(m)`` into (validation, held-out) index arrays."""
    perm = np.random.default_rng(seed).permutation(m)
    k = int(round(frac * m))
    return np.sort(perm[:k]), np.sort(perm[k:])


def tune_and_evaluate(result, costs=(0.1, 0.25, 0.5, 1.0), *, frac: float = 0.5, seed: int = 0,
                      tau_max: float = math.inf) -> list[dict]:
    """Choose tau on a validation split for each cost ``c``; report ``E_nat, E_adv, D_nat, g`` on the held-out split,
    with the held-out split's own optimum (an oracle) alongside.  ``result``: an ``AttackResult``."""
    val, test = validation_split(len(result.tau_star), frac, seed)
    rows = []
    for c in costs:
        tr = tune_tau_batch(result.tau_star[val], result.d_nn[val], c, tau_max=tau_max)
        held = result.subset(test)
        rates = held.rates(tr.tau)
        oracle = tune_tau_batch(held.tau_star, held.d_nn, c, tau_max=tau_max)
        rows.append({"c": c, "tau": tr.tau, "val_g": tr.g, "test_g": rates["E_adv"] + c * rates["D_nat"],
                     "oracle_test_g": oracle.g, **{f"test_{k}": v for k, v in rates.items()}})
    return rows


@dataclass
class OnlineResult:
    T: np.ndarray  # prefix lengths 1..rounds
    expected_loss: np.ndarray  # cumulative expected loss of the learner after each round
    sampled_loss: np.ndarray  # cumulative loss of the sampled thresholds
    best_fixed: np.ndarray  # cumulative loss of the best fixed tau in hindsight, per prefix
    taus: np.ndarray  # sampled threshold per round
    eta: np.ndarray  # learning rate used per round
    loss_range: float

    @property
    def regret(self) -> np.ndarray:
        """Expected regret per prefix (Theorem 3.1 bounds the expected regret)."""
        return self.expected_loss - self.best_fixed

    @property
    def sampled_regret(self) -> np.ndarray:
        return self.sampled_loss - self.best_fixed


def online_exp_weights(tau_star, d_nn, c: float, *, batch_size: int, tau_max: float, eta: float | None = None,
                       seed: int = 0, shuffle: bool = True) -> OnlineResult:
    """Continuous exponential weights over ``tau in [0, tau_max]`` on a stream of test batches (Theorem 3.1).

    Round ``t`` reveals a batch of ``batch_size`` test points; its loss is ``l_t(tau) = E_adv + c D_nat`` on that
    batch (range ``[0, H]``, ``H = 1 + c``).  ``eta=None``: the anytime rate ``eta_t = sqrt(8 ln(t + 1) / t) / H``
    (t = rounds played so far), matching the ``O(H sqrt(T log T))`` regret of continuous exponential weights for
    dispersed piecewise-constant losses; a float fixes ``eta``.  The partition uses the breakpoints of the whole
    stream (a refinement of any round's partition, so the density is unchanged).
    """
    rng = np.random.default_rng(seed)
    ts = np.asarray(tau_star, dtype=np.float64)
    ds = np.asarray(d_nn, dtype=np.float64)
    order = rng.permutation(len(ts)) if shuffle else np.arange(len(ts))
    rounds = len(ts) // batch_size
    if rounds < 1:
        raise ValueError("need at least one full batch")
    order = order[:rounds * batch_size].reshape(rounds, batch_size)
    p = breakpoints(ts[order.ravel()], ds[order.ravel()])
    p = np.unique(np.r_[0.0, p[(p > 0) & (p < tau_max)], tau_max])
    lengths = np.diff(p)
    mids = 0.5 * (p[:-1] + p[1:])
    H = 1.0 + c
    L = np.zeros(len(mids))  # cumulative loss per piece
    L0 = 0.0  # cumulative loss of the isolated comparator tau = 0
    exp_cum = samp_cum = 0.0
    out_exp, out_samp, out_best, out_tau, out_eta = [], [], [], [], []
    for t in range(rounds):
        e = eta if eta is not None else math.sqrt(8.0 * math.log(t + 2) / (t + 1)) / H
        logw = np.log(lengths) - e * (L - L.min())
        w = np.exp(logw - logw.max())
        prob = w / w.sum()
        batch = order[t]
        loss = objective(ts[batch], ds[batch], c, mids)
        exp_cum += float(prob @ loss)
        k = rng.choice(len(prob), p=prob)
        tau_t = float(rng.uniform(p[k], p[k + 1]))
        samp_cum += float(objective(ts[batch], ds[batch], c, [tau_t])[0])
        L += loss
        L0 += float(objective(ts[batch], ds[batch], c, [0.0])[0])
        out_exp.append(exp_cum)
        out_samp.append(samp_cum)
        out_best.append(min(float(L.min()), L0))
        out_tau.append(tau_t)
        out_eta.append(e)
    return OnlineResult(np.arange(1, rounds + 1), np.array(out_exp), np.array(out_samp), np.array(out_best),
                        np.array(out_tau), np.array(out_eta), H)


def regret_rows(res: OnlineResult, prefixes=None) -> list[dict]:
    """Regret vs T with the ``sqrt(T log T)`` shape of Theorem 3.1 (constant fitted at the last prefix)."""
    T = res.T
    if prefixes is None:
        prefixes = np.unique(np.geomspace(1, T[-1], num=min(12, len(T))).astype(int))
    shape = np.sqrt(T * np.log(T + 1))
    const = res.regret[-1] / shape[-1]
    return [{"T": int(k), "regret": float(res.regret[k - 1]), "regret_per_round": float(res.regret[k - 1] / k),
             "sampled_regret": float(res.sampled_regret[k - 1]), "sqrtTlogT_shape": float(const * shape[k - 1])}
            for k in prefixes]
