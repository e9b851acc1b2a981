"""Benchmark: what a skew-symmetric ODE block (sonet) costs against the ResNet BasicBlock it replaces, and what the
adjoint method saves in memory.  Not a test.

    python benchmarks/sonet_ode_block.py [--batch 100] [--channels 32] [--size 32] [--repeats 5] [--threads 1]
        [--device cpu] [--memory-model sonet] [--memory-width 32] [--quick]

Workload: random N(0, 1) inputs (seeded) of shape (batch, channels, size, size); the ODE block is
``advrep.models.ode.SkewConvBlock(channels, channels, stride 1)`` (GroupNorms, kaiming init, gamma 0: the sonet
authors' block), the peer ``advrep.models.resnet.BasicBlock(channels, channels)`` (train mode: BatchNorm on batch
statistics), both freshly initialised under the same seed.  One pass = forward, a scalar loss (mean of the squared
output) and the backward pass to the parameters *and* the input (training needs the first, attacks the second).

1. Time of one pass, median over ``--repeats``, every configuration measured in each repeat in turn (interleaved,
   alternating order), printed with the median over repeats of its ratio to the BasicBlock of the same repeat and
   the number of function evaluations (NFE) of the vector field in the forward and in the backward pass (the
   backward one is nonzero only for the adjoint, which solves an ODE backwards; plain backpropagation replays the
   recorded operations instead).  Configurations: dopri5 at tol 0.1 (the paper's setting) by backpropagation
   through the solver and by the adjoint; euler and rk4 (torchdiffeq's 3/8 rule) at h = 1 (the paper's fixed-step
   solvers); rk4 at h = 0.05, a fine fixed grid of the kind a BPDA surrogate differentiates through.
   On CPU the clock is the process's CPU time (``time.process_time``, ``--threads`` torch threads, 1 by default):
   the development machines are shared, and wall time there measures the neighbours as much as the code; on CUDA
   wall time after ``torch.cuda.synchronize``.
2. Peak memory of one pass through dopri5 (tol 0.1): backpropagation through the solver vs the adjoint
   (``torchdiffeq.odeint_adjoint``), for the block above and for a whole model (``--memory-model``: ``sonet``, every
   block an ODE block, or ``soblock``; width ``--memory-width``; 3x``size``x``size`` inputs, batch ``--batch``, CE loss
   on fixed labels).  How it is measured:

   * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus ``memory_allocated`` before
     the pass (the caching allocator's own count of live tensor bytes: exact, in-process).
   * CPU, the same quantity: torch keeps no allocator statistics there and ``tracemalloc`` sees only Python's own
     allocations (tensor data is allocated in C++), but with ``torch.profiler.profile(profile_memory=True)`` torch's
     CPU allocator reports every allocation and free together with its running total of the bytes allocated since
     profiling began (the ``Total Allocated`` of the trace's ``[memory]`` events); its maximum over the pass is the
     peak of live tensor bytes the pass added -- independent of how malloc hands memory to the process.
   * CPU, physical memory: each configuration also runs in a fresh subprocess (nothing the allocator kept from an
     earlier configuration can hide a peak), builds the model and input, makes a warm-up pass on a batch of 2 (lazy
     initialisation of kernels and thread pools), resets the kernel's high-water mark of the resident set
     (``/proc/self/clear_refs`` <- 5), runs the pass and reports ``VmHWM`` minus the resident set just before the
     pass: the peak of physical memory the pass added, malloc's overhead and fragmentation included (so it is at
     least the live-tensor peak, and may be well above it).  Where ``clear_refs`` cannot be written: ``ru_maxrss``
     after the pass minus the resident set before it (flagged as a lower bound unless the pass set a new
     high-water mark).
   * Both devices also print the activations autograd holds for the backward pass when the forward ends (unique
     storages of the tensors saved through ``torch.autograd.graph.saved_tensors_hooks`` that are still alive then;
     parameters, buffers and input excluded): the part of the memory that the adjoint is meant to remove.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import weakref

import torch
from torch import nn

TIME_CONFIGS = [  # label, solver settings (None: the BasicBlock peer)
    ("BasicBlock", None),
    ("ODE dopri5 tol 0.1", dict(solver="dopri5", tol=0.1)),
    ("ODE dopri5 tol 0.1 adjoint", dict(solver="dopri5", tol=0.1, adjoint=True)),
    ("ODE euler h 1", dict(solver="euler", step_size=1.0)),
    ("ODE rk4 h 1", dict(solver="rk4", step_size=1.0)),
    ("ODE rk4 h 0.05", dict(solver="rk4", step_size=0.05)),
]


def block(settings: dict | None, channels: int, device) -> nn.Module:
    from advrep.models.ode import SkewConvBlock, SolverSettings
    from advrep.models.resnet import BasicBlock

    torch.manual_seed(0)
    if settings is None:
        return BasicBlock(channels, channels).to(device).train()
    return SkewConvBlock(channels, channels, 1, settings=SolverSettings(**settings)).to(device).train()


def whole_model(name: str, width: int, size: int, adjoint: bool, device) -> nn.Module:
    from advrep.models import create_model

    return create_model(name, in_shape=(3, size, size), num_classes=10, width=width, seed=0, solver="dopri5",
                        tol=0.1, adjoint=adjoint).to(device).train()


def inputs(shape, device, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device)


def one_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Forward, scalar loss, backward to the parameters and the input."""
    model.zero_grad(set_to_none=True)
    z = x.detach().requires_grad_(True)
    out = model(z)
    loss = out.square().mean() if y is None else nn.functional.cross_entropy(out, y)
    loss.backward()


