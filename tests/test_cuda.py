"""The CUDA paths: device and mixed precision chosen automatically, training with a resume, attacks on the GPU.

Skipped on machines without a CUDA device (this project's CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.  On CUDA, kernels are not bitwise deterministic, so results are compared
with the CPU's (or with an uninterrupted run) up to small tolerances, never bit for bit.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from advrep.attacks import lp_norm, run_attack, worst_case
from advrep.train import fit, resolve_amp, resolve_device
from advrep.train.checkpoint import load_checkpoint
from conftest import Killed, ce_input_grad, digits01, killed_at

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def digits():
    return digits01()


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 16, 10))


def loader(x, y, batch_size=64, shuffle=True):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def test_auto_device_and_mixed_precision_choose_cuda():
    assert resolve_device("auto").type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_amp("auto", CUDA) is expected
    assert resolve_amp("fp16", CUDA) is torch.float16 and resolve_amp("off", CUDA) is None


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_fit_on_cuda_trains_records_amp_and_resumes(digits, tmp_path, amp):
    x, y = digits[0][:512], digits[1][:512]
    pgd = {"name": "pgd_at", "eps": 0.1, "alpha": 0.04, "steps": 3}

    def run(tmp, objective):
        return fit(cnn(seed=1), loader(x, y), objective=objective, epochs=3, seed=0, checkpoint_dir=tmp,
                   device="auto", amp=amp, progress=False, optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
                   val_loader=loader(x, y, 256, False))

    full = run(tmp_path / "full", pgd)
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[resolve_amp(amp, CUDA)]
    assert full.amp == name and next(full.model.parameters()).device.type == "cuda"
    assert full.history[-1]["loss"] < full.history[0]["loss"] and full.history[-1]["val_acc"] > 0.7
    final = load_checkpoint(full.final, map_location="cpu")  # a GPU checkpoint loads on a CPU-only machine
    assert final["amp"] == name and final["device"].startswith("cuda")
    assert all(t.device.type == "cpu" for t in final["model"].values())
    last = load_checkpoint(full.checkpoint, map_location="cpu")
    assert (last["scaler"] is not None) == (name == "fp16")

    with pytest.raises(Killed):
        run(tmp_path / "cut", killed_at(pgd, epoch=1, batch=3))
    resumed = run(tmp_path / "cut", pgd)
    assert resumed.resumed_from == 1
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:  # same run up to CUDA's non-deterministic reductions
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=5e-2, atol=5e-3), k
    assert resumed.history[-1]["val_acc"] == pytest.approx(full.history[-1]["val_acc"], abs=0.03)


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits[0][:1024], digits[1][:1024]
    torch.manual_seed(0)
    model = cnn(seed=2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), digits[0][1200:1456], digits[1][1200:1456]


@pytest.mark.parametrize("name,params,norm,eps", [
    ("pgd", {"steps": 10}, "linf", 0.1), ("pgd", {"steps": 10}, "l2", 0.6), ("fgsm", {}, "linf", 0.1),
    ("gama_pgd", {"steps": 20, "lam_steps": 5, "decay_at": (12, 16)}, "linf", 0.1),
    ("square", {"n_queries": 200}, "linf", 0.1), ("autoattack", {"paper": False}, "linf", 0.1)])
def test_attacks_on_cuda_are_feasible_exact_and_agree_with_cpu(trained, name, params, norm, eps):
    model, x, y = trained
    cpu = run_attack(name, model, x, y, eps=eps, norm=norm, **params)
    gpu_model = cnn().to(CUDA)
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.eval()
    xg, yg = x.to(CUDA), y.to(CUDA)
    state = torch.cuda.get_rng_state()
    r = run_attack(name, gpu_model, xg, yg, eps=eps, norm=norm, **params)
    assert torch.equal(state, torch.cuda.get_rng_state())  # the caller's CUDA random stream is left alone
    assert r.x_adv.device.type == "cuda" and r.success.device.type == "cuda"
    assert (lp_norm(r.x_adv - xg, norm) <= eps * (1 + 1e-5) + 1e-6).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(r.success, gpu_model(r.x_adv).argmax(1) != yg)  # success is the verdict at x_adv
    assert abs(r.success.float().mean().item() - cpu.success.float().mean().item()) <= 0.05
    assert not gpu_model.training


def test_worst_case_on_cuda(trained):
    model, x, y = trained
    gpu_model = cnn().to(CUDA)
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.eval()
    xg, yg = x.to(CUDA), y.to(CUDA)
    attacks = [("pgd", {"steps": 5, "alpha": 0.01}), ("pgd", {"steps": 5, "alpha": 0.04}), ("fgsm", {})]
    wc = worst_case(gpu_model, xg, yg, attacks, eps=0.1, skip_broken=False)
    single = torch.stack([run_attack(n, gpu_model, xg, yg, eps=0.1, **p).success for n, p in attacks]).any(0)
    assert (wc.success != single).float().mean() <= 0.02  # the OR, up to CUDA non-determinism


def test_fp16_autocast_input_gradient_rescue_on_cuda(trained):
    """The CPU test (tests/test_amp.py) with CUDA's fp16 kernels: a model made over-confident loses most input
    gradients to fp16 underflow; the rescue gives them back with float32's signs."""
    model, x, y = trained
    m = cnn().to(CUDA)
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        m[5].weight.mul_(4)
        m[5].bias.mul_(4)
    m.eval()
    xg, yg = x.to(CUDA), y.to(CUDA)
    with torch.no_grad():
        keep = m(xg).argmax(1) == yg
    xg, yg = xg[keep], yg[keep]

    g32, g16, rescued = (ce_input_grad(m, xg, yg, how) for how in ("fp32", "fp16", "rescued"))
    zero = lambda g: g.flatten(1).abs().amax(1) == 0  # noqa: E731
    lost = zero(g16) & ~zero(g32)
    if not lost.any():
        pytest.skip("this GPU's fp16 kernels kept every gradient of this model (nothing to rescue)")
    assert not (zero(rescued) & ~zero(g32)).any() and torch.isfinite(rescued).all()
    agree = (rescued.sign() == g32.sign()).float().flatten(1).mean(1)
    assert agree[lost].mean() > 0.98
