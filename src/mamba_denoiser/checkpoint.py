"""Reading our checkpoints safely: no arbitrary unpickling, clear errors.

A Lightning checkpoint is a pickle; `torch.load(weights_only=True)` refuses anything but
tensors and plain containers, so a shared checkpoint cannot run code when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REQUIRED_HPARAMS = ("cluster", "window_size", "scaler", "model", "sde")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a mamba-denoiser checkpoint."""


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True, with its hyper-parameters checked."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path (ckpt_path=...)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a safe (weights-only) torch checkpoint ({first}). "
            "Is it a mamba-denoiser checkpoint written by train.py?"
        ) from None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    missing = [k for k in REQUIRED_HPARAMS if not isinstance(hp, dict) or k not in hp]
    if missing or "state_dict" not in ck:
        raise CheckpointError(
            f"{path}: not a mamba-denoiser checkpoint (missing {missing or ['state_dict']}); "
            "use a .ckpt written by train.py"
        )
    return ck
