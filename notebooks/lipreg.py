# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # lipreg — Lipschitz regularised networks: what reproduced
#
# Finlay, Calder, Abbasi, Oberman. *Lipschitz regularized deep neural networks generalize and are adversarially
# robust.* This notebook reads the workflow's results for this paper and its audit. It is executed by the
# workflow (`rules/notebooks.smk`); run it by hand with `RESULTS = "results/smoke"` set.

# %%
import json
from pathlib import Path

import pandas as pd

try:
    RESULTS  # injected by the workflow
except NameError:
    RESULTS, SCALE, PAPER = "results/smoke", "smoke", "lipreg"
res = Path(RESULTS) / "lipreg"
audit_dir = Path(RESULTS) / "audit"
pd.set_option("display.max_colwidth", 120)

# %% [markdown]
# ## Table 4 — Lipschitz constant of the training set
# `1 / min ||x_i - x_j||` over training images of different classes, pixels in [0, 1], computed exactly
# (faiss search with a proven rounding bound, then exact integer re-check of every candidate). A column whose
# dataset is missing here is *not run*; stand-in columns (scikit-learn digits) carry their own names.

# %%
t4 = pd.read_csv(res / "table4.csv")
t4.pivot(index="row", columns="column", values="value")

# %%
t4[t4["status"] != "ok"][["column", "status", "reason"]]

# %%
prov = json.loads((res / "table4.provenance.json").read_text())
pd.DataFrame(prov["datasets"])[["name", "source", "verified_by", "content_sha256", "standin_for"]]

# %% [markdown]
# ## Figure 1 — the Lipschitz-regularised solution of (2.7) on synthetic 2-D data
# Left: clean labels; right: 10% of labels corrupted. The solution is the exact minimiser over all functions
# (a finite convex program at the data points, extended by McShane–Whitney).

# %%
from IPython.display import Image, display

display(Image(filename=str(res / "figure1.png")))
pd.read_csv(res / "figure1.csv").pivot(index="row", columns="column", values="value")

# %% [markdown]
# ## Audit
# Every published number of this paper, with the verdict: *match* / *deviates* only where data and settings are
# the paper's, otherwise *not comparable* with the reason.

# %%
audit = pd.read_csv(audit_dir / "lipreg.csv")
audit["verdict"].value_counts()

# %%
audit[audit["verdict"] != "not comparable"][["target", "row", "column", "published", "reproduced", "difference",
                                             "tolerance", "verdict"]]

# %%
audit[audit["verdict"] == "not comparable"].groupby(["target", "reason"]).size().rename("numbers").to_frame()

# %%
claims = pd.read_csv(audit_dir / "lipreg.claims.csv")
claims[["id", "statement", "left", "op", "right", "verdict", "reason"]]
