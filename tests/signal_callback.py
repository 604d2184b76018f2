"""A callback that sends this process submitit's preemption signal once (tests/test_resume.py):
hydra/launcher=submitit_local's real requeue path, driven at a chosen point of training."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class SignalAt(L.Callback):
    """Sends SIGUSR2 to this process at the end of batch `batch` of epoch `epoch` (batch
    None: at the end of that epoch, after its checkpoint), unless `marker` exists; creates
    `marker` first, so the requeued job is not signalled again."""

    def __init__(self, epoch: int, marker: str, batch: int | None = None):
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def _fire(self) -> None:
        if self.marker.exists():
            return
        self.marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGUSR2)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.batch is not None and (trainer.current_epoch, batch_idx) == (
            self.epoch,
            self.batch,
        ):
            self._fire()

    def on_train_epoch_end(self, trainer, pl_module):
        if self.batch is None and trainer.current_epoch == self.epoch:
            self._fire()
