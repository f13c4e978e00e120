"""What the gloo tests run on every rank: one optimizer step, and a sharded evaluation."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from realsynth.config import load_config
from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import collate_relations
from realsynth.evaluation.evaluate import evaluate_sources, summaries
from realsynth.training.build import (
    build_evaluator_factory,
    wrap_distributed,
)
from realsynth.training.build_model import build_model_and_criterion
from realsynth.training.data_setup import build_data
from realsynth.utils.distributed import seed_all

CPU = torch.device("cpu")


def fixed_items(data) -> list[dict]:
    """Four real and four synthetic items, tagged as the mixed dataset tags them."""
    items = []
    for k in range(4):
        for source_id, (name, dataset, mix) in enumerate(zip(data.names, data.train, data.mix)):
            item = dict(dataset[k])
            item.update(dataset_type=mix.kind, source=name, loss_weight=mix.loss_weight)
            item["source_id"] = source_id
            items.append(item)
    return items


def rank_setup(config_yaml: str, rank: int, world: int):
    """The run's data, seeded model and criterion, and this rank's contiguous share of
    ``fixed_items`` collated."""
    cfg = load_config(None, base_yaml=config_yaml)
    seed_all(cfg.SEED)
    data = build_data(cfg)
    model, criterion = build_model_and_criterion(cfg, data, CPU)
    items = fixed_items(data)
    share = len(items) // world
    batch = collate_relations(items[rank * share : (rank + 1) * share])
    return data, model, criterion, batch


def one_step(config_yaml: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """One SGD step of the model on this rank's contiguous share of ``fixed_items``."""
    data, model, criterion, batch = rank_setup(config_yaml, rank, world)
    ddp = wrap_distributed(model, CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = criterion(ddp(batch_images(batch, CPU), batch["pixel_mask"]), batch["targets"])
    criterion.total_loss(losses).backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LookupModel(nn.Module):
    """Returns fixed, noisy near-ground-truth outputs for each known validation image.

    Gives a non-trivial recall (some triplets hit, some miss) without training a model.
    """

    def __init__(self, table: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.table = table

    def forward(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = [self.table[image_key(image)] for image in images]
        return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}


def image_key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


def noisy_outputs(target: dict, num_classes: int, num_predicates: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    queries = 12
    rel = torch.full((queries, num_predicates + 1), -4.0)
    rel[:, -1] = 4.0
    subj = torch.zeros(queries, num_classes + 1)
    obj = torch.zeros(queries, num_classes + 1)
    sbox = torch.rand(queries, 4, generator=gen) * 0.2 + 0.2
    obox = torch.rand(queries, 4, generator=gen) * 0.2 + 0.2
    for q, (s, o, p) in enumerate(target["relations"][:queries].tolist()):
        wrong = bool(torch.rand((), generator=gen) < 0.4)
        rel[q, (p + int(wrong)) % num_predicates] = 3.0 + float(torch.rand((), generator=gen))
        subj[q, int(target["labels"][s])] = 5.0
        obj[q, int(target["labels"][o])] = 5.0
        sbox[q], obox[q] = target["boxes"][s], target["boxes"][o]
    return {
        "relation_logits": rel,
        "relation_subject_logits": subj,
        "relation_object_logits": obj,
        "relation_subject_boxes": sbox,
        "relation_object_boxes": obox,
    }


def evaluate_fixed_model(config_yaml: str, rank: int = 0, world: int = 1) -> dict:
    """Evaluate ``LookupModel`` on every validation source (sharded when a group is up).

    ``rank`` and ``world`` only match the other cases' signature: the sharding comes from the
    process group itself.
    """
    cfg = load_config(None, base_yaml=config_yaml)
    data = build_data(cfg)
    table = {}
    for name, dataset in data.val.items():
        for index in range(len(dataset)):
            item = dataset[index]
            seed = index + 1000 * data.names.index(name)
            # Keyed by the image as the model receives it (normalized from the uint8 item).
            image = batch_images(collate_relations([item]), CPU)[0]
            table[image_key(image)] = noisy_outputs(
                item, len(data.classes), len(data.predicates), seed
            )
    return summaries(
        evaluate_sources(
            LookupModel(table),
            data.val_loaders(cfg),
            device=CPU,
            top_k=100,
            new_evaluator=build_evaluator_factory(cfg, data),
        )
    )


def adaptive_alignment(config_yaml: str, rank: int, world: int) -> list[list[float | None]]:
    """Every rank's per-source alignment on its share of ``fixed_items`` and of the first
    holdout batch (4 images), gathered so that rank 0 returns all of them."""
    import torch.distributed as dist

    from realsynth.mixing.alignment import measure_sources
    from realsynth.mixing.holdout import holdout_items

    data, model, criterion, batch = rank_setup(config_yaml, rank, world)
    holdout = data.holdout.dataset
    held = collate_relations([holdout[i] for i in holdout_items(len(holdout), 0, 4, rank, world)])
    ours = measure_sources(model, criterion, batch, held, len(data.names), CPU).values
    if world == 1:
        return [ours]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, ours)
    return gathered
