"""Benchmark of the weighted set criterion (realsynth.modeling.criterion).

(a) relation mode, weighted vs unweighted (weights absent): the weighting overhead;
(b) entity mode against HuggingFace transformers' DETR loss (HungarianMatcher + ImageLoss), an
    optional peer, on identical inputs;
(c) relation mode against a replica of a public multi-dataset SpeaQ fork's criterion: per-layer
    Python list comprehensions, weights rebuilt per term, CE over matched queries, and NaN / min
    guards per term (each a device->host sync);
(d) SpeaQ's one-to-many assignment (static 4 copies; dynamic, SpeaQ's recipe; dynamic with the
    group mask) against one-to-one matching, 50 triplets per image.

Run: ``python benchmarks/bench_criterion.py [--quick] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine, write_result
from scipy.optimize import linear_sum_assignment

from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.one_to_many import QualityAwareMatcher
from realsynth.modeling.predicate_groups import predicate_groups
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

NUM_CLASSES, NUM_PREDICATES, BATCH = 150, 50, 16
REL_CLASS_KEYS = ("relation_logits", "relation_subject_logits", "relation_object_logits")
REL_BOX_KEYS = ("relation_subject_boxes", "relation_object_boxes")
RESULTS = Path(__file__).resolve().parent / "results" / "criterion.md"


def make_batch(
    queries: int, aux: int, seed: int = 0, relations: int | None = None
) -> tuple[dict, list[dict]]:
    """Random predictions (relation + entity heads) and targets: 2..15 boxes, 1..15 relations
    (or 20 boxes and ``relations`` relations per image)."""
    g = torch.Generator().manual_seed(seed)

    def layer() -> dict:
        out = {k: torch.randn(BATCH, queries, NUM_CLASSES + 1, generator=g) for k in REL_CLASS_KEYS}
        out["relation_logits"] = torch.randn(BATCH, queries, NUM_PREDICATES + 1, generator=g)
        out["pred_logits"] = torch.randn(BATCH, queries, NUM_CLASSES + 1, generator=g)
        for key in (*REL_BOX_KEYS, "pred_boxes"):
            out[key] = torch.rand(BATCH, queries, 4, generator=g) * 0.6 + 0.2
        return {k: v.requires_grad_(True) for k, v in out.items()}

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(aux)]
    targets = []
    for b in range(BATCH):
        n = int(torch.randint(2, 16, (1,), generator=g)) if relations is None else 20
        m = int(torch.randint(1, 16, (1,), generator=g)) if relations is None else relations
        boxes = torch.cat(
            (torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05),
            1,
        )
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                "relations": torch.stack(
                    (
                        torch.randint(0, n, (m,), generator=g),
                        torch.randint(0, n, (m,), generator=g),
                        torch.randint(0, NUM_PREDICATES, (m,), generator=g),
                    ),
                    1,
                ),
                "source": "real" if b < 11 else "synthetic",
                "dataset_type": "real" if b < 11 else "synthetic",
                "loss_weight": 1.0 if b < 11 else 0.5,
            }
        )
    return outputs, targets


def only(outputs: dict, keys: tuple[str, ...]) -> dict:
    out = {k: outputs[k] for k in keys}
    out["aux_outputs"] = [{k: a[k] for k in keys} for a in outputs["aux_outputs"]]
    return out


def leaves(outputs: dict) -> list[torch.Tensor]:
    found = [v for k, v in outputs.items() if k not in ("aux_outputs", "auxiliary_outputs")]
    for aux in outputs.get("aux_outputs", outputs.get("auxiliary_outputs", [])):
        found += list(aux.values())
    return found


def compare(
    variants: dict[str, tuple[Callable[[], torch.Tensor], list[torch.Tensor]]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median ms of forward only and of forward + backward per variant.

    The variants run round-robin inside every repeat, so load from other processes on a shared
    machine hits all of them alike and the ratios stay meaningful.
    """

    def forward(fn: Callable[[], torch.Tensor]) -> None:
        with torch.no_grad():
            fn()

    def forward_backward(fn: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> None:
        for p in params:
            p.grad = None
        fn().backward()

    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    for step in range(repeats + 3):
        for name, (fn, params) in variants.items():
            calls = (
                lambda fn=fn: forward(fn),
                lambda fn=fn, params=params: forward_backward(fn, params),
            )
            for slot, call in enumerate(calls):
                start = time.perf_counter()
                call()
                if step >= 3:  # the first rounds warm up allocators and caches
                    times[name][slot].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(f), statistics.median(b)) for name, (f, b) in times.items()}


