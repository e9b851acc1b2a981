# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # voronoi — adversarial training with Voronoi constraints: what reproduced
#
# *Adversarial training with Voronoi constraints* (anonymous, under review). The paper replaces the $L_p$-ball of
# adversarial training with the **Voronoi cell** of each training sample: "the set of all points in $\mathbb{R}^d$
# that are closer to x than to any other sample". This notebook reads the workflow's results for this paper and its
# audit. It is executed by the workflow (`rules/notebooks.smk`); run it by hand with `RESULTS = "results/smoke"` set.

# %%
import json
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Image, display

try:
    RESULTS  # injected by the workflow
except NameError:
    RESULTS, SCALE, PAPER = "results/smoke", "smoke", "voronoi"
res = Path(RESULTS) / "voronoi"
audit_dir = Path(RESULTS) / "audit"
pd.set_option("display.max_colwidth", 120)


def provenance(target: str) -> dict:
    """The provenance sidecar of a result (``<target>.provenance.json``); empty if there is none."""
    p = res / f"{target}.provenance.json"
    return json.loads(p.read_text()) if p.exists() else {}


def unique_reasons(reason) -> str:
    """A claim's reason joins both sides' reasons with '; ' (often the same twice): keep each once."""
    if not isinstance(reason, str):
        return ""
    return "; ".join(dict.fromkeys(r.strip() for r in reason.split("; ") if r.strip()))


audit = pd.read_csv(audit_dir / "voronoi.csv", dtype={"row": str, "column": str, "reason": str})
claims = pd.read_csv(audit_dir / "voronoi.claims.csv", dtype={"reason": str})
provs = {t: provenance(t) for t in ("figure1", "figure2", "figure3", "figure4", "figure5")}
pd.DataFrame({t: {"scale": p.get("scale"), "seed": p.get("seed"), "settings": p.get("settings"),
                  "git commit": (p.get("git_commit") or "")[:10], "created (UTC)": p.get("created_utc")}
              for t, p in provs.items()}).T

# %% [markdown]
# ## Figure 1 — the Voronoi diagram of a dense two-class sample
# The paper's Figure 1: "The Voronoi cells vary in size depending on how close a sample is to samples in the other
# class. The Voronoi edges that are adjacent to two samples from two different classes [...] approach a decision
# boundary which is as far from the data distribution as possible." Ours: a uniform 2-D sample split by a sine-shaped
# boundary, all faces in grey, the **cross-class faces** in red. Only those faces matter to the constraints, which is
# why the method needs only "the m nearest samples to x in each other class" rather than all n - 1 constraints. The
# paper states no numbers for this illustration; the counts below only describe our drawing.

# %%
display(Image(filename=str(res / "figure1.png")))
pd.read_csv(res / "figure1.csv").pivot(index="row", columns="column", values="value")

# %% [markdown]
# ## Figure 2 — constructing an adversarial example inside a Voronoi cell
# "We repeatedly take steps in the direction of the gradient of the loss. After each iteration we check if any of the
# Voronoi constraints are violated. We take the last iteration before a constraint is violated as our adversarial
# example." The constraints are those of the m nearest samples of each other class (circled); "we do not impose
# constraints from samples in the same class as x", so the steps cross same-class cells freely and stop at a
# cross-class face (red). Ours: a small network trained on the Figure 1 sample, attacked from the near-boundary sample
# that moves furthest; below, the settings (m, step size, maximum steps) and the iterates up to the stopping point.

# %%
display(Image(filename=str(res / "figure2.png")))
pd.read_csv(res / "figure2.csv").pivot(index="row", columns="column", values="value")

# %%
p2 = provs["figure2"]
print("settings:", p2.get("settings"), "| attacked sample x =", np.round(p2.get("sample", []), 4).tolist())
it = np.asarray(p2.get("iterates", []), dtype=float).reshape(-1, 2)
display(pd.DataFrame({"x1": it[:, 0], "x2": it[:, 1], "distance from x": np.linalg.norm(it - it[:1], axis=1)})
        .rename_axis("iterate"))

# %% [markdown]
# ## Figure 3 — PLANES in codimension 10 and 500: Voronoi vs Madry adversarial training
# PLANES: "two 2-dimensional planes, the first in $x_d = 0$ and the second in $x_d = 2$", training set on a grid of
# side $\sqrt 2$, test set at the centres of the grid cubes, "so the maximum perturbation size is 1"; "the codimension
# of this dataset is d - 2". Model: "a fully connected network with 1 hidden layer, 100 hidden units, and ReLU",
# Adam with learning rate 0.1, "averaged over 20 retrainings". Madry et al.'s adversarial training uses "training
# $\epsilon$ = 1" ($L_2$); the Voronoi constraints use m = 10. Robustness is summarised by the **normalized area under
# the curve**, $\mathrm{NAUC}(acc) = \frac{1}{\epsilon_{max}}\int_0^{\epsilon_{max}} acc(\epsilon)\, d\epsilon$ (eq. 5);
# the paper reports 0.99 vs 0.94 (codim 10) and 0.92 vs 0.87 (codim 500). Our PNG, then the numbers behind it.

