"""The training loop: mixed batches, weighted criterion, checkpoints, periodic evaluation, logs.

One process or many (``torchrun``): the loop is the same; with a process group the model is
wrapped in ``DistributedDataParallel``, every rank draws its own batches from the
``MixedBatchSampler`` and only rank 0 writes to the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from realsynth.config import to_yaml
from realsynth.engine import build
from realsynth.engine.checkpoint import load_checkpoint, restore_rng_states
from realsynth.engine.data_setup import RunData
from realsynth.engine.distributed import all_reduce_sum, get_rank
from realsynth.engine.inference import evaluate_sources
from realsynth.engine.interrupt import StepInterrupt
from realsynth.engine.launch import barrier, init_distributed, resolve_device, seed_all
from realsynth.engine.records import loss_record, progress_postfix, reduce_record
from realsynth.engine.run_log import MetricsLog
from realsynth.engine.run_state import RunState, save_run_state, write_final_outputs
from realsynth.modeling.criterion import RelationCriterion
from realsynth.utils.atomic import atomic_write_text


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C once the checkpoint of the last complete step is safely written.

    The first Ctrl-C lets the current step finish (see :class:`StepInterrupt`); a second one
    stops at once, and the checkpoint then holds the last step that completed.
    """


@dataclass
class StepResult:
    """What one optimizer step logs: every loss term, the total and the per-source diagnostics."""

    record: dict[str, float]
    num_skipped: int


def train(cfg: DictConfig, *, resume: bool = False) -> dict[str, dict[str, float]]:
    """Train with ``cfg`` into ``cfg.OUTPUT_DIR``; returns the final recall per validation source.

    Args:
        cfg: resolved run config (see :mod:`realsynth.config`).
        resume: continue from ``OUTPUT_DIR/checkpoints/last.pt`` (model, optimizer, scheduler,
            sampler position and RNG states), reproducing the uninterrupted run.

    Raises:
        TrainingInterrupted: on Ctrl-C, after writing the checkpoint of the last finished step.
    """
    device = resolve_device(cfg.MODEL.DEVICE)
    init_distributed(device)
    seed_all(cfg.SEED)
    run_dir = Path(cfg.OUTPUT_DIR)
    is_main = get_rank() == 0
    data = build.build_data(cfg)
    model, criterion = build.build_model_and_criterion(cfg, data, device)
    optimizer = build.build_optimizer(cfg, model)
    scheduler = build.build_scheduler(cfg, optimizer)
    loader = build.build_train_loader(cfg, data)
    state = RunState()
    if resume:
        state = _restore(run_dir, model, optimizer, scheduler, loader.batch_sampler)
    model = build.wrap_distributed(model, device)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        build.print_run_summary(cfg, data, loader)
    log = MetricsLog(run_dir, resume_step=state.step + 1 if resume else None) if is_main else None
    loop = _Loop(cfg, data, model, criterion, optimizer, scheduler, loader, device, log, run_dir)
    loop.saved_step = state.step if resume else None
    try:
        with StepInterrupt() as interrupt:
            loop.run(state, interrupt)
            results = loop.evaluate(state.step)
    except KeyboardInterrupt:
        raise _interrupted(loop, state, run_dir) from None
    finally:
        if log is not None:
            log.close()
    if is_main:
        write_final_outputs(run_dir, results, state)
    return results


def _interrupted(loop: _Loop, state: RunState, run_dir: Path) -> TrainingInterrupted:
    """Save the last complete step (never half of one) and say how to continue."""
    resume = f"continue with `realsynth train --resume {run_dir}`"
    if not loop.mid_step:
        barrier()
        loop.save(state)
        return TrainingInterrupted(f"interrupted at step {state.step}; checkpoint saved, {resume}")
    kept = f"step {loop.saved_step}" if loop.saved_step is not None else "none yet"
    return TrainingInterrupted(
        f"interrupted in the middle of step {state.step + 1}; its weights are half-updated, so "
        f"the last checkpoint is kept ({kept}); {resume}"
    )


def _restore(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: Any,
) -> RunState:
    """Load the run's checkpoint into the fresh objects; refuse a changed seed or global batch."""
    ckpt = load_checkpoint(
        run_dir, required=("model", "optimizer", "scheduler", "run_state", "sampler", "rng")
    )
    _check_same_stream(run_dir, ckpt["sampler"], sampler.state_dict())
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    # All ranks start from the same seed and draw alike, so rank 0's states serve every rank.
    restore_rng_states(ckpt["rng"])
    return RunState.from_dict(ckpt["run_state"])


def _check_same_stream(run_dir: Path, saved: dict[str, int], live: dict[str, int]) -> None:
    """A resumed run must draw from the same stream: same seed and global batch size."""
    saved_batch = saved["batch_size"] * saved["world_size"]
    live_batch = live["batch_size"] * live["world_size"]
    if saved["seed"] != live["seed"] or saved_batch != live_batch:
        raise ValueError(
            f"{run_dir}: the checkpoint was written with SEED={saved['seed']} and global batch "
            f"{saved_batch}, this run has SEED={live['seed']} and global batch {live_batch}; "
            "resume with the run's own SEED and SOLVER.IMS_PER_BATCH"
        )