class ReplicaCriterion:
    """A public multi-dataset SpeaQ fork's criterion pattern, relation mode (for comparison
    only)."""

    def __init__(self) -> None:
        self.empty_rel = torch.ones(NUM_PREDICATES + 1)
        self.empty_rel[-1] = 0.1

    def match(self, layer: dict, triplets: list[tuple]) -> list[tuple]:
        with torch.no_grad():
            bq = layer["relation_logits"].shape[:2]
            probs = [layer[k].flatten(0, 1).softmax(-1) for k in REL_CLASS_KEYS]
            cost = -sum(p[:, torch.cat([t[h] for t in triplets])] for h, p in enumerate(probs))
            for h, key in enumerate(REL_BOX_KEYS):
                pred = layer[key].flatten(0, 1)
                tgt = torch.cat([t[3 + h] for t in triplets])
                cost = cost + 5 * torch.cdist(pred, tgt, p=1)
                cost = cost - 2 * generalized_box_iou(
                    box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt)
                )
            cost = cost.view(*bq, -1).cpu()
            sizes = [len(t[0]) for t in triplets]
            out = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
            return [
                (torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
                for i, j in out
            ]

    def weighted(
        self, per_element: torch.Tensor, batch_idx: torch.Tensor, targets: list[dict]
    ) -> torch.Tensor:
        weights = torch.tensor([t.get("loss_weight", 1.0) for t in targets])[batch_idx]
        if torch.isnan(per_element).any() or weights.min() < 0:
            return per_element.mean()
        return (per_element * weights).mean()

    def layer_losses(self, layer: dict, targets: list[dict], triplets: list[tuple]) -> dict:
        indices = self.match(layer, triplets)
        batch_idx = torch.cat([torch.full_like(s, i) for i, (s, _) in enumerate(indices)])
        src_idx = torch.cat([s for s, _ in indices])
        losses = {}
        for h, key in enumerate(REL_CLASS_KEYS):
            tgt = torch.cat([t[h][j] for t, (_, j) in zip(triplets, indices)])
            weight = self.empty_rel if h == 0 else None
            ce = F.cross_entropy(
                layer[key][batch_idx, src_idx], tgt, weight=weight, reduction="none"
            )
            losses[key] = self.weighted(ce, batch_idx, targets)
        for h, key in enumerate(REL_BOX_KEYS):
            src = layer[key][batch_idx, src_idx]
            tgt = torch.cat([t[3 + h][j] for t, (_, j) in zip(triplets, indices)])
            l1 = F.l1_loss(src, tgt, reduction="none").sum(1)
            giou = 1 - torch.diag(
                generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
            )
            losses[key + "_l1"] = self.weighted(l1, batch_idx, targets)
            losses[key + "_giou"] = self.weighted(giou, batch_idx, targets)
            for source in {t["source"] for t in targets}:
                mask = torch.tensor([targets[int(b)]["source"] == source for b in batch_idx])
                if mask.any():
                    losses[f"{key}_l1_{source}"] = l1[mask].mean()
        return losses

    def __call__(self, outputs: dict, targets: list[dict]) -> torch.Tensor:
        triplets = [
            (
                t["relations"][:, 2],
                t["labels"][t["relations"][:, 0]],
                t["labels"][t["relations"][:, 1]],
                t["boxes"][t["relations"][:, 0]],
                t["boxes"][t["relations"][:, 1]],
            )
            for t in targets
        ]
        total = 0
        for layer in [outputs, *outputs["aux_outputs"]]:
            total = total + sum(self.layer_losses(layer, targets, triplets).values())
        return total


def hf_criterion():
    try:
        from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss
    except ImportError:
        return None
    matcher = HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    return ImageLoss(
        matcher=matcher, num_classes=NUM_CLASSES, eos_coef=0.1, losses=["labels", "boxes"]
    )


def hf_inputs(outputs: dict, targets: list[dict]) -> tuple[dict, list[dict]]:
    """The entity-mode inputs in HF's key names, sharing the very same tensors."""
    hf_out = {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    hf_out["auxiliary_outputs"] = [
        {"logits": a["pred_logits"], "pred_boxes": a["pred_boxes"]} for a in outputs["aux_outputs"]
    ]
    return hf_out, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def section_a(queries: int, aux: int, repeats: int) -> list[str]:
    outputs, targets = make_batch(queries, aux)
    rel = only(outputs, (*REL_CLASS_KEYS, *REL_BOX_KEYS))
    criterion = RelationCriterion(NUM_CLASSES, NUM_PREDICATES)
    plain = [{k: v for k, v in t.items() if k != "loss_weight"} for t in targets]
    params = leaves(rel)
    results = compare(
        {
            "unweighted (weights absent)": (
                lambda: criterion.total_loss(criterion(rel, plain)),
                params,
            ),
            "weighted [1.0 x11, 0.5 x5]": (
                lambda: criterion.total_loss(criterion(rel, targets)),
                params,
            ),
            "unweighted again (A/A noise control)": (
                lambda: criterion.total_loss(criterion(rel, plain)),
                params,
            ),
        },
        repeats,
    )
    rows = [f"| {queries} | {name} | {f:.2f} | {b:.2f} |" for name, (f, b) in results.items()]
    (fu, bu), (fw, bw), (fa, ba) = results.values()
    rows.append(f"| {queries} | weighted / unweighted | {fw / fu:.3f}x | {bw / bu:.3f}x |")
    rows.append(f"| {queries} | A/A control / unweighted | {fa / fu:.3f}x | {ba / bu:.3f}x |")
    return rows


def section_b(queries: int, aux: int, repeats: int) -> tuple[list[str], str]:
    hf = hf_criterion()
    if hf is None:
        return [f"| {queries} | transformers | not installed | not installed |"], ""
    outputs, targets = make_batch(queries, aux)
    ent = only(outputs, ("pred_logits", "pred_boxes"))
    ent_targets = [
        {k: t[k] for k in ("boxes", "labels", "source", "dataset_type")} for t in targets
    ]
    hf_out, hf_targets = hf_inputs(ent, ent_targets)
    ours = RelationCriterion(NUM_CLASSES, NUM_PREDICATES)
    a = ours(ent, ent_targets)
    b = hf(hf_out, hf_targets)
    diff = max(abs(a[k].item() - b[k].item()) for k in ("loss_ce", "loss_bbox", "loss_giou"))
    coef = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}

    def hf_total() -> torch.Tensor:
        losses = hf(hf_out, hf_targets)
        return sum(
            coef[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v for k, v in losses.items()
        )

    results = compare(
        {
            "ours": (lambda: ours.total_loss(ours(ent, ent_targets)), leaves(ent)),
            "hf": (hf_total, leaves(ent)),
        },
        repeats,
    )
    t_ours, t_hf = results["ours"], results["hf"]
    rows = [
        f"| {queries} | realsynth RelationCriterion | {t_ours[0]:.2f} | {t_ours[1]:.2f} |",
        f"| {queries} | transformers ImageLoss | {t_hf[0]:.2f} | {t_hf[1]:.2f} |",
        f"| {queries} | realsynth / transformers | {t_ours[0] / t_hf[0]:.3f}x "
        f"| {t_ours[1] / t_hf[1]:.3f}x |",
    ]
    return rows, f"Q={queries}: max |ours - transformers| over loss_ce/bbox/giou = {diff:.2e}"


def section_c(queries: int, aux: int, repeats: int) -> list[str]:
    outputs, targets = make_batch(queries, aux)
    rel = only(outputs, (*REL_CLASS_KEYS, *REL_BOX_KEYS))
    ours = RelationCriterion(NUM_CLASSES, NUM_PREDICATES)
    replica = ReplicaCriterion()
    results = compare(
        {
            "ours": (lambda: ours.total_loss(ours(rel, targets)), leaves(rel)),
            "replica": (lambda: replica(rel, targets), leaves(rel)),
        },
        repeats,
    )
    t_ours, t_rep = results["ours"], results["replica"]
    return [
        f"| {queries} | realsynth RelationCriterion | {t_ours[0]:.2f} | {t_ours[1]:.2f} |",
        f"| {queries} | multi-dataset SpeaQ fork's pattern (replica) "
        f"| {t_rep[0]:.2f} | {t_rep[1]:.2f} |",
        f"| {queries} | realsynth / replica | {t_ours[0] / t_rep[0]:.3f}x "
        f"| {t_ours[1] / t_rep[1]:.3f}x |",
    ]


def section_d(queries: int, aux: int, repeats: int) -> list[str]:
    outputs, targets = make_batch(queries, aux, seed=1, relations=50)
    rel = only(outputs, (*REL_CLASS_KEYS, *REL_BOX_KEYS))
    counts = torch.randint(1, 1000, (NUM_PREDICATES,), generator=torch.Generator().manual_seed(0))
    groups = predicate_groups(counts.tolist(), 4, queries)
    recipe = {"scheme": "dynamic", "top_k": 4, "combine": "max", "predicate_weight": -0.5}
    variants = {
        "one-to-one": RelationCriterion(NUM_CLASSES, NUM_PREDICATES),
        "static, 4 copies": RelationCriterion(
            NUM_CLASSES, NUM_PREDICATES, matcher=QualityAwareMatcher(scheme="static", top_k=4)
        ),
        "dynamic (SpeaQ's recipe)": RelationCriterion(
            NUM_CLASSES, NUM_PREDICATES, matcher=QualityAwareMatcher(**recipe)
        ),
        "dynamic + group mask (4 groups)": RelationCriterion(
            NUM_CLASSES, NUM_PREDICATES, matcher=QualityAwareMatcher(**recipe, groups=groups)
        ),
    }
    params = leaves(rel)
    results = compare(
        {name: (lambda c=c: c.total_loss(c(rel, targets)), params) for name, c in variants.items()},
        repeats,
    )
    base_f, base_b = results["one-to-one"]
    return [
        f"| {queries} | {name} | {f:.2f} ({f / base_f:.2f}x) | {b:.2f} ({b / base_b:.2f}x) |"
        for name, (f, b) in results.items()
    ]


def _peer_version() -> str:
    try:
        import transformers
    except ImportError:
        return "transformers not installed"
    return f"transformers {transformers.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 100 queries only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--aux", type=int, default=0, help="auxiliary decoder layers")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (10 if args.quick else 60)
    query_counts = [100] if args.quick else [100, 300]
    header = ["| queries | variant | forward ms | forward+backward ms |", "|---|---|---|---|"]
    a, b, c, d, notes = [], [], [], [], []
    for q in query_counts:
        a += section_a(q, args.aux, repeats)
        rows, note = section_b(q, args.aux, repeats)
        b += rows
        notes += [note] if note else []
        c += section_c(q, args.aux, repeats)
    d += section_d(query_counts[-1], args.aux, max(3, repeats // 4))
    command = "python benchmarks/bench_criterion.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    text = "\n".join(
        [
            "## Set criterion (`benchmarks/bench_criterion.py`)",
            "",
            f"Machine: {machine()}, {_peer_version()}. Command: `{command.strip()}`.",
            f"Batch {BATCH}, {NUM_CLASSES} classes / {NUM_PREDICATES} predicates, 2..15 boxes and "
            f"1..15 relations per image, {args.aux} auxiliary layers; median of {repeats} repeats "
            "(CPU, wall clock, including matching).",
            "",
            "### (a) Relation mode: weighted vs unweighted",
            "",
            *header,
            *a,
            "",
            "### (b) Entity mode vs transformers' DETR loss (HungarianMatcher + ImageLoss)",
            "",
            *header,
            *b,
            "",
            *[f"- {n}" for n in notes],
            "",
            "### (c) Relation mode vs a public multi-dataset SpeaQ fork's criterion (replica)",
            "",
            *header,
            *c,
            "",
            "### (d) SpeaQ's one-to-many assignment vs one-to-one (50 triplets per image)",
            "",
            *header,
            *d,
            "",
        ]
    )
    print(text)
    write_result("criterion", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