# %%
display(Image(filename=str(res / "figure3.png")))

# %%
f3 = pd.read_csv(res / "figure3.csv", dtype={"row": str, "column": str, "reason": str})
f3["value"] = pd.to_numeric(f3["value"], errors="coerce")
cell = f3["row"].str.extract(r"^(?P<method>.+?) \(codim (?P<codim>\d+)\)$")
f3 = f3.join(cell)
curves_rows = f3.dropna(subset=["method"]).copy()
curves_rows["codim"] = curves_rows["codim"].astype(int)

published = audit[(audit["target"] == "figure3") & (audit["column"] == "NAUC")].copy()
published = published.join(published["row"].str.extract(r"^(?P<method>.+?) \(codim (?P<codim>\d+)\)$"))
published["codim"] = published["codim"].astype(int)

nauc_rows = curves_rows[curves_rows["column"] == "NAUC"].copy()
nauc_rows["95% interval"] = [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(nauc_rows["ci_low"], nauc_rows["ci_high"])]
nauc_tab = (nauc_rows[["method", "codim", "value", "n", "95% interval"]].rename(columns={"value": "ours"})
            .merge(curves_rows[curves_rows["column"] == "NAUC std over retrainings"][["method", "codim", "value"]]
                   .rename(columns={"value": "std over retrainings"}), on=["method", "codim"], how="outer")
            .merge(published[["method", "codim", "published", "difference", "tolerance", "verdict"]],
                   on=["method", "codim"], how="outer"))
nauc_tab.pivot(index="method", columns="codim",
               values=["published", "ours", "n", "95% interval", "std over retrainings", "verdict"]).swaplevel(
    axis=1).sort_index(axis=1, level=0, sort_remaining=False)

# %% [markdown]
# The paper's point is the sign of Voronoi − Madry in each codimension (positive in both); ours, from the same cells:

# %%
gap = nauc_tab.pivot(index="codim", columns="method", values=["published", "ours"])
pd.DataFrame({"Voronoi − Madry, paper": gap["published"]["Voronoi"] - gap["published"]["Madry"],
              "Voronoi − Madry, ours": gap["ours"]["Voronoi"] - gap["ours"]["Madry"]}).round(3)

# %% [markdown]
# The verdict is *match* / *deviates* only where data and settings are the paper's; otherwise *not comparable*, with
# the reason. Each NAUC summarises n retrainings (20 per seed), so the audit uses their 95% interval widened by one
# unit of the published last digit (column `tolerance_rule`), not a guessed band:

# %%
published[["row", "published", "reproduced", "n", "ci_low", "ci_high", "tolerance_rule", "verdict",
           "reason"]].fillna({"reason": ""})

# %% [markdown]
# ### The mean curves behind the figure
# The CSV holds, per method and codimension, the mean and the standard deviation over retrainings of the robust
# accuracy at every $\epsilon$ of the evaluation grid (columns `accuracy at eps=...`, `accuracy std at eps=...`).
# Re-plotted here from the CSV alone, with a one-std band. Since NAUC (trapezoidal, eq. 5) is linear in the curve, the
# NAUC of the mean curve must equal the mean NAUC column: the last table checks it.

# %%
acc = curves_rows["column"].str.extract(r"^accuracy (?P<stat>std )?at eps=(?P<eps>.+)$")
curves = curves_rows.join(acc).dropna(subset=["eps"])
curves["stat"] = np.where(curves["stat"].fillna("") == "", "mean", "std")
curves["eps"] = curves["eps"].astype(float)
curves = curves.pivot_table(index=["codim", "method", "eps"], columns="stat", values="value").reset_index()
curves.pivot_table(index="eps", columns=["codim", "method"], values="mean").round(3)

# %%
import matplotlib.pyplot as plt

