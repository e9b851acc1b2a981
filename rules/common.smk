# Shared set-up: config validation (before any job), scale, paths, dataset availability, target lists.
import sys
from pathlib import Path

from snakemake.utils import validate

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)  # DAG-time helpers below (rule scripts import rules/scripts/_advrep_src.py instead)

import advrep.config as advconfig
from advrep.data import availability, config_params, file_name_pattern, resolve_standins

validate(config, schema="../config/schema.yaml")
config.update(advconfig.resolve(config))

SCALE = config["scale"]
RES = f"results/{SCALE}"
DATA = "results/data"  # prepared datasets are scale-independent (content-hashed)
DOWNLOAD = advconfig.download_enabled(config["data"], SCALE)


def standin_available(name):
    """Can the stand-in ``name`` built from real data (fashion28, fashion32) be obtained? File existence only."""
    try:
        return availability(name, root=config["data"]["root"], mirror=config["data"]["mirror"], download=DOWNLOAD)[0]
    except ImportError:  # the check needs torchvision (see dataset_available): fall back to the bundled digits
        return False


# The one stand-in resolver: every `standin28` / `standin32` in the config becomes fashion28 / fashion32 where
# Fashion-MNIST is at hand (cache, data.mirror, or download), digits28 / digits32 otherwise (advrep.data.standins).
config.update(resolve_standins(config, standin_available))
validate(config, schema="../config/schema.yaml")  # the by_scale overlays, merged and resolved, obey the schema too

# paper -> the result targets the workflow produces for it (each: results/<scale>/<paper>/<target>.csv + figures)
PAPER_TARGETS = {
    "abstain": ["table1", "figure1", "tuning", "n3_sweep", "theory"],
    "lipreg": ["table4", "figure1", "table1", "table2", "table3", "table5", "table6", "figure2", "figure3", "figure4"],
    "sonet": ["table1", "table2", "table3", "table4", "masking"],
    "voronoi": ["figure1", "figure2", "figure3", "figure4", "figure5"],
    "oaat": ["table1", "table2", "masking", "figure1"],
}
PAPERS = list(PAPER_TARGETS)

# Seeds (advrep.seeds).  The targets that train a model or draw a random attack are assembled once per seed, from
# jobs run once per seed, under results/<scale>/<paper>/seed<k>/; rules/seeds.smk summarises them over SEEDS into
# results/<scale>/<paper>/<target>.csv (mean, std, n, 95% interval; one seed: that seed's files, byte for byte).
# The other targets (illustrations, exact computations) are computed once, with config["seed"].
SEEDS = config["seeds"]
SEEDED_TARGETS = {
    "abstain": ["table1", "figure1", "tuning", "n3_sweep"],
    "lipreg": ["table1", "table2", "table3", "table5", "table6", "figure2", "figure3", "figure4"],
    "sonet": ["table1", "table2", "table3", "table4", "masking"],
    "voronoi": ["figure3", "figure4", "figure5"],
    "oaat": ["table1", "table2", "masking", "figure1"],
}
SEEDED_FIGURES = {"abstain": ["figure1", "tuning", "n3_sweep"], "lipreg": ["figure2", "figure3", "figure4"],
                  "sonet": ["table4"], "voronoi": ["figure3", "figure4", "figure5"], "oaat": ["figure1"]}
NOTEBOOKS = [p for p in PAPERS if (Path(workflow.basedir) / "notebooks" / f"{p}.py").exists()]


wildcard_constraints:
    paper="|".join(PAPERS),
    dataset=file_name_pattern(),
    seed=r"[0-9]+",


def seeded(paper, figures):
    """``paper/target`` of the seeded targets with a figure (``figures``) or without (the summary rules' wildcard)."""
    names = [t for t in SEEDED_TARGETS[paper] if (t in SEEDED_FIGURES[paper]) == figures]
    return [f"{paper}/{t}" for t in names]


def seed_results(paper_target):
    """seed -> the per-seed result CSV of ``paper/target``."""
    paper, target = paper_target.split("/")
    return {f"seed{s}": f"{RES}/{paper}/seed{s}/{target}.csv" for s in SEEDS}


def dataset_available(name):
    """(available, reason) at DAG-build time. At reduced/paper scale every dataset is required: a missing one
    fails in its prepare job with instructions, so it is reported available here."""
    if SCALE != "smoke":
        return True, ""
    try:
        return availability(name, root=config["data"]["root"], mirror=config["data"]["mirror"], download=DOWNLOAD)
    except ImportError as err:  # e.g. a bare snakemake env with --use-conda: the check needs torchvision
        return False, (f"dataset {name!r} not checked: {err}; install requirements.lock into the environment "
                       "snakemake runs in to use real data at smoke scale")


def paper_results(paper):
    return [f"{RES}/{paper}/{t}.csv" for t in PAPER_TARGETS[paper]]


def all_targets():
    out = [f"{RES}/audit/summary.md"]
    out += [f"{RES}/audit/{p}.csv" for p in PAPERS]
    for p in PAPERS:
        out += paper_results(p)
    out += [f"{RES}/notebooks/{p}.html" for p in NOTEBOOKS]
    return out


# --- lipreg -------------------------------------------------------------------------------------------------
from advrep.lipreg.table4 import PAPER_COLUMNS as LIPREG_TABLE4_COLUMNS  # paper column -> (dataset, dedupe)

LIPREG_TABLE4 = config["lipreg"]["table4"]


