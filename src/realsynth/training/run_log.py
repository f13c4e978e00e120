"""Run-folder logging: ``metrics.jsonl`` (a JSON object per line) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from realsynth.utils.atomic import atomic_write_text


class MetricsLog:
    """Appends records to ``<run_dir>/metrics.jsonl``; mirrors scalars to TensorBoard if installed.

    Each record is flushed as soon as it is written, so a killed run keeps every finished step.
    On resume the file is cut back to the records the checkpoint had seen, so the log never holds
    two versions of the same step.

    Args:
        run_dir: the run folder.
        resume_step: when resuming, the step of the checkpoint; later records are dropped, and so
            is a final evaluation of that step when ``redo_final`` (it is about to run again).
        redo_final: see ``resume_step``.
        tensorboard: write TensorBoard events when ``torch.utils.tensorboard`` imports.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume_step: int | None = None,
        redo_final: bool = False,
        tensorboard: bool = True,
    ):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                r
                for r in read_metrics(self.path)
                if r.get("step", 0) <= resume_step
                and not (redo_final and r.get("final") and r.get("step") == resume_step)
            ]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None:
            atomic_write_text(self.path, "")
        self._handle = self.path.open("a", encoding="utf-8")
        self._writer = _tensorboard_writer(self.path.parent) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``; ``kind`` tells train from eval records)."""
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        if self._writer is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self._handle.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a run folder is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
    return records


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
