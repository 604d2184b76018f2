"""Group the panel's features into statistically homogeneous clusters.

python cluster.py                                   # built-in synthetic data
python cluster.py data=csv data.path=train.csv      # your own panel
python cluster.py clustering.k=7                    # fixed K
"""

import hydra
from omegaconf import DictConfig

from mamba_denoiser.cli import set_project_root
from mamba_denoiser.cluster_job import run_cluster
from mamba_denoiser.entry import run

set_project_root()


@hydra.main(version_base="1.3", config_path="conf", config_name="cluster")
def main(cfg: DictConfig) -> None:
    run_cluster(cfg)


if __name__ == "__main__":
    run(main)
