"""Benchmark: one OA-AT epoch against one AWP-TRADES epoch (issue target: ratio <= 1.3).  Not a test.

    python benchmarks/oaat_epoch.py [--quick] [--n 2048] [--batch 128] [--repeats 5] [--threads 1] [--device cpu]
        [--model resnet18] [--width tiny]

Same model (same initial weights, one copy per objective), same data, same batches, same optimizer, measured in one
run: a training epoch is ``advrep.train.loop.train_step`` over every batch (the objective's forward with its inner
attacks, the backward, AWP's restore and the SGD step), preceded by the objective's ``on_epoch_start`` and followed
by its ``on_epoch_end`` (OA-AT's LPIPS snapshot and its weight average are part of its cost).  Peer: the toolkit's
AWP-TRADES (``awp`` over ``trades``: 10 KL-PGD steps of eps/4 at eps = 16/255, beta 6, gamma 0.005, AWP active).
OA-AT (``oaat``, the authors' CIFAR-10 ResNet-18 defaults, AWP active) is timed in each of its three kinds of epoch
of a 110-epoch run: the first quarter (eps 4/255, 5 attack steps), plain epochs (10 CE-PGD steps; AWP at x + 2
delta) and alternate epochs (Oracle-Sensitive batches: a 10-step attack at 24/255 and one more forward pass;
Oracle-Invariant batches: a 10-step attack through the model *and* the LPIPS network, the EMA copy).  Printed: the
median over repeats of each epoch's time and of its ratio to the AWP-TRADES epoch of the same repeat (epochs
interleaved, alternating order), the forward passes per batch through the model and the LPIPS network, and the
ratio of a whole 110-epoch OA-AT run (28 + 54 + 28 epochs of the three kinds) to 110 AWP-TRADES epochs.

Workload: ``--n`` images of the CIFAR-sized stand-in (real data need not be here: ``digits32``, scikit-learn's digits
at 32x32x3, repeated with noise), ``--model`` at ``--width`` (default: the package's ResNet-18 at tiny width).  On
CPU the clock is the process's CPU time (``time.process_time``; ``--threads`` torch threads, 1 by default): shared
machines make wall time measure the neighbours; on CUDA wall time after ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from _workloads import mnist_sized

EPOCHS = 110  # the paper's CIFAR-10 ResNet-18 run: which epochs are warm / plain / alternate
KINDS = {"warm": 10, "plain": 60, "alternate": 100}  # a 0-based epoch of each kind in a 110-epoch OA-AT run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="256 images (2 batches: one of each alternate kind), 3 repeats")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", default="tiny")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 256, 3

    import advrep.oaat  # noqa: F401  (registers oaat)
    from advrep.models import create_model
    from advrep.train import EpochContext, make_objective
    from advrep.train.loop import train_step

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    x, y, what = mnist_sized(args.n, None, standin="digits32")
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0).to(dev)
    yt = torch.from_numpy(y).long().to(dev)
    width = args.width if args.width == "tiny" else int(args.width)
    base_model = create_model(args.model, in_shape=tuple(xt.shape[1:]), num_classes=10, width=width, seed=0).to(dev)
    batches = [(xt[i:i + args.batch], yt[i:i + args.batch]) for i in range(0, len(xt), args.batch)]

    def awp_trades():
        return make_objective({"name": "awp", "gamma": 0.005, "warmup": 0,
                               "base": {"name": "trades", "eps": "16/255", "alpha": "4/255", "steps": 10, "beta": 6}})

    def oaat():
        return make_objective({"name": "oaat", "awp_warmup": 0})

    runs = {"awp_trades": (awp_trades(), KINDS["plain"])}
    runs.update({f"oaat_{k}": (oaat(), e) for k, e in KINDS.items()})
    models = {name: copy.deepcopy(base_model) for name in runs}
    optims = {name: torch.optim.SGD(models[name].parameters(), lr=0.01, momentum=0.9) for name in runs}
    plan = oaat().schedule(EPOCHS)
    counts = {"warm": sum(p.epoch < int(EPOCHS * 0.25) for p in plan),
              "alternate": sum(p.alternate for p in plan)}
    counts["plain"] = EPOCHS - counts["warm"] - counts["alternate"]

    forwards = {name: {"model": 0, "lpips": 0} for name in runs}
    current = {"name": None}

    def count(module, _inputs, _output):
        name = current["name"]
        if name is None:
            return
        obj = runs[name][0]
        lp = getattr(obj, "_lpips", None)
        if module is models[name]:
            forwards[name]["model"] += 1
        elif lp is not None and module is lp.network:
            forwards[name]["lpips"] += 1

    hook = torch.nn.modules.module.register_module_forward_hook(count)

    def epoch(name) -> float:
        obj, e = runs[name]
        model, opt = models[name], optims[name]
        ctx = EpochContext(epoch=e, epochs=EPOCHS, steps_per_epoch=len(batches), device=dev)
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        model.train()
        obj.on_epoch_start(model, ctx)
        for i, (xb, yb) in enumerate(batches):
            ctx.batch, ctx.step = i, e * len(batches) + i
            train_step(model, xb, yb, obj, opt, ctx)
        obj.on_epoch_end(model, ctx)
        if cuda:
            torch.cuda.synchronize()
        return clock() - t0

    for name in runs:  # warm-up (and attach the OA-AT average)
        epoch(name)
    for name in runs:  # count forward passes over one epoch
        current["name"] = name
        epoch(name)
        current["name"] = None
        forwards[name] = {k: v / len(batches) for k, v in forwards[name].items()}
    hook.remove()
    times = {name: [] for name in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            times[name].append(epoch(name))
    peer = np.array(times["awp_trades"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = {k: float(np.median(np.array(v) / peer)) for k, v in times.items()}
    run_ratio = sum(counts[k] * ratio[f"oaat_{k}"] for k in KINDS) / EPOCHS

    print(f"workload: {what}, {len(xt)} images of {tuple(xt.shape[1:])}, batch {args.batch} ({len(batches)} batches "
          f"per epoch), {args.model} width {args.width}, {dev}, {torch.get_num_threads()} torch threads, "
          f"{args.repeats} repeats (median), clock {'wall' if cuda else 'process CPU'}")
    print(f"{'epoch':40s} {'median':>9s} {'/ AWP-TRADES':>13s} {'fwd model':>10s} {'fwd LPIPS':>10s}")
    labels = {"awp_trades": "AWP-TRADES (10 KL-PGD steps)", "oaat_warm": "OA-AT, first quarter (5 steps)",
              "oaat_plain": "OA-AT, plain epoch (10 steps)", "oaat_alternate": "OA-AT, alternate epoch (OS + OI)"}
    for name in runs:
        f = forwards[name]
        print(f"{labels[name]:40s} {med[name]:8.3f}s {ratio[name]:13.2f} {f['model']:10.1f} {f['lpips']:10.1f}")
    print(f"whole {EPOCHS}-epoch run ({counts['warm']} + {counts['plain']} + {counts['alternate']} epochs): "
          f"OA-AT / AWP-TRADES = {run_ratio:.2f}; issue target <= 1.3")


if __name__ == "__main__":
    main()
