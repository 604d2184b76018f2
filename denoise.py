"""Denoise the whole panel with every cluster's checkpoint; causal (no look-ahead) by default.

python denoise.py                                     # newest sweep, built-in data
python denoise.py mode=offline                        # two-sided, uses future rows
python denoise.py data=csv data.path=train.csv checkpoints=outputs/train_multirun/<run>
"""

import hydra
from omegaconf import DictConfig

from mamba_denoiser.cli import set_project_root
from mamba_denoiser.denoise_job import run_denoise
from mamba_denoiser.entry import run

set_project_root()


@hydra.main(version_base="1.3", config_path="conf", config_name="denoise")
def main(cfg: DictConfig) -> None:
    run_denoise(cfg)


if __name__ == "__main__":
    run(main)
