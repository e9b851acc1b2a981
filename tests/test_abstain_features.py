"""Contrastive feature extraction (advrep.abstain.features): loss vs brute force, augmentation properties, a tiny
training run that learns, bit-identical resume, and the features file's hash check."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advrep.abstain import features as fx
from advrep.abstain.defence import exact_nearest
from advrep.data import load, prepare
from advrep.data.prepared import write_prepared
from advrep.train import CheckpointError, make_objective
from conftest import tamper_npz


def tiny_settings(**kw):
    return dict(fx.PAPER_SETTINGS, **{"width": "tiny", "epochs": 2, "batch_size": 50, "warmup_epochs": 0,
                                      "num_workers": 0, "lr": 0.2, **kw})


# ------------------------------------------------------------------------------------------------------- loss

def brute_force_supcon(z, labels, temperature):
    """Khosla et al. Eq. 2 written anchor by anchor (float64): rows are (sample, view) pairs."""
    b, v, _ = z.shape
    rows = [(i, a) for i in range(b) for a in range(v)]
    cls = [(i if labels is None else int(labels[i])) for i, _ in rows]
    total = 0.0
    for k, (i, a) in enumerate(rows):
        zi = z[i, a].double()
        others = [m for m in range(len(rows)) if m != k]
        denom = sum(math.exp(float(zi @ z[rows[m][0], rows[m][1]].double()) / temperature) for m in others)
        pos = [m for m in others if cls[m] == cls[k]]
        if pos:
            total += -sum(float(zi @ z[rows[p][0], rows[p][1]].double()) / temperature - math.log(denom)
                          for p in pos) / len(pos)
    return total / len(rows)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("n_views", [1, 2, 3])
@pytest.mark.parametrize("supervised", [False, True])
def test_supcon_loss_matches_brute_force(n_views, supervised):
    z = unit(7, n_views, 5, seed=n_views)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3]) if supervised else None
    for t in (0.1, 0.5):
        got = fx.supcon_loss(z, labels, t)
        assert float(got) == pytest.approx(brute_force_supcon(z, labels, t), rel=1e-10, abs=1e-12)
        scaled = fx.supcon_loss(z, labels, t, base_temperature=0.07)
        assert float(scaled) == pytest.approx(float(got) * t / 0.07, rel=1e-12)


def test_simclr_is_nt_xent():
    """labels=None is SimCLR's NT-Xent: cross-entropy of each view against its partner over the other 2B - 1 rows."""
    b, t = 9, 0.5
    z = unit(b, 2, 6, seed=3)
    rows = torch.cat([z[:, 0], z[:, 1]])  # row k and row (k + b) % 2b are the two views of one image
    sim = rows @ rows.T / t
    sim.fill_diagonal_(float("-inf"))
    partner = (torch.arange(2 * b) + b) % (2 * b)
    nt_xent = F.cross_entropy(sim, partner)
    assert float(fx.supcon_loss(z, None, t)) == pytest.approx(float(nt_xent), rel=1e-12)
    # all labels distinct is the same as no labels
    assert float(fx.supcon_loss(z, torch.arange(b) * 3, t)) == pytest.approx(float(nt_xent), rel=1e-12)


def test_supcon_loss_gradient_is_finite_and_nonzero():
    z = unit(5, 2, 4, seed=1).float().requires_grad_(True)
    fx.supcon_loss(F.normalize(z, dim=-1), torch.tensor([0, 0, 1, 1, 2]), 0.1).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- augmentation

@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g)


