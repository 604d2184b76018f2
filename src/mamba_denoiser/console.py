"""The installed commands: ``mamba-denoiser cluster|train|denoise|evaluate [overrides]``
(and the four ``mamba-denoiser-<stage>`` scripts), the same jobs as the checkout's
cluster.py / train.py / denoise.py / evaluate.py, usable from any directory.

The Hydra configs are the checkout's conf/ when this package runs from a checkout (an
editable install, or PYTHONPATH=src), so edits there take effect at once; otherwise the
copy a wheel ships as mamba_denoiser/conf (setup.py copies conf/ there at build time).
Outputs go under the directory the command starts in, as with the scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

STAGES = ("cluster", "train", "denoise", "evaluate")
_HERE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """conf/ of the checkout this package lives in, else the one shipped inside it."""
    for d in (_HERE.parents[1] / "conf", _HERE / "conf"):  # src/mamba_denoiser -> repo
        if (d / "train.yaml").is_file():
            return d
    raise SystemExit(
        f"error: no Hydra configs next to {_HERE} (conf/train.yaml); reinstall the package "
        "from a wheel or the source tree"
    )


def _job(stage: str):
    """The stage's library function (imported late: a config error stays light)."""
    if stage == "cluster":
        from mamba_denoiser.cluster_job import run_cluster as job
    elif stage == "train":
        from mamba_denoiser.train_job import run_train as job
    elif stage == "denoise":
        from mamba_denoiser.denoise_job import run_denoise as job
    else:
        from mamba_denoiser.evaluate_job import run_evaluate as job
    return job


def run_stage(stage: str) -> None:
    """``stage``'s @hydra.main on sys.argv[1:], as ``python <stage>.py`` would run it."""
    import hydra
    from omegaconf import DictConfig

    from mamba_denoiser.cli import set_project_root
    from mamba_denoiser.entry import run

    set_project_root()
    if stage == "train":  # cluster=c0.. options come from clusters.json, before Hydra
        from mamba_denoiser.train_job import register_cluster_options

        register_cluster_options()
    # Hydra names the job after the calling file (this module); the scripts' logs are
    # <stage>.log, so keep that name unless the user set one
    if not any(a.startswith("hydra.job.name=") for a in sys.argv[1:]):
        sys.argv.append(f"hydra.job.name={stage}")
    job = _job(stage)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=stage)
    def main(cfg: DictConfig):
        return job(cfg)

    run(main)


def main() -> None:
    """``mamba-denoiser STAGE [hydra overrides]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        got = f" (got {sys.argv[1]!r})" if len(sys.argv) > 1 else ""
        print(
            f"usage: mamba-denoiser {{{'|'.join(STAGES)}}} [key=value ...]{got}\n"
            "  e.g. mamba-denoiser cluster data.path=train.csv; "
            "mamba-denoiser train experiment=cpu_all_clusters",
            file=sys.stderr,
        )
        raise SystemExit(2)
    stage = sys.argv.pop(1)
    sys.argv[0] = f"mamba-denoiser {stage}"
    run_stage(stage)


def cluster() -> None:
    run_stage("cluster")


def train() -> None:
    run_stage("train")


def denoise() -> None:
    run_stage("denoise")


def evaluate() -> None:
    run_stage("evaluate")


if __name__ == "__main__":
    main()
