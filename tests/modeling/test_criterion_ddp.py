"""Two gloo processes on the CPU against one process on the concatenated batch.

DDP averages gradients over ranks, so the rank-averaged losses and gradients must equal the
single-process ones: DETR's ``num_boxes`` makes that hold for the box terms, and the CE divisor
(sum of class weights) averaged over ranks does it for the classification terms, even though the
ranks' batches hold different numbers of matched (non-background) queries.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from criterion_cases import make_outputs, make_targets, slice_batch

from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.heads import RELATION_HEADS
from realsynth.modeling.one_to_many import QualityAwareMatcher
from realsynth.modeling.set_targets import flatten_targets
from realsynth.modeling.weighting import batch_weights, box_term, reduce_terms
from realsynth.utils import distributed
from realsynth.utils.distributed import all_reduce_sum, get_rank, get_world_size

C, R, Q = 6, 5, 8
LAYOUT = [(3, 4), (2, 1), (5, 7), (0, 0)]
WEIGHTS = [1.0, 0.5, 0.5, 1.0]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_offset(outputs, theta):
    """Outputs that depend on one shared parameter, like a model's, so DDP would average it."""
    out = {k: v + theta for k, v in outputs.items() if k.endswith("logits")}
    out.update({k: v for k, v in outputs.items() if k.endswith("boxes")})
    return out


# One-to-one, and SpeaQ's copies (2 per triplet; the 7-triplet image is capped at 8 queries).
MATCHERS = {"one_to_one": None, "two_copies": {"scheme": "static", "top_k": 2}}


def _run(outputs, targets, normalization, matcher=None):
    theta = torch.zeros((), requires_grad=True)
    criterion = RelationCriterion(
        C,
        R,
        no_object_class_weight=0.1,
        no_relation_class_weight=0.1,
        normalization=normalization,
        matcher=QualityAwareMatcher(**matcher) if matcher else None,
    )
    layer = _shared_offset(outputs, theta)
    layer["aux_outputs"] = [_shared_offset(a, theta) for a in outputs["aux_outputs"]]
    calls = _count_all_reduces()
    losses = criterion(layer, targets)
    collectives = calls()
    criterion.total_loss(losses).backward()
    # A unit loss per target: its numerator over the batch's divisor, averaged over ranks.
    flat = flatten_targets(targets, RELATION_HEADS, [R, C, C], device="cpu")
    per_target = batch_weights(targets, device="cpu").image.repeat_interleave(
        torch.tensor(flat.sizes)
    )
    unit = box_term(torch.ones(flat.total), per_target, normalization)
    terms = {k: v.detach() for k, v in losses.items() if not k.startswith("diag/")}
    return {
        "terms": terms,
        "theta": theta.grad,
        "boxes": outputs["relation_subject_boxes"].grad,
        "unit": (unit.numerator, reduce_terms({"unit": unit})["unit"]),
        "collectives": collectives,
    }


def _count_all_reduces():
    """Count the all-reduces from now on (0 without a process group); returns the reader."""
    real = distributed.dist.all_reduce
    count = [0]

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    distributed.dist.all_reduce = counting

    def read() -> int:
        distributed.dist.all_reduce = real
        return count[0]

    return read


def _worker(rank, port, path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        assert get_world_size() == WORLD and get_rank() == rank
        assert all_reduce_sum(torch.tensor([float(rank + 1)])).item() == 3.0
        per_rank = len(LAYOUT) // WORLD
        lo, hi = rank * per_rank, (rank + 1) * per_rank
        results = {}
        for normalization in ("count", "weight"):
            for name, matcher in MATCHERS.items():
                outputs = slice_batch(make_outputs(1, len(LAYOUT), Q, C, R, aux=1), lo, hi)
                targets = make_targets(2, LAYOUT, C, R, weights=WEIGHTS)[lo:hi]
                results[normalization, name] = _run(outputs, targets, normalization, matcher)
        torch.save(results, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    path = str(tmp_path / "rank")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{path}.{r}") for r in range(WORLD)]
    per_rank = len(LAYOUT) // WORLD
    for normalization in ("count", "weight"):
        single = _run(
            make_outputs(1, len(LAYOUT), Q, C, R, aux=1),
            make_targets(2, LAYOUT, C, R, weights=WEIGHTS),
            normalization,
        )
        got = [r[normalization, "one_to_one"] for r in ranks]
        expected_num = (
            sum(m for _, m in LAYOUT)
            if normalization == "count"
            else sum(w * m for w, (_, m) in zip(WEIGHTS, LAYOUT))
        )
        for r in range(WORLD):
            # Every rank divides by the global count over the world size (DETR's num_boxes).
            numerator, value = got[r]["unit"]
            torch.testing.assert_close(value, numerator / (expected_num / WORLD))
            # Every divisor of every layer and term in one collective per forward.
            assert got[r]["collectives"] == 1
        numerator, value = single["unit"]
        assert value.item() == pytest.approx(numerator.item() / expected_num)
        assert single["collectives"] == 0
        for key, value in single["terms"].items():
            mean = sum(g["terms"][key] for g in got) / WORLD
            torch.testing.assert_close(mean, value, msg=f"{normalization} {key}")
        theta = sum(g["theta"] for g in got) / WORLD
        torch.testing.assert_close(theta, single["theta"])
        boxes = torch.cat([g["boxes"] for g in got]) / WORLD
        torch.testing.assert_close(boxes, single["boxes"])
        assert single["boxes"][:per_rank].abs().sum() > 0


def test_two_ranks_match_one_process_with_duplicated_pairs(tmp_path):
    path = str(tmp_path / "rank")
    mp.spawn(_worker, args=(_free_port(), path), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{path}.{r}") for r in range(WORLD)]
    for normalization in ("count", "weight"):
        single = _run(
            make_outputs(1, len(LAYOUT), Q, C, R, aux=1),
            make_targets(2, LAYOUT, C, R, weights=WEIGHTS),
            normalization,
            MATCHERS["two_copies"],
        )
        one_to_one = _run(
            make_outputs(1, len(LAYOUT), Q, C, R, aux=1),
            make_targets(2, LAYOUT, C, R, weights=WEIGHTS),
            normalization,
        )
        got = [r[normalization, "two_copies"] for r in ranks]
        for key, value in single["terms"].items():
            mean = sum(g["terms"][key] for g in got) / WORLD
            torch.testing.assert_close(mean, value, msg=f"{normalization} {key}")
        torch.testing.assert_close(sum(g["theta"] for g in got) / WORLD, single["theta"])
        # The copies really changed the loss (more matched pairs, other divisors).
        assert not torch.isclose(
            single["terms"]["loss_bbox_subject"], one_to_one["terms"]["loss_bbox_subject"]
        )
