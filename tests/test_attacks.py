"""The attack suite on small models trained here in seconds on scikit-learn's bundled digits (8x8, scaled to [0, 1]):
library wrappers agree with their libraries, hand-written attacks are at least as strong as library PGD, nothing
leaves the eps-ball or the box, models are attacked in eval mode, model calls are times to success, minimal
distances are consistent with PGD, and the worst case over attacks is their OR."""

import pytest
import torch
from torch import nn

import advrep.lipreg.evasive  # noqa: F401  (registers evasive_cw: the generic contract tests cover every attack)
from advrep.attacks import (ATTACKS, GamaPGD, eval_mode, lp_norm, maximize, minimal_distance,
                            robust_accuracy_curve, run_attack, worst_case)
from conftest import digits01

EPS = {"linf": 0.1, "l2": 0.5}

# small budgets so that every attack runs in well under a second on the MLP
FAST = {
    "pgd": {"steps": 5},
    "fgsm": {},
    "ifgsm": {"steps": 5},
    "cw_linf": {"steps": 5},
    "gama_pgd": {"steps": 10, "lam_steps": 3, "decay_at": (6, 8)},
    "cw_l2": {"binary_search_steps": 2, "steps": 20},
    "boundary": {"steps": 30, "init_steps": 10},
    "spsa": {"nb_iter": 2, "nb_sample": 16, "max_batch_size": 16},
    "square": {"n_queries": 50},
    "autoattack": {"paper": False},
    "bpda_pgd": {"steps": 5},
    "evasive_cw": {"binary_search_steps": 2, "steps": 20},
}
HAND_WRITTEN = ("pgd", "fgsm", "ifgsm", "cw_linf", "gama_pgd")


def _fit(make, x, y, steps, lr=1e-2, seed=0, adversarial_eps=0.0):
    """Full-batch Adam; with ``adversarial_eps`` > 0, PGD adversarial training (3 steps, L-inf) built on the same
    core.maximize the attacks use."""
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        xs = x
        if adversarial_eps:
            with eval_mode(model):
                xs = maximize(lambda z: nn.functional.cross_entropy(model(z), y, reduction="none"), x,
                              eps=adversarial_eps, alpha=adversarial_eps * 0.4, steps=3)
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs), y).backward()
        opt.step()
    return model.eval()


def _mlp(hidden=64):
    return lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def digits():
    x, y = digits01()
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.fixture(scope="module")
def mlp(digits):
    xtr, ytr, xte, yte = digits
    model = _fit(_mlp(), xtr, ytr, steps=300)
    with torch.no_grad():
        assert (model(xte).argmax(1) == yte).float().mean() > 0.9
    return model


@pytest.fixture(scope="module")
def robust_mlp(digits):
    """PGD-trained at eps = 0.1: less confident, the kind of model GAMA is made to evaluate."""
    xtr, ytr, xte, yte = digits
    model = _fit(_mlp(128), xtr, ytr, steps=150, adversarial_eps=0.1)
    with torch.no_grad():
        assert (model(xte).argmax(1) == yte).float().mean() > 0.85
    return model


@pytest.fixture(scope="module")
def batch(digits):
    return digits[2][:200], digits[3][:200]


@pytest.fixture(scope="module")
def mixed(mlp, digits):
    """32 test samples, 4 of them misclassified by ``mlp``."""
    x, y = digits[2], digits[3]
    ok = _correct(mlp, x, y)
    idx = torch.cat([ok.nonzero().squeeze(1)[:28], (~ok).nonzero().squeeze(1)[:4]])
    return x[idx], y[idx]


