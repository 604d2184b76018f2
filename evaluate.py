"""Does denoising help? Quality vs classical filters and leakage-safe forecasting, one report.

python evaluate.py                                    # newest sweep, built-in data
python evaluate.py data=csv data.path=train.csv checkpoints=outputs/train_multirun/<run>
"""

import hydra
from omegaconf import DictConfig

from mamba_denoiser.cli import set_project_root
from mamba_denoiser.entry import run
from mamba_denoiser.evaluate_job import run_evaluate

set_project_root()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_evaluate(cfg)


if __name__ == "__main__":
    run(main)
