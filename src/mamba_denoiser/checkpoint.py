"""Reading our checkpoints safely: no arbitrary unpickling, clear errors.

A Lightning checkpoint is a pickle; `torch.load(weights_only=True)` refuses anything but
tensors and plain containers, so a shared checkpoint cannot run code when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamba_denoiser.errors import CheckpointError

REQUIRED_HPARAMS = ("cluster", "window_size", "scaler", "model", "sde")


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True, with its hyper-parameters checked."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path (ckpt_path=...)")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as e:  # torch.load fails in many ways on a bad file: UnpicklingError,
        # RuntimeError, EOFError, OSError, KeyError (a text file), ...
        first = " ".join(str(e).split()[:30]) or type(e).__name__
        kind = type(e).__name__ if not isinstance(e, pickle.UnpicklingError) else "unpickling"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            head = b"PK\x03\x04"  # unreadable: keep torch's reason
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip / pickle
            kind, first = "not a torch file", f"it starts with {head!r}"
        raise CheckpointError(
            f"{path}: cannot be read as a safe (weights-only) torch checkpoint ({kind}: "
            f"{first}); the file is truncated, corrupt or not a checkpoint: copy it again, "
            "or use a .ckpt written by train.py"
        ) from None
    hp = ck.get("hyper_parameters") if isinstance(ck, dict) else None
    missing = [k for k in REQUIRED_HPARAMS if not isinstance(hp, dict) or k not in hp]
    if missing or "state_dict" not in ck:
        raise CheckpointError(
            f"{path}: not a mamba-denoiser checkpoint (missing {missing or ['state_dict']}); "
            "use a .ckpt written by train.py"
        )
    return ck


def resolve_checkpoint(summary_path: str | Path, recorded: str | Path) -> Path:
    """The checkpoint a summary.json records, found beside that summary.json first.

    summary.json stores absolute paths (".../<sweep>/<job>/checkpoints/best-....ckpt"), so a
    copied or moved sweep would still read the original files. The same relative location
    under the summary's own job folder is preferred: the recorded path's parts after the
    job folder's name (else a relative path is taken relative to the summary's folder, or
    the file name is looked up in its checkpoints/ folder). Only when none of these exists
    is the recorded path returned as it is (the caller checks that it exists).
    """
    job_dir = Path(summary_path).parent
    recorded = Path(recorded)
    parts = recorded.parts
    candidates = []
    if job_dir.name in parts:
        i = len(parts) - 1 - parts[::-1].index(job_dir.name)  # the last occurrence
        if i + 1 < len(parts):
            candidates.append(job_dir.joinpath(*parts[i + 1 :]))
    if not recorded.is_absolute():
        candidates.append(job_dir / recorded)
    candidates += [job_dir / "checkpoints" / recorded.name, job_dir / recorded.name]
    return next((c for c in candidates if c.is_file()), recorded)
