"""Where a run stands: step, epoch, batches consumed, best score, skipped files.

A checkpoint stores it as :meth:`RunState.to_dict` (see :mod:`realsynth.training.checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunState:
    """The trainer's position: the authority for resuming, whatever the loader prefetched.

    ``batch_in_epoch`` counts the batches this rank has *consumed* in ``epoch``; DataLoader workers
    may have drawn more indices from the sampler, which is why the sampler's own position is not
    what the checkpoint stores.

    Attributes:
        step: optimizer steps completed.
        epoch / batch_in_epoch: the sampler position those steps consumed.
        num_skipped: bad-sample draws skipped so far (``DATALOADER.SKIP_BAD_SAMPLES``).
        skipped_files: the distinct ``source/file`` names behind them.
        epoch_length: batches per rank per epoch when the position was recorded.
        best_value / best_step: the best selection metric so far (``TEST.BEST_METRIC``).
        empty_batches: batches whose every image was skipped (consumed, no step taken).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    num_skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)
    epoch_length: int = 0
    best_value: float | None = None
    best_step: int | None = None
    empty_batches: int = 0

    def advance(self, skipped: list[str] | None = None, num_skipped: int = 0) -> None:
        """Count one completed step and the bad samples its batch left out."""
        self.step += 1
        self.batch_in_epoch += 1
        self.num_skipped += num_skipped
        self._note_files(skipped or [])

    def _note_files(self, names: list[str]) -> None:
        new = set(names) - set(self.skipped_files)
        if new:
            self.skipped_files = sorted({*self.skipped_files, *new})

    def skip_batch(self, skipped: list[str], num_skipped: int) -> None:
        """Count a batch whose every image was skipped: consumed, but no optimizer step."""
        self.batch_in_epoch += 1
        self.empty_batches += 1
        self.num_skipped += num_skipped
        self._note_files(skipped)

    def next_epoch(self) -> None:
        """Start the next epoch at its first batch."""
        self.epoch += 1
        self.batch_in_epoch = 0

    def align_with(self, sampler: Any) -> None:
        """Carry the position over to a sampler of another epoch length (another number of
        processes): the same fraction of the epoch, or when the shares depend on the step (a
        schedule, adaptive mixing) the same step for the next batch to be drawn for."""
        length = len(sampler)
        if self.epoch_length and self.epoch_length != length:
            if getattr(sampler, "shares_change", False):
                drawn = self.epoch * self.epoch_length + self.batch_in_epoch
                self.epoch, self.batch_in_epoch = divmod(drawn, length)
            else:
                self.batch_in_epoch = self.batch_in_epoch * length // self.epoch_length
        self.epoch_length = length

    def sampler_state(self, sampler: Any) -> dict[str, Any]:
        """The sampler state that resumes at this position (call :meth:`align_with` first)."""
        state = sampler.state_dict()
        state.update(epoch=self.epoch, position=self.batch_in_epoch)
        return state

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best selection score so far (higher is better)."""
        return self.best_value is None or value > self.best_value

    def to_dict(self) -> dict[str, Any]:
        """The state as plain values (what a checkpoint stores)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        """Read a saved state (keys added in later versions take their defaults)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
