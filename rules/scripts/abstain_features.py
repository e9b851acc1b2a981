import _advrep_src  # noqa: F401  (src/ on sys.path)
import torch

from advrep import logs
from advrep.abstain import features

logs.to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
features.run(snakemake.output[0], dataset_path=snakemake.input[0], method=snakemake.wildcards.method,
             settings=dict(snakemake.params.settings), checkpoint_dir=snakemake.params.checkpoint_dir,
             seed=snakemake.params.seed)
