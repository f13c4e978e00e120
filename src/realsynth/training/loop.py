"""The step loop: mixed batches, weighted criterion, periodic evaluation and checkpoints.

The loop knows at every moment whether the model, the optimizer and the step counter agree
(``consistent``): they do between steps and during a step's forward and backward passes, and do
not while the optimizer and the scheduler update (``committing``). Whatever stops a run, the
trainer saves a checkpoint only in a consistent moment, with the RNG states of the last step
boundary, so a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import target_to_device
from realsynth.evaluation.evaluate import evaluate_sources, summaries
from realsynth.evaluation.records import EVAL_RECORDS, save_records
from realsynth.mixing.adaptive_step import adapt_after_step
from realsynth.training.checkpoint import (
    CheckpointContents,
    TrainingObjects,
    checkpoint_contents,
    rng_states,
)
from realsynth.training.components import Components, StepResult
from realsynth.training.interrupt import StepInterrupt
from realsynth.training.records import loss_values, mix_targets, progress_postfix, reduce_records
from realsynth.training.run_folder import RunFolder
from realsynth.training.run_log import MetricsLog
from realsynth.training.run_state import RunState
from realsynth.utils.distributed import all_ranks_agree, all_reduce_sum, get_rank, get_world_size


class TrainingLoop:
    """Advances one run step by step and keeps track of what may be saved.

    Args:
        parts: the model, data and optimizer of the run.
        folder: the run folder (checkpoints are written by rank 0 only).
        log: the metrics log (rank 0), or None.
        best_key: ``source/metric`` that selects ``best.pt`` (None: no validation).
        callbacks: called at step boundaries.
    """

    def __init__(
        self,
        parts: Components,
        folder: RunFolder,
        log: MetricsLog | None,
        best_key: str | None,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.parts, self.folder, self.log = parts, folder, log
        self.best_key = best_key
        self.callbacks = list(callbacks)
        self.is_main = get_rank() == 0
        self.committing = False
        # The step of the newest checkpoint on disk (advanced only once its file is in place).
        self.saved_step: int | None = None
        self.final_evaluation = False  # every step is trained and saved; only scoring is left
        self.boundary_rng = rng_states()
        # Steps whose records are still on the device (fetched every log period).
        self.pending: list[tuple[int, StepResult]] = []
        self.bar: Any = None
        use_bf16 = parts.settings.amp and parts.device.type == "cuda"
        self.autocast = torch.autocast(parts.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def run(self, state: RunState, interrupt: StepInterrupt) -> None:
        """Train until ``max_iter`` steps (the final evaluation is :meth:`finish`'s)."""
        loader = self.parts.loader
        max_iter = self.parts.settings.max_iter
        self.bar = tqdm(
            total=max_iter, initial=state.step, disable=not self.is_main, dynamic_ncols=True
        )
        sampler = loader.batch_sampler
        try:
            while state.step < max_iter:
                loader.dataset.set_epoch(state.epoch)
                sampler.set_epoch(state.epoch)
                state.align_with(sampler)
                sampler.load_state_dict(state.sampler_state(sampler))
                for batch in loader:
                    if not self._has_images(batch):
                        state.skip_batch(list(batch.get("skipped", [])), batch["num_skipped"])
                        continue
                    self._one_step(state, batch)
                    self.bar.update(1)
                    if state.step >= max_iter:
                        break
                    self._after_step(state)
                    if interrupt.should_stop(self.parts.device):
                        raise KeyboardInterrupt
                else:
                    state.next_epoch()
        finally:
            self.flush()
            self.bar.close()  # nothing printed later lands on the progress bar's line

    def _has_images(self, batch: dict[str, Any]) -> bool:
        """False when every image of the batch was skipped (on any rank: all skip together)."""
        here = len(batch["targets"]) > 0
        if get_world_size() == 1:
            return here
        return all_ranks_agree(here, self.parts.device)

    def _one_step(self, state: RunState, batch: dict[str, Any]) -> None:
        for callback in self.callbacks:
            if hasattr(callback, "on_step_start"):
                callback.on_step_start(state.step + 1)
        result = self.step(batch)
        state.advance(result.skipped, result.num_skipped)
        self.pending.append((state.step, result))
        if len(self.pending) >= self.parts.settings.log_period:
            self.flush()
        mixer = self.parts.adaptive
        # The sampler counts the steps batches are drawn for (skipped batches included).
        drawn = int(batch["targets"][0].get("step", state.step - 1)) + 1
        if mixer is not None and mixer.due(drawn) and state.step < self.parts.settings.max_iter:
            self._adapt(mixer.next_decision, batch)
        # Only now is the step complete (its decision included): a checkpoint holds both.
        self.boundary_rng = rng_states()
        self.committing = False

    def _adapt(self, step: int, batch: dict[str, Any]) -> None:
        """An adaptive-mixing decision after ``step``, logged after the step's own record."""
        parts = self.parts
        self.flush()
        record = adapt_after_step(
            parts.adaptive,
            step=step,
            batch=batch,
            model=parts.model,
            criterion=parts.criterion,
            sampler=parts.loader.batch_sampler,
            holdout=parts.data.holdout.dataset,
            holdout_batch=parts.settings.holdout_batch,
            device=parts.device,
        )
        if self.log is not None:
            self.log.write(record)

    def flush(self) -> None:
        """Fetch the pending steps' records (one reduction, one transfer) and log them."""
        if not self.pending:
            return
        steps, results = zip(*self.pending)
        self.pending = []
        keys = results[0].keys
        if any(r.keys != keys for r in results):
            raise RuntimeError("loss keys changed between steps; flush them one by one")
        rows = reduce_records(keys, torch.stack([r.values for r in results]))
        for step, result, row in zip(steps, results, rows):
            record = {"kind": "train", "step": step, **row, **result.targets, "lr": result.lr}
            if self.log is not None:
                self.log.write(record)
            for callback in self.callbacks:
                if hasattr(callback, "on_step_end"):
                    callback.on_step_end(step, record)
        if self.bar is not None:
            share = getattr(self.parts.loader.batch_sampler, "shares_change", False)
            postfix = progress_postfix(record, self.parts.data.kinds, share=share)
            self.bar.set_postfix(postfix, refresh=False)

    def _after_step(self, state: RunState) -> None:
        """Periodic evaluation (first, so a checkpoint of the same step knows its score), then
        the periodic checkpoint."""
        settings = self.parts.settings
        improved = False
        if settings.eval_period and state.step % settings.eval_period == 0:
            improved = self._record_best(state, self.evaluate(state.step))
        if state.step % settings.checkpoint_period == 0:
            self.save(state)
        if improved:
            self.save_best(state)

    def finish(
        self, state: RunState, interrupt: StepInterrupt | None = None
    ) -> dict[str, dict[str, float]]:
        """The final checkpoint, then the final evaluation (and ``best.pt`` if it is the best).

        The trained steps are saved before the evaluation starts: from then on Ctrl-C (or
        SIGTERM) stops the evaluation at once, and a resume redoes only the evaluation.
        """
        if self.saved_step != state.step:
            self.save(state)
        self.final_evaluation = True
        if interrupt is not None:
            interrupt.at_once()
        results = self.evaluate(state.step, final=True)
        if self._record_best(state, results):
            self.save(state)  # the final checkpoint knows its own score, as best.pt does
            self.save_best(state)
        return results

    def step(self, batch: dict[str, Any]) -> StepResult:
        """One optimizer step on a collated batch."""
        parts = self.parts
        parts.model.train()
        # The step the sampler drew the batch for (tagged under schedules), else this one.
        drawn_for = int(batch["targets"][0].get("step", parts.scheduler.last_epoch))
        images = batch_images(batch, parts.device)
        mask = batch["pixel_mask"].to(parts.device, non_blocking=True)
        targets = [target_to_device(t, parts.device) for t in batch["targets"]]
        with self.autocast:
            outputs = parts.model(images, mask)
        outputs = _to_float(outputs)
        try:
            losses = parts.criterion(
                outputs,
                targets,
                loss_weights=batch["loss_weights"],  # the sampler's weights of its step
                source_ids=batch["source_ids"],
            )
        except ValueError as exc:
            # The criterion speaks of batch positions; name the images behind them.
            named = ", ".join(
                f"{i}: {t.get('source', '?')}/{t.get('file_name', t.get('image_id', '?'))}"
                for i, t in enumerate(targets)
            )
            raise ValueError(f"{exc} [batch positions: {named}]") from None
        total = parts.criterion.total_loss(losses)
        if not _finite_on_every_rank(total):
            raise FloatingPointError(
                f"loss is {total.item()} at step {parts.scheduler.last_epoch + 1} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); lower SOLVER.BASE_LR"
            )
        parts.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if parts.settings.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parts.model.parameters(), parts.settings.clip_grad_norm)
        self.committing = True  # from here until the step is counted, a save would be torn
        parts.optimizer.step()
        lr = parts.optimizer.param_groups[0]["lr"]
        parts.scheduler.step()
        keys, values = loss_values(losses, total, parts.criterion, parts.data.names)
        items = torch.bincount(batch["source_ids"], minlength=len(parts.data.names))
        return StepResult(
            keys + tuple(f"items/{name}" for name in parts.data.names),
            torch.cat([values, items.to(values.device, torch.float32)]),
            lr,
            int(batch.get("num_skipped", 0)),
            list(batch.get("skipped", [])),
            mix_targets(parts.loader.batch_sampler, parts.data.names, drawn_for),
        )

    def evaluate(self, step: int, *, final: bool = False) -> dict[str, dict[str, float]]:
        """Recall@K per validation source, logged as an ``eval`` record."""
        self.flush()  # the log stays in step order
        parts = self.parts
        evaluators = evaluate_sources(
            getattr(parts.model, "module", parts.model),
            parts.val_loaders(),
            device=parts.device,
            top_k=parts.settings.top_k,
            new_evaluator=parts.new_evaluator,
            autocast=self.autocast,
        )
        results = summaries(evaluators)
        if final and self.is_main:
            save_records(self.folder.path / EVAL_RECORDS, evaluators)
        if self.log is not None:
            flat = {f"{src}/{k}": v for src, metrics in results.items() for k, v in metrics.items()}
            self.log.write({"kind": "eval", "step": step, "final": final, **flat})
        for callback in self.callbacks:
            if hasattr(callback, "on_evaluate"):
                callback.on_evaluate(step, results, final)
        return results

    def _record_best(self, state: RunState, results: dict[str, dict[str, float]]) -> bool:
        if self.best_key is None:
            return False
        source, metric = self.best_key.split("/", 1)
        value = results.get(source, {}).get(metric)
        if value is None or not state.improves(value):
            return False
        state.best_value, state.best_step = float(value), state.step
        return True

    def _payload(self, state: RunState, rng: dict[str, Any]) -> CheckpointContents:
        """What a checkpoint of ``state`` holds, with the RNG states ``rng``."""
        parts = self.parts
        sampler = parts.loader.batch_sampler
        objects = TrainingObjects(
            parts.model, parts.optimizer, parts.scheduler, sampler, parts.adaptive
        )
        return checkpoint_contents(state, objects, parts.config_yaml, rng)

    def save(self, state: RunState) -> None:
        """Checkpoint of the last complete step, with the RNG states of that step's end; the log
        gets every step up to it first."""
        self.flush()
        if self.is_main:
            self.folder.checkpoint_files.write(state.step, self._payload(state, self.boundary_rng))
        self.saved_step = state.step

    def save_best(self, state: RunState) -> None:
        """``best.pt``: the checkpoint of the last complete step (rank 0 writes it)."""
        if self.is_main:
            payload = self._payload(state, self.boundary_rng)
            self.folder.checkpoint_files.write_best(state.step, payload)

    @property
    def can_save(self) -> bool:
        """Whether model, optimizer and step counter agree right now."""
        return not self.committing


def _finite_on_every_rank(total: torch.Tensor) -> bool:
    """Whether the loss is finite on all ranks (all raise together; none waits in backward)."""
    bad = (~torch.isfinite(total.detach())).float().reshape(1)
    return all_reduce_sum(bad).item() == 0


def _to_float(outputs: Any) -> Any:
    """Model outputs in float32 (bf16 autocast must not reach the loss and the matcher)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs
