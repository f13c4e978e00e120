"""Where a run stands (step, epoch, batches consumed) and what it writes to its run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from realsynth.engine.checkpoint import rng_states, save_checkpoint
from realsynth.engine.distributed import get_rank
from realsynth.engine.evaluate import format_table
from realsynth.engine.plots import plot_recall, plot_source_losses
from realsynth.engine.run_log import read_metrics
from realsynth.utils.atomic import atomic_write_json


@dataclass
class RunState:
    """The trainer's position: the authority for resuming, whatever the loader prefetched.

    ``batch_in_epoch`` counts the batches this rank has *consumed* in ``epoch``; DataLoader workers
    may have drawn more indices from the sampler, which is why the sampler's own position is not
    what the checkpoint stores.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    num_skipped: int = 0
    # Batches per rank per epoch when the position was recorded (changes with the world size).
    epoch_length: int = 0

    def advance(self, skipped: int = 0) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        self.num_skipped += skipped

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    def sampler_state(self, sampler: Any) -> dict[str, Any]:
        """The sampler state that resumes at this position (the sampler's own format).

        Resuming with another number of processes changes the epoch length: the position is
        then carried over as the same fraction of the epoch (see docs/distributed.md).
        """
        length = len(sampler)
        if self.epoch_length and self.epoch_length != length:
            self.batch_in_epoch = self.batch_in_epoch * length // self.epoch_length
        self.epoch_length = length
        state = sampler.state_dict()
        state.update(epoch=self.epoch, position=self.batch_in_epoch)
        return state

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> RunState:
        return cls(**data)


def save_run_state(
    run_dir: Path,
    state: RunState,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    sampler: Any,
    config_yaml: str,
) -> None:
    """Write ``checkpoints/last.pt`` atomically (rank 0 only; other ranks return at once)."""
    if get_rank() != 0:
        return
    model = getattr(model, "module", model)
    save_checkpoint(
        Path(run_dir) / "checkpoints" / "last.pt",
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": state.sampler_state(sampler),
            "run_state": state.to_dict(),
            "rng": rng_states(),
            "config": config_yaml,
        },
    )


def write_final_outputs(
    run_dir: Path, results: dict[str, dict[str, float]], state: RunState
) -> None:
    """``eval.json``, the PNG plots and the printed summary table at the end of a run."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "eval.json", results)
    records = read_metrics(run_dir)
    plots = [
        plot_source_losses(records, run_dir / "loss_per_source.png"),
        plot_recall(records, run_dir / "recall.png"),
    ]
    print(f"\nFinished {state.step} steps. Validation per source:")
    print(format_table(results))
    if state.num_skipped:
        print(f"Skipped {state.num_skipped} bad samples (DATALOADER.SKIP_BAD_SAMPLES).")
    written = ", ".join(str(p) for p in plots if p is not None)
    print(f"Run folder: {run_dir} (eval.json, metrics.jsonl, checkpoints/last.pt, {written})")