def counted_pass(model, x, y=None) -> tuple[int, int]:
    """(forward NFE, backward NFE) of one pass."""
    from advrep.models.ode import nfe, ode_blocks, reset_nfe

    if not ode_blocks(model):
        one_pass(model, x, y)
        return 0, 0
    reset_nfe(model)
    model.zero_grad(set_to_none=True)
    z = x.detach().requires_grad_(True)
    out = model(z)
    fwd = nfe(model)
    loss = out.square().mean() if y is None else nn.functional.cross_entropy(out, y)
    loss.backward()
    return fwd, nfe(model) - fwd


def saved_bytes(model, x, y=None) -> int:
    """Bytes of the activations autograd holds for the backward pass once the forward is done: the unique storages
    of the tensors saved during the forward (``saved_tensors_hooks``) that are still alive when the loss is
    computed, i.e. held by the graph -- not those of discarded computations (rejected solver steps, step-size
    selection), which are freed during the forward -- and not the parameters, buffers and input."""
    saved: list[weakref.ref] = []

    def pack(t):  # a detached alias: returning ``t`` itself would tie an output to its own node in a reference
        d = t.detach()  # cycle and keep discarded graphs alive until the garbage collector runs
        saved.append(weakref.ref(d))
        return d

    model.zero_grad(set_to_none=True)
    z = x.detach().requires_grad_(True)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), z]}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(z)
        loss = out.square().mean() if y is None else nn.functional.cross_entropy(out, y)
    storages: dict[int, int] = {}
    for ref in saved:
        t = ref()
        if t is None:
            continue
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if st.data_ptr() not in own:
            storages[st.data_ptr()] = st.nbytes()
    saved.clear()
    loss.backward()
    return sum(storages.values())


# ------------------------------------------------------------------------------------------------ memory (CPU)

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def _setup(spec: dict, device):
    """(model, input, labels) of a memory configuration, after a warm-up pass on a batch of 2."""
    if spec["what"] == "block":
        model = block(dict(solver="dopri5", tol=0.1, adjoint=spec["adjoint"]), spec["channels"], device)
        shape, y = (spec["batch"], spec["channels"], spec["size"], spec["size"]), None
    else:
        model = whole_model(spec["what"], spec["width"], spec["size"], spec["adjoint"], device)
        shape = (spec["batch"], 3, spec["size"], spec["size"])
        y = (torch.arange(spec["batch"]) % 10).to(device)
    x = inputs(shape, device)
    one_pass(model, inputs((2, *shape[1:]), device, seed=2), None if y is None else y[:2])
    model.zero_grad(set_to_none=True)
    return model, x, y


