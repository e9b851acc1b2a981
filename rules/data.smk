# Datasets: torchvision download (checksums) or data.mirror, verified on decoded content, one prepared .npz each.
# The prepared file is scale-independent and content-hashed; how it was obtained (mirror, download) is read from
# the config inside the job, not passed as params, so switching scale or mirror does not re-trigger it.


rule prepare_dataset:
    output:
        f"{DATA}/{{dataset}}.npz",
    log:
        f"{DATA}/logs/{{dataset}}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "scripts/prepare_dataset.py"
