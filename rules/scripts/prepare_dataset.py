import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import config, data, logs

logs.to_file(snakemake.log[0])
cfg = snakemake.config["data"]
meta = data.prepare(snakemake.wildcards.dataset, snakemake.output[0], root=cfg["root"], mirror=cfg["mirror"],
                    download=config.download_enabled(cfg, snakemake.config["scale"]))
print(meta)
