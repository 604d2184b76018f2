"""Train one diffusion denoiser per feature cluster.

python train.py                                  # cluster c0 of the newest clusters.json
python train.py cluster=c2 clusters=outputs/cluster/<run>/clusters.json
python train.py experiment=all_clusters          # every cluster (multirun)
python train.py -m cluster=c0,c1 hydra/launcher=joblib
python train.py trainer=ddp                      # one cluster on all GPUs
python train.py ckpt_path=.../checkpoints/last.ckpt   # resume
"""

import hydra
from omegaconf import DictConfig

from mamba_denoiser.cli import set_project_root
from mamba_denoiser.entry import run
from mamba_denoiser.train_job import register_cluster_options, run_train

set_project_root()
register_cluster_options()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_train(cfg)


if __name__ == "__main__":
    run(main)
