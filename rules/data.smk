# Datasets: torchvision download (checksums) or data.mirror, verified on decoded content, one prepared .npz each.
# The prepared file is scale-independent and content-hashed; how it was obtained (mirror, download) is read from
# the config inside the job, not passed as params, so switching scale or mirror does not re-trigger it; only the
# stand-ins built from Fashion-MNIST take params (data.standins), so changing their subset rebuilds them.
# A damaged prepared file (truncated, overwritten) is moved aside to <name>.npz.damaged before the DAG is built, so
# this run rebuilds it instead of failing in the jobs that read it (advrep.data.prepared.set_aside_damaged); the
# full hash check in advrep.data.load does the same for damage this quick check cannot see, and fails that job.
import sys

from advrep.data.prepared import set_aside_damaged

if workflow.is_main_process:
    for message in set_aside_damaged(DATA):
        print(f"advrep: {message}", file=sys.stderr)


rule prepare_dataset:
    output:
        f"{DATA}/{{dataset}}.npz",
    params:
        # data.standins (subset sizes, seed) for the stand-ins built from real data; nothing for the others
        settings=lambda w: config_params(w.dataset, config["data"]),
    log:
        f"{DATA}/logs/{{dataset}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "scripts/prepare_dataset.py"