codims = sorted(curves["codim"].unique())
colors = {"Voronoi": "tab:green", "Madry": "tab:blue"}
pub = published.set_index(["method", "codim"])["published"]
fig, axes = plt.subplots(1, max(len(codims), 1), figsize=(5.5 * max(len(codims), 1), 4), squeeze=False)
for ax, codim in zip(axes[0], codims):
    for method, c in curves[curves["codim"] == codim].groupby("method", sort=False):
        c = c.sort_values("eps")
        mean, sd = c["mean"].to_numpy(), c["std"].fillna(0).to_numpy()
        ours = nauc_tab.set_index(["method", "codim"])["ours"].get((method, codim), np.nan)
        ax.plot(c["eps"], mean, color=colors.get(method), marker=".",
                label=f"{method}: NAUC {ours:.3f} (paper {pub.get((method, codim), np.nan):.2f})")
        ax.fill_between(c["eps"], np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color=colors.get(method),
                        alpha=0.2)
    ax.set(title=f"PLANES, codimension {codim} (from figure3.csv)", xlabel="eps (L2)", ylabel="robust accuracy",
           ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
plt.show()


# %%
def trapezoid_nauc(c: pd.DataFrame) -> float:
    c = c.sort_values("eps")
    e, a = c["eps"].to_numpy(), c["mean"].to_numpy()
    return float(np.sum(np.diff(e) * (a[1:] + a[:-1]) / 2) / e[-1])


check = curves.groupby(["method", "codim"]).apply(trapezoid_nauc, include_groups=False).rename("NAUC of the mean curve")
check = check.to_frame().join(nauc_tab.set_index(["method", "codim"])["ours"].rename("NAUC column"))
check["difference"] = check["NAUC of the mean curve"] - check["NAUC column"]
check

# %% [markdown]
# ### Why Figure 3 deviates (issue 15)
# Everything here is at the paper's stated settings, so these verdicts are real, and they deviate. We checked our own
# pipeline first (`tests/test_voronoi_planes_checks.py`, `benchmarks/voronoi_planes_eval_strength.py`).
#
# - **No errors found in:** the data geometry, both inner attacks and the NAUC integral.
# - **Two evaluation flaws, fixed:**
#   - **Gradient attacks too weak.** FGM and PGD alone left NAUC up to 0.023 too high: points whose hidden units are
#     all off have zero input gradient. They also gave acc(1) > 1/2, which is impossible because the midpoint to the
#     twin point is 1 from both. Gradient-free probes straight across to the other plane now run alongside them.
#   - **Grid too coarse.** 11 eps points capped any NAUC at 0.975; there are now 21.
# - **With both fixes:** 1000-step PGD with 10 restarts, plus a 5-ray line search, lowers NAUC by at most 0.0005
#   (12 models of seeds 0 and 1; up to 0.023 before).
#
# We then swept the settings the paper leaves open (`benchmarks/voronoi_planes_study.py`): 32 configurations, 20
# retrainings each, both methods, both codimensions, 95% intervals, orderings paired over retrainings.
#
# - **No configuration reproduces** all four NAUCs within 0.03 together with the three orderings.
# - **Madry degrades with codimension only under a weak training attack.** Codim 10 minus codim 500 is:
#   - one step of 0.25: +0.19 [0.15, 0.22];
#   - one FGM step: +0.14 [0.11, 0.16];
#   - 10 steps of 0.05, which cannot reach the eps = 1 sphere: +0.09 [0.07, 0.11];
#   - multi-step attacks that do reach it (10 x 0.25 as here, 3 x 0.83, 20 x 0.125): -0.06 to -0.02.
# - **Voronoi beats Madry in both codimensions only with 3-step inner attacks.**
# - **The closest setting was chosen after seeing the data:** Voronoi 3 x 0.25 with Madry 10 x 0.05. It gives
#   0.981 / 0.952 / 0.946 / 0.851 with all three orderings. But Voronoi at codim 500 is 0.032 off, it misses again on
#   fresh seeds, and its Madry attack is the weak kind.
#
# **Finding:** the paper's ordering appears only when Madry's attack is weak. Our data do not support the claim that
# ball-based training as such degrades with codimension. The README's voronoi paragraph has the details and the
# commands.

# %% [markdown]
# ### Timing and provenance of Figure 3
# Seconds per codimension (both methods, all retrainings, training and evaluation); the settings used, and those that
# are **our choices** because the paper does not state them (epochs, batch size, the inner attack, the evaluation
# grid and attacks). The evaluation follows the paper: several PGD step sizes plus the fast gradient method, counted
# *per sample* ("if any attack successfully constructs an adversarial example for a sample x at a specific
# $\epsilon$, it reduces the robust accuracy").

# %%
f3[f3["column"] == "seconds"][["row", "value", "unit"]]

# %%
p3 = provs["figure3"]
print("seed:", p3.get("seed"))
print("our choices, not in the paper:", p3.get("our_choices_not_in_paper"))
print("device:", p3.get("device"))
print("libraries:", {k: v for k, v in (p3.get("libraries") or {}).items() if k in ("python", "torch", "numpy")})
pd.Series(p3.get("settings", {}), name="setting").to_frame()

# %%
pd.DataFrame(p3.get("datasets", []))

# %% [markdown]
# ## Figures 4 and 5 — MNIST and CIFAR-10: Voronoi vs Madry vs Jacobian regularisation
# "We evaluate on MNIST and CIFAR-10 and compare against the robust pretrained models of Madry et al. (2018). We
# include the recently proposed Jacobian regularization algorithm of Hoffman et al. (2019) with $\lambda_{jr} = 1.0$
# as an additional baseline." The paper reports, on MNIST, NAUC 0.81 (Voronoi) vs 0.67 (Madry) and 76.3% vs 2.6%
# accuracy at $\epsilon$ = 0.4; on CIFAR-10 both NAUC 0.29; and (Figure 5) NAUC 0.76 for Madry's training at
# $\epsilon$ = 0.4 for 150 epochs. Attacks: MNIST 300-step PGD with step sizes {0.05, 0.07, 0.1, 0.15, 0.17, 0.2},
# CIFAR-10 20-step PGD with step sizes {2, 3, 4}/255, FGSM on both, counted *per sample*. The pretrained challenge
# models cannot be downloaded here: our Madry rows are models trained with the challenge recipe. At smoke scale
# every model is a tiny one trained for a few epochs on the stand-ins (Fashion-MNIST subsets where mirrored, else the
# bundled digits), so nothing is comparable.

# %%
display(Image(filename=str(res / "figure4.png")))
display(Image(filename=str(res / "figure5.png")))


# %%
def main_cells(target: str) -> pd.DataFrame:
    f = pd.read_csv(res / f"{target}.csv", dtype={"row": str, "column": str, "reason": str})
    keep = f["column"].isin(["NAUC", "NAUC improvement over Madry", "accuracy at eps=0", "accuracy at eps=0.3",
                             "accuracy at eps=0.4"])
    return f[keep].pivot(index="row", columns="column", values="value")


main_cells("figure4")

# %%
main_cells("figure5")

# %% [markdown]
# Published vs ours for every number the paper states for Figures 4 and 5, with the verdict and its reason:

# %%
audit[audit["target"].isin(["figure4", "figure5"])][["target", "row", "column", "unit", "published", "reproduced",
                                                     "verdict", "reason"]]

# %% [markdown]
# ### The curves behind Figures 4 and 5
# Robust accuracy (percent) at every $\epsilon$ of the evaluation grid, re-read from the CSVs (MNIST $\epsilon$ in
# [0, 1] pixel units, CIFAR-10 in k/255), then the training and evaluation time of every job and the settings that
# are our choices because the paper does not state them.

# %%
for target in ("figure4", "figure5"):
    f = pd.read_csv(res / f"{target}.csv", dtype={"row": str, "column": str, "reason": str})
    acc = f[f["column"].str.startswith("accuracy at eps=")]
    display(acc.pivot(index="column", columns="row", values="value").round(1))

# %%
f4 = pd.read_csv(res / "figure4.csv", dtype={"row": str, "column": str, "reason": str})
f4[f4["column"].str.startswith("seconds")].pivot(index="row", columns="column", values="value").round(1)

# %%
p4 = provs["figure4"]
print("our choices, not in the paper:", p4.get("our_choices_not_in_paper"))
print("device:", p4.get("device"))
pd.DataFrame({job: {"dataset": s.get("dataset"), "model": s.get("model"), "width": s.get("width"),
                    "epochs": s.get("training", {}).get("epochs"),
                    "objective": s.get("training", {}).get("objective"), "eval": s.get("eval")}
              for job, s in (p4.get("settings") or {}).items()}).T

# %% [markdown]
# ## Audit
# Every published number of this paper, with the verdict: *match* / *deviates* only where data and settings are the
# paper's, otherwise *not comparable* with the reason. The paper has no tables: every number is stated in its text.

# %%
audit["verdict"].value_counts().rename("numbers").to_frame()

# %%
audit[audit["verdict"] != "not comparable"][["target", "row", "column", "published", "reproduced", "difference",
                                             "tolerance", "verdict"]]

# %%
audit[audit["verdict"] == "not comparable"].groupby(["target", "reason"]).size().rename("numbers").to_frame()

# %% [markdown]
# ### Claims
# The paper's qualitative statements as checkable comparisons: *holds* / *fails* where both sides are comparable,
# otherwise *not comparable*.

# %%
claims["verdict"].value_counts().rename("claims").to_frame()

# %%
claims.assign(reason=claims["reason"].map(unique_reasons))[["id", "statement", "left", "op", "factor", "right",
                                                              "verdict", "reason"]]
