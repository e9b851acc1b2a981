"""Benchmark: the attack wrappers of ``advrep.attacks`` at their FULL budgets on a real model and real data, with
independent cross-checks.  Not a test (minutes to an hour on one CPU thread).

Workload: real Fashion-MNIST through ``advrep.data`` (the mirror ``--mirror``, default Debian's
``/usr/share/datasets/fashion-mnist``, verified by the package), and Madry et al.'s MNIST CNN from the model zoo
(``create_model("madry_mnist_cnn", width=--width)``, Fashion-MNIST normalisation) adversarially trained with
``advrep.train.fit`` (objective ``pgd_at``: L-inf eps 0.1, 10 steps of eps/4, Adam 1e-3, eps ramped linearly over
the first 2 epochs) for ``--epochs`` epochs on the first ``--train-n`` training images.  The trained weights are
cached in ``--cache`` (``fit``'s own checkpoint: a finished run is not retrained).  Attacks run on the first ``--n``
test images in one batch, through ``run_attack`` (the registry's defaults unless stated):

* L-inf, eps ``--eps-linf`` (0.1): PGD-40 (``pgd``, steps=40), GAMA-PGD (100 steps), CW-Linf (margin PGD, 30
  steps), Square (5000 queries), AutoAttack standard (``paper=True``: 100 iterations for APGD-CE/APGD-T/FAB-T).
* L2, eps ``--eps-l2`` (1.5): PGD-40 L2, CW-L2 (foolbox, 9 binary-search steps x 10000 Adam steps), Boundary
  (foolbox, 25000 steps), AutoAttack standard L2 (``paper=True``).
* ``worst_case`` over each list (re-runs the attacks in list order on the samples still unbroken).

    python benchmarks/attacks_full_budget.py [--n 200] [--epochs 6] [--threads 1] [--out result.json] [--quick]

``--quick``: 20 samples and small budgets (Square 500 queries, AutoAttack as torchattacks ships it, CW-L2 3 x 500,
Boundary 1000 steps); the trained model is the same (cached).  Use it to time a run and extrapolate.

Printed numbers:

1. Data source and how it was verified; training time and clean accuracy (whole test set and the first ``--n``).
2. One row per attack: robust accuracy over the ``--n`` samples (clean mistakes count as broken), wall time and
   process (CPU) time of the ``run_attack`` call, median and mean ``model_calls`` over the samples the attack
   handled (correct at x).
3. Cross-checks, each PASS/FAIL with its numbers:
   * feasibility, recomputed here without the package: largest ``||x_adv - x||`` / eps and the box [0, 1];
   * every ``success`` re-verified by a fresh forward pass at ``x_adv`` (same batch; mismatches re-checked one
     sample at a time, to tell arithmetic noise at the decision boundary from a wrong verdict);
   * AutoAttack (ours) vs a direct ``torchattacks.AutoAttack`` call with the same settings and seed on the samples
     correct at x: the success sets must agree except that ours may break MORE samples (our ``LibraryMonitor``
     keeps the first adversarial point in the ball that any whole-batch call visited; torchattacks only keeps
     what its sub-attacks return);
   * AutoAttack robust accuracy <= PGD-40's + 1 %, in both norms;
   * Square (black-box) not stronger than the white-box attacks (robust accuracy >= the best white-box one - 2 %,
     and how many samples only Square broke): a large gap would point to gradient masking;
   * CW-L2 / Boundary minimal adversarial distances: foolbox's own minimisation result, observed by recording what
     the wrapper hands to ``LibraryMonitor.combine`` (the wrapper's code is run unchanged); median over the samples
     attacked (inf = none found) and the check that every sample whose minimal distance is <= eps is reported
     broken by the wrapper;
   * ``worst_case`` robust accuracy <= every single attack's (+ 1 sample: the re-run draws different random
     starts on a different batch), and compared with the union of the single runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

LINF = [("pgd", {"steps": 40}), ("gama_pgd", {}), ("cw_linf", {}), ("square", {}), ("autoattack", {"paper": True})]
L2 = [("pgd", {"steps": 40}), ("cw_l2", {}), ("boundary", {}), ("autoattack", {"paper": True})]
QUICK = {"square": {"n_queries": 500}, "autoattack": {"paper": False},
         "cw_l2": {"binary_search_steps": 3, "steps": 500}, "boundary": {"steps": 1000}}
LABEL = {"pgd": "PGD-40", "gama_pgd": "GAMA-PGD-100", "cw_linf": "CW-Linf-30", "square": "Square-5000",
         "autoattack": "AutoAttack-std", "cw_l2": "CW-L2 9x10000", "boundary": "Boundary-25000"}


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------------ data and model
def load_fashion(cache: Path, mirror: str):
    from advrep import data

    path = cache / "fashion_mnist.npz"
    if not path.exists():
        (cache / "data_root").mkdir(parents=True, exist_ok=True)
        data.prepare("fashion_mnist", path, root=cache / "data_root", mirror=mirror)
    p = data.load(path)
    f = lambda a: torch.tensor(a, dtype=torch.float32).permute(0, 3, 1, 2).div(255)  # noqa: E731
    return f(p.x_train), torch.tensor(p.y_train).long(), f(p.x_test), torch.tensor(p.y_test).long(), p.meta


def train(args, xtr, ytr):
    from torch.utils.data import DataLoader, TensorDataset

    from advrep.models import create_model
    from advrep.train import fit

    model = create_model("madry_mnist_cnn", in_shape=(1, 28, 28), num_classes=10, width=args.width,
                         normalization="fashion_mnist", seed=0)
    key = f"madry_w{args.width}_n{args.train_n}_e{args.epochs}_pgdat{args.train_eps}_seed0"
    loader = DataLoader(TensorDataset(xtr[:args.train_n], ytr[:args.train_n]), batch_size=128, shuffle=True)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit(model, loader, objective={"name": "pgd_at", "eps": args.train_eps, "alpha": args.train_eps / 4,
                                        "steps": 10},
              epochs=args.epochs, optimizer={"name": "adam", "lr": 1e-3}, eps_schedule={"ramp_epochs": 2,
                                                                                        "per": "iteration"},
              checkpoint_dir=Path(args.cache) / key, seed=0, device="cpu", progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model = res.eval_model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"checkpoint": str(res.final), "resumed_from": res.resumed_from, "wall_s": wall, "cpu_s": cpu,
                   "history": [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in res.history]}


@torch.no_grad()
def predict(model, x, batch=1000):
    return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------------------------ checks
def norms_of(x_adv, x):
    d = (x_adv - x).flatten(1).double()
    return {"linf": d.abs().max(1).values, "l2": d.pow(2).sum(1).sqrt()}


def check_feasible(res, x, eps, norm):
    dist = norms_of(res.x_adv, x)[norm]
    worst = float(dist.max()) if len(dist) else 0.0
    box = bool(res.x_adv.min() >= 0) and bool(res.x_adv.max() <= 1)
    ok = worst <= eps * (1 + 1e-6) + 1e-6 and box
    return ok, f"max ||x_adv - x||_{norm} = {worst:.6g} (eps {eps:g}, ratio {worst / eps:.6f}), in [0,1]: {box}"


@torch.no_grad()
def check_verdict(model, res, y):
    pred = model(res.x_adv).argmax(1)
    bad = ((pred != y) != res.success).nonzero().squeeze(1)
    detail = f"{len(bad)} mismatches between success and a fresh forward at x_adv"
    if len(bad):
        single = torch.stack([model(res.x_adv[i:i + 1]).argmax(1)[0] for i in bad.tolist()])
        still = int(((single != y[bad]) != res.success[bad]).sum())
        logits = model(res.x_adv[bad])
        top2 = logits.topk(2, 1).values
        detail += (f" (rows {bad.tolist()[:10]}; one at a time: {still} still mismatch; top-2 logit gaps "
                   f"{[f'{g:.2e}' for g in (top2[:, 0] - top2[:, 1]).tolist()[:10]]})")
    return len(bad) == 0, detail


def median_calls(res, handled):
    c = res.model_calls[handled].double()
    if len(c) == 0:
        return float("nan"), float("nan")
    return float(c.median()), float(c.mean())


@contextlib.contextmanager
def record_library_raw():
    """Observe, without changing anything, what the library wrappers hand to ``LibraryMonitor.combine``: the
    library's own output (for CW-L2 and Boundary foolbox's minimal adversarials) with the monitor's inputs."""
    from advrep.attacks import library

    records = []
    original = library.LibraryMonitor

    class Recording(original):
        def combine(self, x_lib):
            records.append((self.x.clone(), self.y.clone(), x_lib.detach().clone()))
            return super().combine(x_lib)

    library.LibraryMonitor = Recording
    try:
        yield records
    finally:
        library.LibraryMonitor = original


