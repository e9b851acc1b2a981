import _advrep_src  # noqa: F401  (src/ on sys.path)
from advrep import config, data, logs

logs.to_file(snakemake.log[0])
cfg = snakemake.config["data"]
name, params = data.parse_name(snakemake.wildcards.dataset)  # e.g. planes_codim10 -> planes, codim=10
meta = data.prepare(name, snakemake.output[0], root=cfg["root"], mirror=cfg["mirror"],
                    download=config.download_enabled(cfg, snakemake.config["scale"]), **params,
                    **snakemake.params.settings)  # data.standins for fashion28 / fashion32
print(meta)