def _correct(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def _robust_acc(model, xa, y):
    with torch.no_grad():
        return (model(xa).argmax(1) == y).float().mean().item()


def _success(model, xa, y):
    with torch.no_grad():
        return model(xa).argmax(1) != y


# ---------------------------------------------------------------- wrappers agree with their libraries


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_torchattacks(mlp, batch, norm):
    import torchattacks

    x, y = batch
    eps = EPS[norm]
    lib = (torchattacks.PGD if norm == "linf" else torchattacks.PGDL2)
    kw = dict(eps=eps, alpha=eps / 4, steps=10)
    ours = run_attack("pgd", mlp, x, y, norm=norm, random_start=False, **kw)
    theirs = _success(mlp, lib(mlp, random_start=False, **kw)(x, y), y)
    assert abs(ours.success.float().mean() - theirs.float().mean()) <= 0.02
    assert (theirs & ~ours.success).sum() <= 1  # same iterates; ours keeps the first success, so it is a superset
    assert 0.2 < theirs.float().mean() < 0.9  # the comparison is not trivial
    # random starts: statistically equal (different random draws)
    ours_r = run_attack("pgd", mlp, x, y, norm=norm, **kw)
    torch.manual_seed(0)
    theirs_r = _success(mlp, lib(mlp, random_start=True, **kw)(x, y), y)
    assert abs(ours_r.success.float().mean() - theirs_r.float().mean()) <= 0.05


def test_fgsm_matches_torchattacks_and_foolbox(mlp, batch):
    import foolbox as fb
    import torchattacks

    x, y = batch
    ours = run_attack("fgsm", mlp, x, y, eps=EPS["linf"])
    theirs = _success(mlp, torchattacks.FGSM(mlp, eps=EPS["linf"])(x, y), y)
    assert (ours.success != theirs).sum() <= 1
    assert (ours.model_calls[ours.success & _correct(mlp, x, y)] == 2).all()  # gradient + check
    # L2: the fast gradient method, foolbox's L2FastGradientAttack
    ours2 = run_attack("fgsm", mlp, x, y, eps=EPS["l2"], norm="l2")
    _, clipped, ok = fb.attacks.L2FastGradientAttack(random_start=False)(
        fb.PyTorchModel(mlp, bounds=(0, 1)), x, y, epsilons=EPS["l2"])
    assert (ours2.success != ok).sum() <= 1
    assert 0.1 < ok.float().mean() < 0.9


def test_ifgsm_matches_torchattacks_bim(mlp, batch):
    import torchattacks

    x, y = batch
    eps = EPS["linf"]
    ours = run_attack("ifgsm", mlp, x, y, eps=eps)  # paper defaults: alpha 1/255, min(255 eps + 4, 1.25 * 255 eps)
    steps = int(min(eps * 255 + 4, 1.25 * eps * 255))
    theirs = _success(mlp, torchattacks.BIM(mlp, eps=eps, alpha=1 / 255, steps=steps)(x, y), y)
    assert abs(ours.success.float().mean() - theirs.float().mean()) <= 0.02
    assert (theirs & ~ours.success).sum() <= 1
    assert ours.model_calls.max() == steps + 1


def test_cw_l2_matches_foolbox(mlp, batch):
    import foolbox as fb

    x, y = batch[0][:64], batch[1][:64]
    params = dict(binary_search_steps=3, steps=50)
    ours = run_attack("cw_l2", mlp, x, y, eps=EPS["l2"], norm="l2", **params)
    ok = _correct(mlp, x, y)
    _, clipped, theirs = fb.attacks.L2CarliniWagnerAttack(**params)(
        fb.PyTorchModel(mlp, bounds=(0, 1)), x[ok], y[ok], epsilons=EPS["l2"])
    mine = ours.success[ok]
    assert (theirs & ~mine).sum() <= 1
    assert abs(mine.float().mean() - theirs.float().mean()) <= 0.05
    assert theirs.float().mean() > 0.2


def test_spsa_matches_torchattacks(mlp, batch):
    import torchattacks

    x, y = batch[0][:48], batch[1][:48]
    params = dict(nb_iter=5, nb_sample=32, max_batch_size=32)
    ours = run_attack("spsa", mlp, x, y, eps=EPS["linf"], seed=3, **params)
    ok = _correct(mlp, x, y)
    torch.manual_seed(3)
    adv = torchattacks.SPSA(mlp, eps=EPS["linf"], **params)(x[ok], y[ok])
    theirs = _success(mlp, adv, y[ok])
    assert torch.equal(ours.success[ok], theirs)
    assert theirs.any()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_matches_torchattacks(mlp, batch, norm):
    import torchattacks

    x, y = batch[0][:64], batch[1][:64]
    ours = run_attack("square", mlp, x, y, eps=EPS[norm], norm=norm, n_queries=300, seed=1)
    ok = _correct(mlp, x, y)
    adv = torchattacks.Square(mlp, norm={"linf": "Linf", "l2": "L2"}[norm], eps=EPS[norm], n_queries=300,
                              seed=1)(x[ok], y[ok])
    theirs = _success(mlp, adv, y[ok])
    assert torch.equal(ours.success[ok], theirs)
    assert theirs.any()
    # exact per-sample query counts: at most the budget (+1 initial query), fewer for broken samples
    assert ours.model_calls.max() <= 301
    assert ours.model_calls[ours.success & ok].float().mean() < 300


def test_autoattack_matches_torchattacks(mlp, batch):
    import torchattacks

    x, y = batch[0][:48], batch[1][:48]
    ours = run_attack("autoattack", mlp, x, y, eps=EPS["linf"], paper=False, seed=0)
    ok = _correct(mlp, x, y)
    adv = torchattacks.AutoAttack(mlp, norm="Linf", eps=EPS["linf"], version="standard", n_classes=10,
                                  seed=0)(x[ok], y[ok])
    theirs = _success(mlp, adv, y[ok])
    assert (theirs & ~ours.success[ok]).sum() == 0
    assert abs(ours.success[ok].float().mean() - theirs.float().mean()) <= 0.03
    pgd = run_attack("pgd", mlp, x, y, eps=EPS["linf"], steps=20)
    assert ours.success.float().mean() >= pgd.success.float().mean() - 0.03


def test_autoattack_budget_overrides_reach_its_components(mlp, batch, monkeypatch):
    """steps / square_queries cut the budget of APGD, APGD-T, FAB and Square (smoke scale): the components run
    with them (spied on), and the per-sample query count stays within the smaller budget."""
    import torchattacks

    seen = {}
    multi = torchattacks.attacks.autoattack.MultiAttack
    real = multi.forward

    def spy(self, images, labels):
        for sub in self.attacks:
            seen[type(sub).__name__] = getattr(sub, "n_queries" if type(sub).__name__ == "Square" else "steps")
        return real(self, images, labels)

    monkeypatch.setattr(multi, "forward", spy)
    x, y = batch[0][:24], batch[1][:24]
    r = run_attack("autoattack", mlp, x, y, eps=EPS["linf"], steps=3, square_queries=7, seed=0)
    assert seen == {"APGD": 3, "APGDT": 3, "FAB": 3, "Square": 7}
    full = run_attack("autoattack", mlp, x, y, eps=EPS["linf"], paper=False, seed=0)
    assert (r.success & ~full.success).sum() <= 2  # the cut attack finds (almost) nothing the full one misses
    with pytest.raises(ValueError, match="square_queries"):
        run_attack("autoattack", mlp, x, y, eps=EPS["linf"], square_queries=0)


def test_boundary_matches_foolbox(mlp, batch):
    import foolbox as fb

    x, y = batch[0][:24], batch[1][:24]
    eps = 1.5  # decision-based: it needs ~1000 steps to get this close
    ours = run_attack("boundary", mlp, x, y, eps=eps, norm="l2", steps=1000, seed=5)
    ok = _correct(mlp, x, y)
    torch.manual_seed(5)
    _, clipped, theirs = fb.attacks.BoundaryAttack(steps=1000)(fb.PyTorchModel(mlp, bounds=(0, 1)), x[ok], y[ok],
                                                              epsilons=eps)
    assert (theirs & ~ours.success[ok]).sum() == 0
    assert abs(ours.success[ok].float().mean() - theirs.float().mean()) <= 0.05
    assert theirs.any()


# ---------------------------------------------------------------- hand-written attacks


@pytest.mark.parametrize("eps", [0.1, 0.15, 0.2])
def test_hand_written_attacks_reach_library_pgd(robust_mlp, digits, eps):
    import torchattacks

    x, y = digits[2], digits[3]  # all 597 test images: random starts differ, so keep the noise down
    torch.manual_seed(0)
    lib = _success(robust_mlp, torchattacks.PGD(robust_mlp, eps=eps, alpha=eps / 4, steps=20)(x, y), y)
    lib = lib.float().mean()
    assert 0.1 < lib < 0.95
    gama = run_attack("gama_pgd", robust_mlp, x, y, eps=eps)
    assert gama.success.float().mean() >= lib - 0.03
    pgd = run_attack("pgd", robust_mlp, x, y, eps=eps, steps=20)
    assert pgd.success.float().mean() >= lib - 0.03
    # the CW margin is a different loss from torchattacks' cross-entropy: a little more slack
    cw = run_attack("cw_linf", robust_mlp, x, y, eps=eps)
    assert cw.success.float().mean() >= lib - 0.05


def test_gama_facts_and_bernoulli_start(mlp, robust_mlp, batch):
    x, y = batch[0][:64], batch[1][:64]
    eps = 0.1
    g = GamaPGD(mlp, eps=eps)
    assert (g.steps, g.lam, g.lam_steps, g.decay_at, g.decay) == (100, 50.0, 25, (60, 85), 10.0)
    # step size 2 eps, /10 at step 60 and again at 85 (GAMA/GAMA_PGD.py: eps_iter=16/255 for 8/255, SCHED=[60,85])
    assert [g.step_size(t, eps) for t in (0, 59, 60, 84, 85, 99)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    # lambda: 50 at step 0, lowered by 50/25 per step, 0 from step 25 on
    assert [g.relaxation_weight(t) for t in (0, 1, 24, 25, 26, 99)] == pytest.approx([50, 48, 2, 0, 0, 0])
    seen = []
    hook = mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    try:
        GamaPGD(mlp, eps=eps, steps=3)(x, y)
    finally:
        hook.remove()
    ok = _correct(mlp, x, y)
    start, x0 = seen[1], x[ok]  # seen[0] is the clean check
    d = start - x0
    up, down = (x0 + eps).clamp(0, 1) - x0, (x0 - eps).clamp(0, 1) - x0
    assert torch.all(torch.isclose(d, up, atol=1e-6) | torch.isclose(d, down, atol=1e-6))  # +-eps, box-clamped
    free = (x0 > eps) & (x0 < 1 - eps)
    assert 0.4 < (d[free] > 0).float().mean() < 0.6
    # with the paper's budget, at a smaller and a larger eps: at least torchattacks' PGD-10 (2.5 eps / 10 steps)
    import torchattacks

    for e in (0.05, 0.15):
        full = run_attack("gama_pgd", robust_mlp, batch[0], batch[1], eps=e)
        torch.manual_seed(0)
        adv = torchattacks.PGD(robust_mlp, eps=e, alpha=e / 4, steps=10)(*batch)
        assert full.success.float().mean() >= _success(robust_mlp, adv, batch[1]).float().mean() - 0.02
    # the relaxation term changes the trajectory (lambda = 0 is plain softmax-margin PGD)
    plain = run_attack("gama_pgd", mlp, x, y, eps=eps, steps=30, lam=0.0)
    guided = run_attack("gama_pgd", mlp, x, y, eps=eps, steps=30)
    assert not torch.equal(plain.x_adv, guided.x_adv)


def test_model_calls_are_times_to_success(mlp, batch):
    x, y = batch[0][:100], batch[1][:100]
    eps, k = EPS["linf"], 8
    ok = _correct(mlp, x, y)
    full = run_attack("pgd", mlp, x, y, eps=eps, steps=k, alpha=eps / 4, random_start=False)
    first = torch.full((len(x),), -1)
    for t in range(1, k + 1):  # PGD with t steps ends at the t-th iterate; its success is monotone in t
        s = run_attack("pgd", mlp, x, y, eps=eps, steps=t, alpha=eps / 4, random_start=False).success
        first[(first < 0) & s & ok] = t
    assert torch.equal(full.model_calls[~ok], torch.zeros((~ok).sum(), dtype=torch.long))
    broken = first > 0
    assert broken.any() and (~broken & ok).any()
    assert torch.equal(full.model_calls[broken], first[broken] + 1)  # forwards at iterates 0..t
    assert (full.model_calls[ok & ~broken] == k + 1).all()
    two = run_attack("pgd", mlp, x, y, eps=eps, steps=k, restarts=2)
    assert (two.model_calls[ok & ~two.success] == 2 * (k + 1)).all()


def test_step_size_schedules(mlp, batch):
    x, y = batch[0][:100], batch[1][:100]
    eps = EPS["linf"]
    const = run_attack("pgd", mlp, x, y, eps=eps, steps=6, alpha=eps / 3)
    as_list = run_attack("pgd", mlp, x, y, eps=eps, steps=6, alpha=[eps / 3] * 6)
    as_fn = run_attack("pgd", mlp, x, y, eps=eps, steps=6, alpha=lambda t: eps / 3)
    assert torch.equal(const.x_adv, as_list.x_adv) and torch.equal(const.x_adv, as_fn.x_adv)
    # one step of eps then zero steps: FGSM's point
    fgsm_like = run_attack("pgd", mlp, x, y, eps=eps, steps=4, alpha=[eps, 0, 0, 0], random_start=False)
    fgsm = run_attack("fgsm", mlp, x, y, eps=eps)
    assert torch.equal(fgsm_like.success, fgsm.success)
    assert torch.allclose(fgsm_like.x_adv, fgsm.x_adv)
    decaying = run_attack("pgd", mlp, x, y, eps=eps, steps=10, alpha=lambda t: eps / 2 * 0.8 ** t)
    assert decaying.success.float().mean() >= fgsm.success.float().mean() - 0.02
    with pytest.raises(ValueError):
        run_attack("pgd", mlp, x, y, eps=eps, steps=6, alpha=[eps] * 3)


# ---------------------------------------------------------------- every attack: feasibility, eval mode, sanity


def _cases():
    return [(name, norm) for name in sorted(ATTACKS) for norm in ATTACKS[name].norms]


@pytest.mark.parametrize("name,norm", _cases())
def test_no_attack_leaves_the_ball_or_the_box(mlp, mixed, name, norm):
    x, y = mixed
    eps = EPS[norm]
    forwarded = []
    hook = mlp.register_forward_hook(lambda m, i, o: forwarded.append(i[0].detach()))
    try:
        r = run_attack(name, mlp, x, y, eps=eps, norm=norm, **FAST[name])
    finally:
        hook.remove()
    assert r.x_adv.shape == x.shape and r.success.shape == r.model_calls.shape == y.shape
    assert (lp_norm(r.x_adv - x, norm) <= eps * (1 + 1e-6) + 1e-6).all()
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.equal(r.success, _success(mlp, r.x_adv, y))
    wrong = ~_correct(mlp, x, y)
    assert wrong.any() and r.success[wrong].all() and (r.model_calls[wrong] == 0).all()
    assert torch.equal(r.x_adv[wrong], x[wrong])
    assert (r.model_calls[~wrong] > 0).all()
    if name in HAND_WRITTEN:  # these never even query the model outside the ball and the box
        for z in forwarded:
            assert z.min() >= 0 and z.max() <= 1
            if z.shape[0] == len(x):
                assert (lp_norm(z - x, norm) <= eps * (1 + 1e-6) + 1e-6).all()


@pytest.fixture(scope="module")
def bn_model(digits):
    xtr, ytr, _, _ = digits
    return _fit(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                      nn.Dropout(0.3), nn.Linear(64, 10)), xtr, ytr, steps=150)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_run_in_eval_mode_and_restore_it(bn_model, batch, name):
    x, y = batch[0][:24], batch[1][:24]
    norm = ATTACKS[name].norms[0]
    modes = []
    hook = bn_model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    bn = bn_model[2]
    stats = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    bn_model.train()
    try:
        run_attack(name, bn_model, x, y, eps=EPS[norm], norm=norm, **FAST[name])
    finally:
        hook.remove()
    assert modes and not any(modes)
    assert bn_model.training and bn.training  # restored
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    bn_model.eval()


@pytest.fixture(scope="module")
def random_label_model(digits):
    xtr, _, _, _ = digits
    g = torch.Generator().manual_seed(0)
    x = xtr[:200]
    y = torch.randint(0, 10, (200,), generator=g)
    model = _fit(_mlp(256), x, y, steps=600, lr=5e-3)
    fitted = _correct(model, x, y)
    assert fitted.float().mean() > 0.8  # memorised
    return model, x[fitted], y[fitted]


@pytest.mark.parametrize("name,params", [("pgd", {}), ("fgsm", {}), ("ifgsm", {"steps": 10, "alpha": 0.1}),
                                         ("cw_linf", {}), ("gama_pgd", {}), ("square", {"n_queries": 200})])
def test_random_label_model_falls_at_eps_one(random_label_model, name, params):
    model, x, y = random_label_model
    r = run_attack(name, model, x, y, eps=1.0, **params)
    assert r.success.float().mean() >= 0.95


def test_run_attack_rejects_bad_calls(mlp, batch):
    x, y = batch[0][:8], batch[1][:8]
    with pytest.raises(KeyError):
        run_attack("nope", mlp, x, y, eps=0.1)
    with pytest.raises(ValueError):
        run_attack("gama_pgd", mlp, x, y, eps=0.1, norm="l2")
    with pytest.raises(ValueError):
        run_attack("pgd", mlp, x * 2, y, eps=0.1)
    state = torch.get_rng_state()
    run_attack("pgd", mlp, x, y, eps=0.1, seed=123)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone
    a = run_attack("pgd", mlp, x, y, eps=0.1, seed=7)
    b = run_attack("pgd", mlp, x, y, eps=0.1, seed=7)
    assert torch.equal(a.x_adv, b.x_adv)


# ---------------------------------------------------------------- minimal distances, curves, worst case


@pytest.mark.parametrize("norm,method", [("linf", "ramp"), ("l2", "ramp"), ("linf", "bisection"), ("l2", "bisection"),
                                         ("linf", "fmn")])
def test_minimal_distance_is_consistent_with_pgd(mlp, batch, norm, method):
    x, y = batch[0][:120], batch[1][:120]
    max_eps = 3 * EPS[norm]
    d = minimal_distance(mlp, x, y, norm, max_eps=max_eps, method=method)
    wrong = ~_correct(mlp, x, y)
    assert (d[wrong] == 0).all() and (d[~wrong] > 0).all()
    fin = torch.isfinite(d) & ~wrong
    assert fin.float().mean() > 0.5 and (d[fin] <= max_eps + 1e-6).all()
    # PGD slightly above each sample's distance breaks (nearly) all of them
    r = run_attack("pgd", mlp, x[fin], y[fin], eps=d[fin] * 1.1, norm=norm, steps=20)
    assert r.success.float().mean() >= 0.95
    # the curve: non-increasing in eps, equal to the fraction with distance > eps, clean accuracy at eps = 0
    eps_list = torch.linspace(0, max_eps, 10).tolist()
    curve = robust_accuracy_curve(d, eps_list)
    assert (curve[1:] <= curve[:-1]).all()
    for e, c in zip(eps_list, curve):
        assert c == pytest.approx((d > e).float().mean().item())
    assert curve[0] == pytest.approx((~wrong).float().mean().item())
    # and it tracks fixed-eps PGD
    pgd_acc = 1 - run_attack("pgd", mlp, x, y, eps=EPS[norm], norm=norm).success.float().mean()
    assert robust_accuracy_curve(d, [EPS[norm]])[0] == pytest.approx(pgd_acc.item(), abs=0.08)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_minimal_distance_of_a_linear_classifier(norm):
    # two classes, logits (0, w.x + b): the minimal distance is |w.x + b| / ||w||_dual, reachable inside the box
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(16), w]))
        lin.bias.copy_(torch.tensor([0.0, 0.3]))
    model = nn.Sequential(nn.Flatten(), lin)
    x = 0.45 + 0.1 * torch.rand(64, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
        f = x.flatten(1) @ w + 0.3
    dual = w.abs().sum() if norm == "linf" else w.norm()
    true = f.abs() / dual
    max_eps = float(true.max()) * 1.5
    assert max_eps < 0.45  # the box never binds
    d = minimal_distance(model, x, y, norm, max_eps=max_eps, steps=40, refine=8)
    assert (d >= true - 1e-5).all()  # never below the truth: every distance is a real adversarial example
    assert (d <= true + max_eps / 200 + 1e-5).all()  # and close to it (ramp increment / 2**refine)


def test_worst_case_is_the_or_of_the_attacks(mlp, batch):
    x, y = batch[0][:120], batch[1][:120]
    eps = EPS["linf"]
    attacks = [("pgd", {"steps": 3, "alpha": eps / 8}), ("pgd", {"steps": 3, "alpha": eps / 2}),
               ("fgsm", {}), ("pgd", {"steps": 5, "alpha": 2 * eps, "seed": 4})]
    single = [run_attack(n, mlp, x, y, eps=eps, **p) for n, p in attacks]
    union = torch.stack([s.success for s in single]).any(0)
    assert union.float().mean() > max(s.success.float().mean() for s in single)  # the OR is not trivial here
    wc, index = worst_case(mlp, x, y, attacks, eps=eps, skip_broken=False, return_index=True)
    assert torch.equal(wc.success, union)
    for k, s in enumerate(single):
        mine = index == k
        assert torch.equal(wc.x_adv[mine], s.x_adv[mine])  # the breaking attack's x_adv is kept
        before = sum(single[j].model_calls for j in range(k))
        assert torch.equal(wc.model_calls[mine], (before + s.model_calls)[mine])
        assert (s.success[mine]).all() and not any(single[j].success[mine].any() for j in range(k))
    assert torch.equal(wc.model_calls[~union], sum(s.model_calls for s in single)[~union])
    assert (lp_norm(wc.x_adv - x, "linf") <= eps + 1e-6).all()
    # skipping broken samples: same OR (deterministic attacks), each later attack sees fewer samples
    det = [("pgd", {"steps": 3, "alpha": eps / 8, "random_start": False}), ("fgsm", {}),
           ("ifgsm", {"steps": 4})]
    det_union = torch.stack([run_attack(n, mlp, x, y, eps=eps, **p).success for n, p in det]).any(0)
    fast = worst_case(mlp, x, y, det, eps=eps)
    assert (fast.success != det_union).sum() <= 1
    assert torch.equal(fast.success, _success(mlp, fast.x_adv, y))


class _ForwardLog(nn.Module):
    """Records the batch of every forward call (to count the clean checks: calls on exactly ``x``)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, z):
        self.inputs.append(z.detach().clone())
        return self.model(z)

    def clean_calls(self, x):
        return sum(1 for z in self.inputs if z.shape == x.shape and torch.equal(z, x))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "gama_pgd", "square"])
def test_a_given_clean_verdict_saves_the_clean_check_and_changes_nothing(mlp, mixed, name):
    x, y = mixed
    ok = _correct(mlp, x, y)
    params = {**FAST[name], "seed": 3}
    log = _ForwardLog(mlp)
    ref = run_attack(name, log, x, y, eps=EPS["linf"], **params)
    n_ref, clean_ref = len(log.inputs), log.clean_calls(x)
    log.inputs.clear()
    got = run_attack(name, log, x, y, eps=EPS["linf"], clean_correct=ok, **params)
    assert clean_ref == 1 and log.clean_calls(x) == 0  # the clean pass is the one forward saved
    assert len(log.inputs) == n_ref - 1
    assert torch.equal(got.x_adv, ref.x_adv) and torch.equal(got.success, ref.success)
    assert torch.equal(got.model_calls, ref.model_calls)
    assert got.success[~ok].all() and (got.model_calls[~ok] == 0).all()


def test_clean_verdict_is_checked_for_shape_and_type(mlp, batch):
    x, y = batch[0][:8], batch[1][:8]
    for bad in (torch.ones(7, dtype=torch.bool), torch.ones(8, dtype=torch.long)):
        with pytest.raises(ValueError, match="clean_correct"):
            run_attack("pgd", mlp, x, y, eps=0.1, clean_correct=bad)


def test_worst_case_takes_the_clean_verdict_once(mlp, mixed):
    x, y = mixed
    attacks = [("pgd", {"steps": 3}), ("fgsm", {}), ("pgd", {"steps": 3, "alpha": 0.05, "seed": 2})]
    log = _ForwardLog(mlp)
    wc = worst_case(log, x, y, attacks, eps=EPS["linf"], skip_broken=False)
    assert log.clean_calls(x) == 1
    singles = [run_attack(n, mlp, x, y, eps=EPS["linf"], **p) for n, p in attacks]
    assert torch.equal(wc.success, torch.stack([s.success for s in singles]).any(0))
    log.inputs.clear()
    worst_case(log, x, y, attacks, eps=EPS["linf"], clean_correct=_correct(mlp, x, y))
    assert log.clean_calls(x) == 0


def test_boundary_finds_a_start_where_noise_blending_fails(mlp, batch, monkeypatch):
    """On adversarially trained models foolbox's noise-blending initialisation can fail; the wrapper then starts
    from the nearest other-class image of the batch moved towards x by bisection, so those samples are attacked."""
    import foolbox as fb

    x, y = batch[0][:24], batch[1][:24]
    ok = _correct(mlp, x, y)
    real_run = fb.attacks.LinearSearchBlendedUniformNoiseAttack.run
    monkeypatch.setattr(fb.attacks.LinearSearchBlendedUniformNoiseAttack, "run",
                        lambda self, model, inputs, criterion, **kw: inputs)  # no start for anybody
    attack = ATTACKS["boundary"](mlp, eps=100.0, norm="l2", steps=50)
    far = attack(x, y)  # eps so large that any adversarial start counts: every correct sample must break
    assert attack.no_start == 0 and far.success.all()
    assert torch.equal(far.success, _success(mlp, far.x_adv, y))
    # the bisection brought the start closer than the other-class image it began from
    flat = x.flatten(1)
    other = torch.cdist(flat, flat).masked_fill(y.view(-1, 1) == y.view(1, -1), float("inf")).amin(1)
    assert (lp_norm(far.x_adv - x, "l2")[ok] < other[ok]).all()
    # a batch of one class has no other-class image: the sample stays unbroken, and the wrapper says so
    one = y == y[ok][0]
    attack = ATTACKS["boundary"](mlp, eps=100.0, norm="l2", steps=20)
    r = attack(x[one], y[one])
    assert attack.no_start == int((ok & one).sum()) and not r.success[ok[one]].any()
    # with a fair radius it is an attack like the one from foolbox's own start (same order of success)
    fallback = run_attack("boundary", mlp, x, y, eps=1.5, norm="l2", steps=300, seed=5)
    monkeypatch.setattr(fb.attacks.LinearSearchBlendedUniformNoiseAttack, "run", real_run)
    normal = run_attack("boundary", mlp, x, y, eps=1.5, norm="l2", steps=300, seed=5)
    assert fallback.success[ok].any() and abs(fallback.success.float().mean() - normal.success.float().mean()) <= 0.2


def test_cw_l2_leaves_samples_it_cannot_break_at_x(mlp, batch):
    """foolbox returns an all-zero image where CW found no adversarial at all; the wrapper keeps x there (projected
    onto the ball, the black image would be a point at distance eps that means nothing)."""
    import foolbox as fb

    x, y = batch[0][:64], batch[1][:64]
    params = dict(binary_search_steps=3, steps=20)
    r = run_attack("cw_l2", mlp, x, y, eps=EPS["l2"], norm="l2", **params)
    ok = _correct(mlp, x, y)
    raw = fb.attacks.L2CarliniWagnerAttack(**params).run(fb.PyTorchModel(mlp, bounds=(0, 1)), x[ok],
                                                         fb.criteria.Misclassification(y[ok]))
    nothing = raw.flatten(1).abs().amax(1) == 0  # foolbox's placeholder: no adversarial found
    assert nothing.any() and (~nothing).any()
    rows = ok.nonzero().squeeze(1)[nothing]
    assert torch.equal(r.x_adv[rows], x[rows]) and not r.success[rows].any()