def test_two_views_shapes_range_and_seed(images):
    aug = fx.TwoViews(32)
    state = torch.get_rng_state()
    a = aug(images, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert a.shape == (6, 2, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert all(not torch.equal(a[i, 0], a[i, 1]) for i in range(len(images)))  # the two views differ
    assert torch.equal(a, aug(images, seed=5))  # same seed -> same views
    assert not torch.equal(a, aug(images, seed=6))
    # per-sample parameters: the same image repeated in a batch gets different views
    rep = aug(images[:1].repeat(4, 1, 1, 1), seed=5)
    assert len({rep[i, 0].sum().item() for i in range(4)}) == 4


def test_two_views_without_randomness_is_identity(images):
    # scale (1, 1) with RandomResizedCrop's ratio range: every attempt fails, the fallback is the whole image
    aug = fx.TwoViews(32, crop_scale=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, flip=False)
    out = aug(images, seed=0)
    assert torch.allclose(out, images[:, None].expand_as(out), atol=1e-6)
    grey = fx.TwoViews(32, gray_p=1.0)(images, seed=0)
    assert torch.equal(grey[:, :, 0], grey[:, :, 1]) and torch.equal(grey[:, :, 1], grey[:, :, 2])


# ------------------------------------------------------------------------------------------------- objectives

def test_objectives_registered_and_compute_the_loss(images):
    simclr, supcon = make_objective("simclr"), make_objective({"name": "supcon", "temperature": 0.2})
    assert isinstance(simclr, fx.SimCLR) and simclr.temperature == fx.TEMPERATURE["simclr"] == 0.5
    assert isinstance(supcon, fx.SupCon) and supcon.temperature == 0.2
    model = fx.build_encoder(fx.check_settings(tiny_settings(), "supcon"), (3, 32, 32), seed=0).eval()
    views = fx.TwoViews(32)(images, seed=1)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    with torch.no_grad():
        loss, logits = supcon(model, views, y, None)
        loss_u, _ = simclr(model, views, y, None)
        z = F.normalize(model.project(views.flatten(0, 1)), dim=1).view(6, 2, -1)
    assert logits is None  # no classifier: the loop records accuracy as NaN
    assert float(loss) == pytest.approx(float(fx.supcon_loss(z, y, 0.2)) * 0.2 / fx.BASE_TEMPERATURE, rel=1e-5)
    assert float(loss_u) == pytest.approx(float(fx.supcon_loss(z, None, 0.5)) * 0.5 / fx.BASE_TEMPERATURE, rel=1e-5)


def test_settings_checked():
    with pytest.raises(ValueError, match="missing.*gray_p"):
        fx.check_settings({k: v for k, v in fx.PAPER_SETTINGS.items() if k != "gray_p"}, "simclr")
    with pytest.raises(ValueError, match="unknown.*temp"):
        fx.check_settings({**fx.PAPER_SETTINGS, "temp": 0.5}, "simclr")
    with pytest.raises(ValueError, match="method"):
        fx.check_settings(fx.PAPER_SETTINGS, "byol")
    assert fx.check_settings(fx.PAPER_SETTINGS, "supcon")["temperature"] == 0.1


# ---------------------------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare("digits32", root / "digits32.npz", root=root)
    return load(root / "digits32.npz")


def one_nn_accuracy(train_feats, train_labels, test_feats, test_labels):
    return float((train_labels[exact_nearest(test_feats, train_feats).index] == test_labels).mean())


def test_supcon_learns(digits, tmp_path):
    idx = np.random.default_rng(0).permutation(len(digits.x_train))[:400]
    x, y = digits.x_train[idx], digits.y_train[idx]
    settings = tiny_settings()
    model, history = fx.train_encoder(x, y, method="supcon", settings=settings, checkpoint_dir=tmp_path, seed=0,
                                      device="cpu", normalization="digits32")
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[1]["loss"] < history[0]["loss"] - 0.01
    random_init = fx.build_encoder(fx.check_settings(settings, "supcon"), (3, 32, 32), seed=0,
                                   normalization="digits32")
    accs = {}
    for name, m in (("trained", model), ("random", random_init)):
        feats = fx.extract(m, x, device="cpu"), fx.extract(m, digits.x_test, device="cpu")
        assert feats[0].dtype == np.float32 and feats[0].shape == (400, m.feature_dim)
        accs[name] = one_nn_accuracy(feats[0], y, feats[1], digits.y_test)
    assert accs["trained"] > accs["random"] + 0.08, accs  # seed 0: 0.82 vs 0.67


class Interrupt(Exception):
    pass


def test_run_resumes_bit_identically_and_file_is_checked(digits, tmp_path):
    # a small prepared dataset so that run() reads it like the workflow does
    n = 150
    meta = dict(digits.meta, name="digits32")
    path = tmp_path / "small.npz"
    write_prepared(path, digits.x_train[:n], digits.y_train[:n], digits.x_test[:60], digits.y_test[:60], meta)
    settings = tiny_settings()

    full = fx.run(tmp_path / "full.npz", dataset_path=path, method="simclr", settings=settings,
                  checkpoint_dir=tmp_path / "ck_full", seed=3, device="cpu")

    def stop(epoch, record):
        raise Interrupt

    with pytest.raises(Interrupt):
        fx.train_encoder(digits.x_train[:n], digits.y_train[:n], method="simclr", settings=settings,
                         checkpoint_dir=tmp_path / "ck_cut", seed=3, device="cpu", normalization="digits32",
                         callbacks=[stop])
    resumed = fx.run(tmp_path / "resumed.npz", dataset_path=path, method="simclr", settings=settings,
                     checkpoint_dir=tmp_path / "ck_cut", seed=3, device="cpu")
    a, b = fx.read_features(tmp_path / "full.npz"), fx.read_features(tmp_path / "resumed.npz")
    for u, v in zip(a[:4], b[:4]):
        assert np.array_equal(u, v)
    assert full["features_sha256"] == resumed["features_sha256"]
    assert [r["loss"] for r in full["history"]] == [r["loss"] for r in resumed["history"]]

    # meta: what a reader needs
    m = a[4]
    assert m["method"] == "simclr" and m["settings"]["temperature"] == 0.5 and m["seed"] == 3
    assert m["dataset"]["content_sha256"] == load(path).meta["content_sha256"]
    assert m["feature_dim"] == a[0].shape[1] and len(m["history"]) == 2
    assert m["stats"]["nn_dist_test_train"]["median"] == pytest.approx(
        float(np.median(exact_nearest(a[2], a[0]).distance)), rel=1e-4)
    assert m["stats"]["norm_train"]["median"] == pytest.approx(float(np.median(np.linalg.norm(a[0], axis=1))),
                                                               rel=1e-5)

    # a checkpoint written with other settings is not resumed
    with pytest.raises(CheckpointError, match="lr"):
        fx.train_encoder(digits.x_train[:n], digits.y_train[:n], method="simclr", settings={**settings, "lr": 0.1},
                         checkpoint_dir=tmp_path / "ck_cut", seed=3, device="cpu", normalization="digits32")

    # a tampered file is rejected, naming the file and what to do
    tamper_npz(tmp_path / "full.npz", "test_feats", tmp_path / "tampered.npz")
    with pytest.raises(fx.FeaturesCorrupt, match=r"tampered\.npz.*delete"):
        fx.read_features(tmp_path / "tampered.npz")


# ------------------------------------------------------------------------------------------- stats and files

def test_feature_stats_against_brute_force():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 8)).astype(np.float32)
    train[5] = train[9]  # a duplicate: its nearest other point is at distance 0
    test = rng.normal(size=(15, 8)).astype(np.float32)
    s = fx.feature_stats(train, test)
    d_tt = np.linalg.norm(train[:, None].astype(np.float64) - train[None], axis=2)
    np.fill_diagonal(d_tt, np.inf)
    d_te = np.linalg.norm(test[:, None].astype(np.float64) - train[None], axis=2)
    assert s["nn_dist_train_train"]["median"] == pytest.approx(np.median(d_tt.min(1)), rel=1e-4)
    assert s["nn_dist_train_train"]["min"] == pytest.approx(0.0, abs=1e-3)
    assert s["nn_dist_test_train"]["p90"] == pytest.approx(np.quantile(d_te.min(1), 0.9), rel=1e-4)
    assert s["norm_test"]["max"] == pytest.approx(np.linalg.norm(test, axis=1).max(), rel=1e-6)


def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    arrays = (rng.normal(size=(5, 3)), np.arange(5), rng.normal(size=(2, 3)), np.array([1, 0]))
    meta = fx.write_features(tmp_path / "f.npz", *arrays, {"method": "supcon", "note": (1, 2)})
    *back, m = fx.read_features(tmp_path / "f.npz")
    assert back[0].dtype == np.float32 and back[1].dtype == np.int64
    assert np.array_equal(back[0], arrays[0].astype(np.float32)) and np.array_equal(back[3], arrays[3])
    assert m == meta == json.loads(json.dumps(meta)) and m["note"] == [1, 2] and len(m["features_sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]  # no temporary file left