@torch.no_grad()
def minimal_distances(model, record):
    x, y, raw = record
    ok = (predict(model, raw) != y) & (raw.flatten(1).amin(1) >= 0) & (raw.flatten(1).amax(1) <= 1)
    d = norms_of(raw, x)["l2"]
    return torch.where(ok, d, torch.full_like(d, math.inf)), x


def median_str(d):
    return f"{float(d.median()):.4f}" if len(d) else "n/a"


# ------------------------------------------------------------------------------------------------ the run
def run_one(model, x, y, name, params, eps, norm):
    from advrep.attacks import run_attack

    t0, c0 = time.perf_counter(), time.process_time()
    res = run_attack(name, model, x, y, eps=eps, norm=norm, **params)
    return res, time.perf_counter() - t0, time.process_time() - c0


def direct_autoattack(model, x, y, eps, norm, paper, seed=0):
    """torchattacks.AutoAttack called as the wrapper builds it (same settings, same seed), without the wrapper."""
    import torchattacks

    atk = torchattacks.AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                                  n_classes=10, seed=seed)
    if paper:
        for sub in atk._autoattack.attacks:
            if type(sub).__name__ in ("APGD", "APGDT", "FAB"):
                sub.steps = 100
            elif type(sub).__name__ == "Square":
                sub.rescale_schedule = False
    t0 = time.perf_counter()
    adv = atk(x, y).detach()
    return adv, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="test samples attacked (the first n)")
    ap.add_argument("--epochs", type=int, default=6, help="adversarial-training epochs")
    ap.add_argument("--train-n", type=int, default=10000, help="training images used (the first ones)")
    ap.add_argument("--width", type=float, default=0.25, help="madry_mnist_cnn width multiplier")
    ap.add_argument("--train-eps", type=float, default=0.1, help="PGD-AT radius (L-inf)")
    ap.add_argument("--eps-linf", type=float, default=0.1)
    ap.add_argument("--eps-l2", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--cache", default="/tmp/advrep_full_budget", help="prepared data and training checkpoints")
    ap.add_argument("--mirror", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST mirror folder")
    ap.add_argument("--out", default=None, help="write all numbers to this JSON file")
    ap.add_argument("--quick", action="store_true", help="20 samples, small budgets: a timing/sanity run")
    ap.add_argument("--norms", default="linf,l2", help="which lists to run (linf, l2 or both)")
    ap.add_argument("--no-worst-case", action="store_true", help="skip the worst_case re-runs")
    ap.add_argument("--no-direct-aa", action="store_true", help="skip the direct torchattacks.AutoAttack calls")
    args = ap.parse_args(argv)
    if args.quick and args.n == 200:
        args.n = 20

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    start = time.perf_counter()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = {"args": vars(args), "torch": torch.__version__, "python": platform.python_version(),
           "attacks": [], "checks": []}
    import foolbox
    import torchattacks
    out["libraries"] = {"torchattacks": torchattacks.__version__, "foolbox": foolbox.__version__}

    def check(name, ok, detail):
        out["checks"].append({"check": name, "pass": bool(ok), "detail": detail})
        log(f"  [{'PASS' if ok else 'FAIL'}] {name}: {detail}")

    # -------------------------------------------------- data, model
    xtr, ytr, xte, yte, meta = load_fashion(cache, args.mirror)
    log(f"data: Fashion-MNIST train {tuple(xtr.shape)} test {tuple(xte.shape)}; source {meta.get('source')}, "
        f"verified by {meta.get('verified_by')}")
    model, tinfo = train(args, xtr, ytr)
    out["training"] = tinfo
    hist = tinfo["history"]
    log(f"model: madry_mnist_cnn width {args.width} ({sum(p.numel() for p in model.parameters())} parameters), "
        f"PGD-AT eps {args.train_eps} on {args.train_n} images, {args.epochs} epochs; this call "
        f"{tinfo['wall_s']:.1f} s wall / {tinfo['cpu_s']:.1f} s CPU"
        + (f" (resumed from epoch {tinfo['resumed_from']})" if tinfo["resumed_from"] is not None else "")
        + f"; training time recorded in the checkpoint {sum(r.get('time_s', 0) for r in hist):.1f} s; "
        f"last-epoch robust train acc {hist[-1]['acc']:.3f}" if hist else "")
    clean_all = float((predict(model, xte) == yte).float().mean())
    x, y = xte[:args.n].contiguous(), yte[:args.n]
    correct = predict(model, x) == y
    n = len(y)
    out["clean"] = {"test_acc": clean_all, "acc_first_n": float(correct.float().mean()), "n": n}
    log(f"clean accuracy: {clean_all:.4f} on all {len(yte)} test images; {float(correct.float().mean()):.4f} "
        f"({int(correct.sum())}/{n}) on the first {n}")

    lists = {"linf": (LINF, args.eps_linf), "l2": (L2, args.eps_l2)}
    results = {}
    raw_dist = {}
    for norm in [s.strip() for s in args.norms.split(",") if s.strip()]:
        attacks, eps = lists[norm]
        log(f"\n== {norm}, eps {eps:g}, {n} samples ==")
        log(f"{'attack':<16} {'robust acc':>10} {'wall s':>9} {'cpu s':>9} {'med calls':>10} {'mean calls':>10}")
        for name, params in attacks:
            params = {**params, **(QUICK.get(name, {}) if args.quick else {})}
            recorder = record_library_raw() if name in ("cw_l2", "boundary") else contextlib.nullcontext([])
            with recorder as recs:
                res, wall, cpu = run_one(model, x, y, name, params, eps, norm)
            if recs:
                raw_dist[(norm, name)] = (minimal_distances(model, recs[-1]), len(recs))
            results[(norm, name)] = res
            robust = 1 - float(res.success.float().mean())
            med, mean = median_calls(res, correct)
            label = LABEL.get(name, name) if not args.quick or name not in QUICK else f"{name} (quick)"
            if name == "pgd" and norm == "l2":
                label = "PGD-40 L2"
            log(f"{label:<16} {robust:>10.4f} {wall:>9.1f} {cpu:>9.1f} {med:>10.0f} {mean:>10.1f}")
            out["attacks"].append({"norm": norm, "eps": eps, "attack": name, "params": params, "robust_acc": robust,
                                   "wall_s": wall, "cpu_s": cpu, "median_calls": med, "mean_calls": mean,
                                   "broken": int(res.success.sum()), "n": n})

        if not args.no_worst_case:
            from advrep.attacks import worst_case

            wl = [(nm, {**p, **(QUICK.get(nm, {}) if args.quick else {})}) for nm, p in attacks]
            t0, c0 = time.perf_counter(), time.process_time()
            wc, idx = worst_case(model, x, y, wl, eps=eps, norm=norm, return_index=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            robust = 1 - float(wc.success.float().mean())
            med, mean = median_calls(wc, correct)
            log(f"{'worst_case':<16} {robust:>10.4f} {wall:>9.1f} {cpu:>9.1f} {med:>10.0f} {mean:>10.1f}")
            by = {wl[k][0]: int(((idx == k) & correct).sum()) for k in range(len(wl))}
            log(f"  worst_case: broken first by {by} (clean mistakes excluded)")
            union = torch.zeros(n, dtype=torch.bool)
            for nm, _ in attacks:
                union |= results[(norm, nm)].success
            out["attacks"].append({"norm": norm, "eps": eps, "attack": "worst_case", "robust_acc": robust,
                                   "wall_s": wall, "cpu_s": cpu, "median_calls": med, "mean_calls": mean,
                                   "broken_first_by": by, "union_of_single_runs_robust_acc":
                                       1 - float(union.float().mean())})
            results[(norm, "worst_case")] = wc
            best_single = min(1 - float(results[(norm, nm)].success.float().mean()) for nm, _ in attacks)
            check(f"{norm} worst_case <= best single attack (+1 sample)", robust <= best_single + 1 / n + 1e-9,
                  f"worst_case {robust:.4f}, best single {best_single:.4f}, union of the single runs "
                  f"{1 - float(union.float().mean()):.4f}; samples broken by the union but not by worst_case: "
                  f"{int((union & ~wc.success).sum())}, the reverse: {int((wc.success & ~union).sum())}")

        log(f"-- checks ({norm})")
        for (nm_norm, nm), res in results.items():
            if nm_norm != norm:
                continue
            ok, d = check_feasible(res, x, eps, norm)
            check(f"{norm} {nm} feasible", ok, d)
            ok, d = check_verdict(model, res, y)
            check(f"{norm} {nm} success re-verified", ok, d)
            clean_bad = ~correct
            ok = bool(res.success[clean_bad].all()) and bool((res.model_calls[clean_bad] == 0).all()) and \
                bool((res.x_adv[clean_bad] == x[clean_bad]).all())
            check(f"{norm} {nm} clean mistakes: success, x_adv = x, 0 calls", ok, f"{int(clean_bad.sum())} samples")

        pgd_rob = 1 - float(results[(norm, "pgd")].success.float().mean())
        aa = results[(norm, "autoattack")]
        aa_rob = 1 - float(aa.success.float().mean())
        check(f"{norm} AutoAttack <= PGD-40 + 0.01", aa_rob <= pgd_rob + 0.01,
              f"AutoAttack {aa_rob:.4f}, PGD-40 {pgd_rob:.4f}")
        if not args.no_direct_aa:
            paper = not args.quick
            adv, wall = direct_autoattack(model, x[correct], y[correct], eps, norm, paper=paper)
            theirs = torch.zeros(n, dtype=torch.bool)
            theirs[~correct] = True
            theirs[correct] = predict(model, adv) != y[correct]
            dist = norms_of(adv, x[correct])[norm]
            their_rob = 1 - float(theirs.float().mean())
            only_theirs = int((theirs & ~aa.success).sum())
            only_ours = int((aa.success & ~theirs).sum())
            detail = (f"ours {aa_rob:.4f}, direct torchattacks.AutoAttack(seed 0{', paper settings' if paper else ''})"
                      f" {their_rob:.4f} ({wall:.1f} s wall); broken only by theirs {only_theirs}, only by ours "
                      f"{only_ours}; direct output max ||adv - x||_{norm} = {float(dist.max()):.6g}")
            if only_ours:
                detail += " (ours >= theirs: the monitor keeps the first in-ball adversarial of any whole-batch call)"
            check(f"{norm} AutoAttack wrapper vs direct torchattacks", only_theirs == 0, detail)
            out.setdefault("direct_autoattack", {})[norm] = {"robust_acc": their_rob, "wall_s": wall,
                                                             "only_theirs": only_theirs, "only_ours": only_ours}

        if norm == "linf":
            sq = results[("linf", "square")]
            sq_rob = 1 - float(sq.success.float().mean())
            white = torch.zeros(n, dtype=torch.bool)
            for nm in ("pgd", "gama_pgd", "cw_linf", "autoattack"):
                white |= results[("linf", nm)].success
            best_white = min(1 - float(results[("linf", nm)].success.float().mean())
                             for nm in ("pgd", "gama_pgd", "cw_linf"))
            check("linf Square not stronger than white-box (gradient-masking sanity)", sq_rob >= best_white - 0.02,
                  f"Square {sq_rob:.4f}, best of PGD-40/GAMA/CW-Linf {best_white:.4f}; samples broken by Square "
                  f"and by none of PGD/GAMA/CW/AutoAttack: {int((sq.success & ~white).sum())}; broken by the "
                  f"white-box union but not Square: {int((white & ~sq.success).sum())}")
        else:
            for nm in ("cw_l2", "boundary"):
                if (norm, nm) not in raw_dist:
                    continue
                (d, xs), nrec = raw_dist[(norm, nm)]
                res = results[(norm, nm)]
                # map the monitor's rows back to batch rows (the monitor saw x[rows] for some rows)
                rows = torch.tensor([int((x == xi).flatten(1).all(1).nonzero()[0]) for xi in xs])
                found = torch.isfinite(d)
                within = d <= eps
                missed = int((within & ~res.success[rows]).sum())
                out.setdefault("minimal_l2_distances", {})[nm] = {
                    "attacked": len(d), "found": int(found.sum()), "median_all": float(d.median()) if len(d) else None,
                    "median_found": float(d[found].median()) if found.any() else None,
                    "quartiles_found": [float(q) for q in d[found].quantile(torch.tensor([0.25, 0.5, 0.75]).double())]
                    if found.any() else None, "within_eps": int(within.sum())}
                check(f"l2 {nm} minimal distances (foolbox's own result)", missed == 0,
                      f"{len(d)} samples handed to foolbox, adversarial found for {int(found.sum())}; median L2 "
                      f"{median_str(d)} (inf = none), over found {median_str(d[found])}, quartiles "
                      f"{[round(v, 4) for v in out['minimal_l2_distances'][nm]['quartiles_found'] or []]}; "
                      f"{int(within.sum())} within eps {eps:g}, of which the wrapper reported unbroken: {missed}")
            if ("l2", "cw_l2") in raw_dist:
                cw_rob = 1 - float(results[("l2", "cw_l2")].success.float().mean())
                check("l2 CW-L2 within 0.02 of PGD-40 L2 or stronger", cw_rob <= pgd_rob + 0.02,
                      f"CW-L2 {cw_rob:.4f}, PGD-40 L2 {pgd_rob:.4f}, AutoAttack L2 {aa_rob:.4f}")

    total = time.perf_counter() - start
    out["total_wall_s"] = total
    n_fail = sum(not c["pass"] for c in out["checks"])
    log(f"\n{len(out['checks']) - n_fail}/{len(out['checks'])} checks passed; total {total:.1f} s wall, "
        f"{time.process_time():.1f} s CPU (process)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=float))
        log(f"wrote {args.out}")
    return 0 if n_fail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
