"""lipreg Table 4: Lipschitz constants of training sets, one column per dataset.

Columns are the paper's (MNIST, FashionMNIST, CIFAR-10, CIFAR-100).  A column whose dataset is not available here is
reported as ``not run`` with the reason; a stand-in dataset (scikit-learn digits or a Fashion-MNIST subset) gets its
own column named after it, never the paper's column name, so no stand-in number can be read as a paper-data number.
"""

from __future__ import annotations

import numpy as np

from .. import data as advdata
from .. import provenance
from .dataset_lipschitz import min_cross_class_distance, unique_image_mask

ROW = "Lipschitz constant"
# paper column -> (dataset registry name, exclude duplicated images)   (Table 4 caption: CIFAR-100 without duplicates)
PAPER_COLUMNS = {
    "MNIST": ("mnist", False),
    "FashionMNIST": ("fashion_mnist", False),
    "CIFAR-10": ("cifar10", False),
    "CIFAR-100": ("cifar100", True),
}


def lipschitz_cells(column: str, prepared: advdata.Prepared, *, exclude_duplicates: bool,
                    max_train: int | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    """Result cells for one dataset column: the Lipschitz constant plus the facts behind it."""
    x, y = prepared.x_train, prepared.y_train
    n_excluded = 0
    if exclude_duplicates:
        keep = unique_image_mask(x)
        n_excluded = int((~keep).sum())
        x, y = x[keep], y[keep]
    subsampled = max_train is not None and max_train < len(x)
    if subsampled:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), size=max_train, replace=False))
        x, y = x[pick], y[pick]
    res = min_cross_class_distance(x, y)
    reasons = []
    if prepared.meta.get("standin_for"):
        reasons.append(f"stand-in data: {prepared.meta['name']} in place of {prepared.meta['standin_for']}")
    if subsampled:
        reasons.append(f"subsample of {max_train} training images (paper: all)")
    comparable = not reasons
    reason = "; ".join(reasons)
    cell = dict(column=column, comparable=comparable, reason=reason, status="ok",
                dataset=provenance.dataset_tag(prepared.meta))
    rows = [
        dict(row=ROW, value=res.lipschitz, unit="lipschitz", **cell),
        dict(row="minimum cross-class distance", value=res.distance, unit="distance", **cell),
        dict(row="training images used", value=len(x), unit="count", **cell),
        dict(row="duplicated images excluded", value=n_excluded, unit="count", **cell),
        dict(row="seconds", value=res.seconds, unit="seconds", **cell),
    ]
    facts = {"column": column, "dataset": prepared.meta.get("name"), "pair": list(res.pair),
             "candidates_rechecked": res.n_candidates, "float32_error_bound": res.delta,
             "n_used": len(x), "n_duplicates_excluded": n_excluded}
    return rows, facts


def not_run_cells(column: str, reason: str) -> list[dict]:
    return [dict(row=ROW, column=column, value=None, unit="lipschitz", status="not run", comparable=False,
                 reason=reason, dataset="")]


def run(out_csv: str, *, columns: dict[str, str | None], unavailable: dict[str, str], scale: str,
        settings: dict, seed: int = 0, max_train: int | None = None) -> list[dict]:
    """Compute Table 4.

    ``columns``: result column -> prepared .npz path (paper columns plus any stand-in columns);
    ``unavailable``: paper column -> reason it cannot be computed here.
    """
    rows, facts, metas = [], [], []
    for column, path in columns.items():
        prepared = advdata.load(path)
        exclude = PAPER_COLUMNS.get(column, (None, False))[1]
        cells, f = lipschitz_cells(column, prepared, exclude_duplicates=exclude, max_train=max_train, seed=seed)
        rows += cells
        facts.append(f)
        metas.append(prepared.meta)
    for column, reason in unavailable.items():
        rows += not_run_cells(column, reason)
    prov = provenance.record(paper="lipreg", target="table4", scale=scale, settings=settings, seed=seed,
                             datasets=metas, extra={"columns": facts})
    provenance.write_result(rows, out_csv, prov)
    return rows