def lipreg_table4_columns():
    """(result column -> prepared dataset file, paper column -> reason it is not run)."""
    columns, unavailable = {}, {}
    for column, (dataset, _) in LIPREG_TABLE4_COLUMNS.items():
        ok, reason = dataset_available(dataset)
        if ok:
            columns[column] = f"{DATA}/{dataset}.npz"
        else:
            unavailable[column] = reason
    for standin in LIPREG_TABLE4["standins"]:
        columns[f"{standin} (stand-in)"] = f"{DATA}/{standin}.npz"
    return columns, unavailable


# --- abstain ------------------------------------------------------------------------------------------------
from advrep.abstain.workflow import sigma_key as _abstain_sigma, table1_sigmas as _abstain_table1_sigmas

ABSTAIN = config["abstain"]
ABSTAIN_METHODS = ABSTAIN["features"]["methods"]
ABSTAIN_N3 = sorted(set(ABSTAIN["n3_sweep"]["n3"]) | {1})


def abstain_feature_settings(method):
    s = {k: v for k, v in ABSTAIN["features"].items() if k not in ("dataset", "methods")}
    s["temperature"] = ABSTAIN["features"]["temperature"][method]
    return s


def abstain_sigmas(n3):
    """Every sigma a target reads from the n3 pass (one exact pass serves them all)."""
    out = {_abstain_sigma(ABSTAIN["n3_sweep"]["sigma"])}
    if int(n3) == 1:
        out |= set(_abstain_table1_sigmas(ABSTAIN["table1"]["taus"]))
        out |= {_abstain_sigma(s) for s in ABSTAIN["figure1"]["sigmas"]}
        out.add(_abstain_sigma(ABSTAIN["tuning"]["sigma"]))
    return sorted(out)


def abstain_max_test(n3):
    limits = [ABSTAIN["attack"]["max_test"]] + ([ABSTAIN["n3_sweep"]["max_test"]] if int(n3) != 1 else [])
    limits = [m for m in limits if m is not None]
    return min(limits) if limits else None


def abstain_passes(n3=1):
    return {m: f"{RES}/abstain/seed{{seed}}/attack/{m}_n3{n3}.npz" for m in ABSTAIN_METHODS}


# --- sonet --------------------------------------------------------------------------------------------------------
from advrep.sonet import workflow as SONET

SONET_CFG = config["sonet"]


def sonet_job_files(target):
    """{<job>_csv, <job>_json: path} of every job a sonet target is assembled from."""
    return {f"{j}_{kind}": f"{RES}/sonet/seed{{seed}}/jobs/{j}.{ext}" for j in SONET.TABLE_JOBS[target]
            for kind, ext in (("csv", "per_sample.csv"), ("json", "json"))}


# --- oaat ---------------------------------------------------------------------------------------------------------
from advrep.oaat import workflow as OAAT

OAAT_CFG = config["oaat"]
OAAT.validate(OAAT_CFG)  # what the schema cannot say (eps schedule, alpha/lambda ranges, architecture vs dataset)


def oaat_job_inputs(job):
    """The prepared dataset of a job; for ExAT the final weights of the job it fine-tunes; for a WA job its
    twin's weights (the twin trains the run whose average it evaluates)."""
    s = OAAT.JOBS[job]
    out = {"data": f"{DATA}/{OAAT_CFG['data']['datasets'][s['data']]}.npz"}
    parent = OAAT.init_job(job)
    if parent is not None:
        out["init"] = f"{RES}/oaat/seed{{seed}}/models/{parent}.pt"
    if OAAT.training_job(job) != job:
        out["twin"] = f"{RES}/oaat/seed{{seed}}/models/{OAAT.training_job(job)}.pt"
    return out


def oaat_job_files(target):
    """{<job>_csv, <job>_json: path} of every job an oaat table is assembled from."""
    return {f"{j}_{kind}": f"{RES}/oaat/seed{{seed}}/jobs/{j}.{ext}" for j in OAAT.TABLE_JOBS[target]
            for kind, ext in (("csv", "per_sample.csv"), ("json", "json"))}


# --- lipreg Tables 1-3, 5, 6 and Figures 2-4 ----------------------------------------------------------------------
from advrep.lipreg import workflow as LIPREG

LIPREG_CFG = config["lipreg"]


def lipreg_job_settings(job):
    return LIPREG.job_settings(LIPREG_CFG, job, config["voronoi"])


def lipreg_job_inputs(job):
    """The prepared dataset of a job; the madry job also waits for the voronoi Figure 4 CIFAR-10 Madry job, whose
    checkpoint it evaluates."""
    out = {"data": f"{DATA}/{lipreg_job_settings(job)['data']['dataset']}.npz"}
    if job == LIPREG.MADRY:
        out["madry"] = f"{RES}/voronoi/seed{{seed}}/figures45/cifar10_madry.npz"
    return out


def lipreg_workdir(job, seed):
    """Checkpoint folder: the job's own, or (madry) the voronoi Figure 4 job's, of that seed."""
    if job == LIPREG.MADRY:
        return f"{RES}/voronoi/seed{seed}/checkpoints/cifar10_madry"
    return f"{RES}/lipreg/seed{seed}/checkpoints/{job}"


def lipreg_job_files(target):
    """{<job>_csv, <job>_json: path} of every job a lipreg target is assembled from."""
    return {f"{j}_{kind}": f"{RES}/lipreg/seed{{seed}}/jobs/{j}.{ext}" for j in LIPREG.TABLE_JOBS[target]
            for kind, ext in (("csv", "per_sample.csv"), ("json", "json"))}
