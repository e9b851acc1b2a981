"""Benchmark: one training step with lipreg's gradient penalty (2.6)/(2.9) estimated by the finite difference (the
paper's method, L104-108: "It is possible to compute grad_x l(x) using backpropagation, however this means training
is slower, because it requires a second pass of backpropagation") against the same step by exact double
backpropagation, and both against a plain cross-entropy step.  Not a test.

    python benchmarks/lipreg_penalty.py [--model resnext34_2x32] [--width 32] [--batch 128] [--size 32]
        [--repeats 5] [--threads 1] [--device cpu] [--quick]

Workload: ``advrep.models.create_model(--model)`` (default tulip's ResNeXt-34 (2x32) at its published width, 32 base
channels) on seeded uniform images of shape (batch, 3, size, size) in [0, 1] and seeded labels of 10 classes, in
train mode (BatchNorm on batch statistics).  One step = the objective's forward (``GradNormPenalty``, L2 attack norm,
eps = 0.01, lambda = 0.1, h = 1e-3: a Table 2 row; the penalty's weights do not change the work), its backward, and
an SGD step (lr 0.1, momentum 0.9, weight decay 5e-4: tulip ``cifar10/argparser.py`` lines 26-42).  Batch 128 is
tulip's (argparser.py line 26).  Configurations, all on the same model (weights reset to the same state before every
step) and the same batch:

* ``CE``: ``GradNormPenalty(0, 0)``, plain cross-entropy (one forward, one backward);
* ``FD``: ``method="finite_difference"``: forward, backward to the input (graph kept), a second forward at
  ``x + h d``, backward of the combined loss to the weights through both forwards;
* ``exact``: ``method="exact"``: forward, backward to the input with ``create_graph=True``, backward of the combined
  loss through that graph (double backpropagation).

Timing: median over ``--repeats`` of each configuration, measured in each repeat in turn (interleaved, alternating
order), with the median over repeats of its ratio to the peer of the same repeat.  On CPU the clock is the
process's CPU time (``time.process_time``, ``--threads`` torch threads, 1 by default: the development machines are
shared, and wall time there measures the neighbours as much as the code); on CUDA wall time after
``torch.cuda.synchronize``.  Also printed: how far the finite-difference estimate of the per-sample ``||grad_x l||_2``
is from the exact one on this batch, in train mode (what the step computes) and in eval mode.  They are not the same
quantity in train mode: the finite difference moves the whole batch at once, so sample i's estimate is
``sum_j grad_{x_j} l_i . d_j``, while the exact norm is that of ``grad_{x_i} sum_j l_j``; BatchNorm on batch
statistics makes the cross terms nonzero (``GradNormPenalty``'s docstring).  In eval mode the two differ only by the
finite-difference error (O(h) and float32 rounding of ``l(x + h d) - l(x)``).

``--quick``: width 8, batch 32, 3 repeats (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CONFIGS = {  # label -> GradNormPenalty keyword arguments
    "CE": dict(eps_tv=0.0, lam_lip=0.0),
    "FD": dict(eps_tv=0.01, lam_lip=0.1, method="finite_difference", h=1e-3, norm="l2"),
    "exact": dict(eps_tv=0.01, lam_lip=0.1, method="exact", norm="l2"),
}


def timer(device: torch.device):
    if device.type == "cuda":
        def now():
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.process_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnext34_2x32")
    ap.add_argument("--width", type=int, default=None, help="model width (default: the published one)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="width 8, batch 32, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.width, args.batch, args.repeats = args.width or 8, min(args.batch, 32), min(args.repeats, 3)

    from advrep.models import create_model
    from advrep.train.context import EpochContext
    from advrep.train.objectives import GradNormPenalty

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    model = create_model(args.model, in_shape=(3, args.size, args.size), num_classes=10, width=args.width,
                         seed=0).to(device).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    objectives = {name: GradNormPenalty(**kw) for name, kw in CONFIGS.items()}
    now = timer(device)

    def step(name: str) -> float:
        model.load_state_dict(state)  # every step starts from the same weights (and BatchNorm statistics)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        t0 = now()
        loss, _ = objectives[name](model, x, y, EpochContext(device=device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: non-finite loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return now() - t0

    for name in objectives:  # warm-up: lazy initialisation, kernel selection
        step(name)
    times = {name: [] for name in objectives}
    for r in range(args.repeats):
        names = list(objectives) if r % 2 == 0 else list(objectives)[::-1]
        for name in names:
            times[name].append(step(name))

    def ratio(a, b):
        return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))

    rel = {}
    for mode in ("train", "eval"):
        model.load_state_dict(state)
        model.train(mode == "train")
        _, fd, _ = objectives["FD"].per_sample(model, x, y)
        _, ex, _ = objectives["exact"].per_sample(model, x, y)
        rel[mode] = ((fd - ex).abs() / ex.abs().clamp_min(1e-12)).detach().cpu()
    model.load_state_dict(state)
    model.train()

    params = sum(p.numel() for p in model.parameters())
    clock = f"CPU time, {torch.get_num_threads()} torch thread(s)" if device.type == "cpu" else "wall time (CUDA)"
    print(f"model {args.model} width {args.width or 'published'} ({params:,} parameters), batch {args.batch} x 3 x "
          f"{args.size} x {args.size}, {device}, {clock}, {args.repeats} repeats (median)")
    print(f"{'step':52s} {'median':>10s} {'/ CE':>7s} {'/ FD':>7s}")
    labels = {"CE": "plain cross-entropy", "FD": "penalty, finite difference (paper, h = 1e-3)",
              "exact": "penalty, exact (double backprop)"}
    for name in objectives:
        med = statistics.median(times[name])
        print(f"{labels[name]:52s} {med * 1000:7.1f} ms {ratio(name, 'CE'):7.2f} {ratio(name, 'FD'):7.2f}")
    print(f"exact / finite difference: {ratio('exact', 'FD'):.2f} (the finite difference is "
          f"{(1 - 1 / ratio('exact', 'FD')) * 100:.0f}% cheaper per step)")
    for mode, why in (("train", "what the step uses; BatchNorm on batch statistics couples the samples"),
                      ("eval", "BatchNorm on running statistics")):
        print(f"finite-difference vs exact ||grad_x l||_2 per sample, {mode} mode ({why}): median relative "
              f"difference {rel[mode].median():.2e}, max {rel[mode].max():.2e}")


if __name__ == "__main__":
    main()