def live_peak_cpu(model, x, y=None) -> int:
    """Peak of the live tensor bytes allocated during one pass, from the profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        one_pass(model, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]
    model.zero_grad(set_to_none=True)
    return max(totals, default=0)


def _memory_child(spec: dict) -> dict:
    """One configuration in this (fresh) process: see the module docstring, part 2, CPU."""
    torch.set_num_threads(spec["threads"])
    model, x, y = _setup(spec, torch.device("cpu"))
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rss_before = _status_kib("VmRSS")
    fwd, bwd = counted_pass(model, x, y)
    if method == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        valid = peak > hwm_before
    else:
        peak, valid = _status_kib("VmHWM"), True
    model.zero_grad(set_to_none=True)
    return {"live_bytes": live_peak_cpu(model, x, y), "rss_bytes": (peak - rss_before) * 1024, "rss_valid": valid,
            "rss_method": method, "nfe": [fwd, bwd], "saved_bytes": saved_bytes(model, x, y)}


def memory_cpu(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_memory-child", json.dumps(spec)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_cuda(spec: dict, device) -> dict:
    model, x, y = _setup(spec, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fwd, bwd = counted_pass(model, x, y)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    return {"live_bytes": peak, "rss_bytes": None, "rss_valid": True, "rss_method": None, "nfe": [fwd, bwd],
            "saved_bytes": saved_bytes(model, x, y)}


# ----------------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory-model", default="sonet", choices=["sonet", "soblock", "none"])
    ap.add_argument("--memory-width", type=int, default=32)
    ap.add_argument("--quick", action="store_true",
                    help="batch 20, 16 channels, 16x16, 3 repeats, memory model width 8 (a smoke run)")
    ap.add_argument("--_memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child is not None:
        print(json.dumps(_memory_child(json.loads(args._memory_child))))
        return
    if args.quick:
        args.batch, args.channels, args.size, args.repeats, args.memory_width = 20, 16, 16, 3, 8
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.process_time

    shape = (args.batch, args.channels, args.size, args.size)
    x = inputs(shape, device)
    models = {label: block(s, args.channels, device) for label, s in TIME_CONFIGS}
    nfes = {}
    for label, m in models.items():  # warm-up, and the NFE of one pass (deterministic for a fixed input)
        nfes[label] = counted_pass(m, x)
        one_pass(m, x)
    times = {label: [] for label in models}
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for label in order:
            sync()
            t = clock()
            one_pass(models[label], x)
            sync()
            times[label].append(clock() - t)
    peer = times["BasicBlock"]
    print(f"device {device}, torch {torch.__version__}, {args.threads} torch thread(s), "
          f"{'wall' if cuda else 'process CPU'} time, {args.repeats} repeats (median)")
    print(f"\n1. one forward + backward (to parameters and input), input {tuple(shape)}")
    print(f"   {'block':28s} {'time':>10s}  {'/ BasicBlock':>12s}  {'NFE fwd':>7s}  {'NFE bwd':>7s}")
    for label in models:
        ratio = statistics.median(a / b for a, b in zip(times[label], peer))
        f, b = nfes[label]
        nf = "-" if label == "BasicBlock" else str(f)
        nb = "-" if label == "BasicBlock" else str(b)
        print(f"   {label:28s} {statistics.median(times[label]) * 1e3:8.1f} ms  {ratio:12.2f}  {nf:>7s}  {nb:>7s}")

    whats = [("block", f"skew block, input {tuple(shape)}")]
    if args.memory_model != "none":
        whats.append((args.memory_model, f"{args.memory_model} width {args.memory_width}, input "
                      f"({args.batch}, 3, {args.size}, {args.size})"))
    live = "torch.cuda.max_memory_allocated" if cuda else "profiler allocator events"
    print(f"\n2. peak memory of one forward + backward, dopri5 tol 0.1: backprop through the solver vs adjoint\n"
          f"   live tensors: {live}" + ("" if cuda else "; RSS: VmHWM - VmRSS of a fresh subprocess per row"))
    print(f"   {'what':44s} {'gradient':9s} {'live tensors':>12s}  {'RSS':>10s}  {'saved for bwd':>13s}  "
          f"{'NFE fwd/bwd':>11s}")
    for what, desc in whats:
        res = {}
        for adjoint in (False, True):
            spec = dict(what=what, adjoint=adjoint, batch=args.batch, channels=args.channels, size=args.size,
                        width=args.memory_width, threads=args.threads)
            res[adjoint] = r = memory_cuda(spec, device) if cuda else memory_cpu(spec)
            rss = "-" if r["rss_bytes"] is None else f"{r['rss_bytes'] / 2**20:6.1f} MiB"
            if r["rss_bytes"] is not None and not r["rss_valid"]:
                rss = ">=" + rss.strip()
            nfe = f"{r['nfe'][0]}/{r['nfe'][1]}"
            print(f"   {desc:44s} {'adjoint' if adjoint else 'backprop':9s} {r['live_bytes'] / 2**20:8.1f} MiB  "
                  f"{rss:>10s}  {r['saved_bytes'] / 2**20:9.1f} MiB  {nfe:>11s}")
        div = lambda key: res[False][key] / max(res[True][key], 1)  # noqa: E731
        ratio = f"   -> backprop / adjoint: live tensors {div('live_bytes'):.2f}x"
        if not cuda:
            ratio += f", RSS {div('rss_bytes'):.2f}x"
        print(ratio + f", saved for bwd {div('saved_bytes'):.1f}x")


if __name__ == "__main__":
    main()