class _Loop:
    """Holds the pieces of one run and advances them step by step."""

    def __init__(
        self,
        cfg: DictConfig,
        data: RunData,
        model: torch.nn.Module,
        criterion: RelationCriterion,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loader: DataLoader,
        device: torch.device,
        log: MetricsLog | None,
        run_dir: Path,
    ) -> None:
        self.cfg, self.data, self.model, self.criterion = cfg, data, model, criterion
        self.optimizer, self.scheduler, self.loader = optimizer, scheduler, loader
        self.device, self.log, self.run_dir = device, log, Path(run_dir)
        self.is_main = get_rank() == 0
        self.mid_step, self.saved_step = False, None
        use_bf16 = cfg.SOLVER.AMP and device.type == "cuda"
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def run(self, state: RunState, interrupt: StepInterrupt) -> None:
        solver, max_iter = self.cfg.SOLVER, self.cfg.SOLVER.MAX_ITER
        bar = tqdm(total=max_iter, initial=state.step, disable=not self.is_main, dynamic_ncols=True)
        sampler = self.loader.batch_sampler
        while state.step < max_iter:
            self.loader.dataset.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            sampler.load_state_dict(state.sampler_state(sampler))
            for batch in self.loader:
                self.mid_step = True
                result = self.step(batch)
                state.advance(result.num_skipped)
                self.mid_step = False
                record = {"kind": "train", "step": state.step, **result.record}
                if self.log is not None:
                    self.log.write(record)
                bar.update(1)
                bar.set_postfix(progress_postfix(record, self.data.kinds), refresh=False)
                if state.step % solver.CHECKPOINT_PERIOD == 0 or state.step == max_iter:
                    self.save(state)
                if state.step % self.cfg.TEST.EVAL_PERIOD == 0 and state.step < max_iter:
                    self.evaluate(state.step)
                if state.step >= max_iter:
                    break
                if interrupt.should_stop(self.device):
                    raise KeyboardInterrupt
            else:
                state.next_epoch()
        bar.close()

    def step(self, batch: dict[str, Any]) -> StepResult:
        self.model.train()
        images = batch["images"].to(self.device, non_blocking=True)
        mask = batch["pixel_mask"].to(self.device, non_blocking=True)
        targets = [_to_device(t, self.device) for t in batch["targets"]]
        with self.autocast:
            outputs = self.model(images, mask)
        outputs = _to_float(outputs)
        try:
            losses = self.criterion(outputs, targets)
        except ValueError as exc:
            # The criterion speaks of batch positions; name the images behind them.
            images = ", ".join(
                f"{i}: {t.get('source', '?')}/{t.get('file_name', t.get('image_id', '?'))}"
                for i, t in enumerate(targets)
            )
            raise ValueError(f"{exc} [batch positions: {images}]") from None
        total = self.criterion.total_loss(losses)
        if not _finite_on_every_rank(total):
            raise FloatingPointError(
                f"loss is {total.item()} at step {self.scheduler.last_epoch + 1} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); lower SOLVER.BASE_LR"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.SOLVER.CLIP_GRAD_NORM > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.CLIP_GRAD_NORM)
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        record = loss_record(losses, total, self.criterion.weight_dict, self.data.names)
        record["lr"] = lr
        return StepResult(reduce_record(record, self.device), int(batch.get("num_skipped", 0)))

    def evaluate(self, step: int) -> dict[str, dict[str, float]]:
        model = getattr(self.model, "module", self.model)
        results = evaluate_sources(
            model,
            self.data.val_loaders(self.cfg),
            device=self.device,
            top_k=self.cfg.TEST.TOP_K,
            num_predicates=len(self.data.predicates),
            autocast=self.autocast,
        )
        if self.log is not None:
            flat = {f"{src}/{k}": v for src, metrics in results.items() for k, v in metrics.items()}
            self.log.write({"kind": "eval", "step": step, **flat})
        return results

    def save(self, state: RunState) -> None:
        self.saved_step = state.step
        save_run_state(
            self.run_dir,
            state,
            self.model,
            self.optimizer,
            self.scheduler,
            self.loader.batch_sampler,
            to_yaml(self.cfg),
        )


def _finite_on_every_rank(total: torch.Tensor) -> bool:
    """Whether the loss is finite on all ranks (all raise together; none waits in backward)."""
    bad = (~torch.isfinite(total.detach())).float().reshape(1)
    return all_reduce_sum(bad).item() == 0


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _to_float(outputs: Any) -> Any:
    """Model outputs in float32 (bf16 autocast must not reach the loss and the matcher)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs
