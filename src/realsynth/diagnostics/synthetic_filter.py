"""``realsynth data filter``: score synthetic annotations with a model trained on real data.

Every box and relationship of a relcoco file gets a score from the model of a finished run
(Gen2Det's idea: generated boxes that a real-data model does not confirm are doubtful):

- a box of class ``c``: the highest probability of ``c`` among the model's subject and object
  slots whose box overlaps it with IoU >= ``iou`` (0 when none does);
- a relationship ``(s, o, p)``: the highest probability of predicate ``p`` (softmax over the
  predicates, the no-relation class left out) among the queries that localize the pair, those
  whose subject box overlaps ``s`` and whose object box overlaps ``o`` with IoU >= ``iou`` (0
  when none does). Any localizing query may confirm it, so a model trained with several queries
  per triplet or with predicate groups (whose queries lean to their own group's predicates)
  confirms a correct relationship through the query of its group. The relationship's boxes are
  judged by their own scores (a triplet using an ignored box is ignored in training), so the
  predicate is not penalized twice for a doubtful class. On the demo this ranks corrupted
  predicates better than the product ``P(c_s) P(c_o) P(p)`` (docs/data.md has the figures).

An instance is doubtful when its score is below ``score`` (Gen2Det's starting point: IoU 0.3,
score 0.1). The output file marks doubtful instances ``"ignore": true`` (mode ``ignore``),
multiplies their ``loss_weight`` by ``weight`` (``reweight``), or leaves them out (``drop``; a
dropped box takes its relationships with it). The input file is never modified; the output and
its report (``<out>.report.json``: kept / changed / dropped per class and per predicate) are
written atomically. Only the annotation file and the images are read.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import collate_relations
from realsynth.data.formats.relcoco import RelCocoDataset, load_relcoco_json
from realsynth.data.formats.relcoco_rules import index_relcoco
from realsynth.utils.atomic import atomic_write_json
from realsynth.utils.box_ops import box_cxcywh_to_xyxy, box_iou

MODES = ("ignore", "reweight", "drop")


def instance_scores(
    outputs: dict[str, Tensor], target: dict[str, Any], *, iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of one image's boxes and relationships (see the module docstring).

    Args:
        outputs: one image's relation outputs (``relation_logits`` [Q, R+1], subject / object
            logits [Q, C+1] and boxes [Q, 4] cxcywh normalized; background last).
        target: ``boxes`` [N, 4] cxcywh normalized, ``labels`` [N], ``relations`` [M, 3].
        iou: least IoU of a prediction with the box it confirms.

    Returns:
        (float64 [N] box scores, float64 [M] relationship scores), each in [0, 1].
    """
    boxes = box_cxcywh_to_xyxy(target["boxes"].float())
    labels, relations = target["labels"].long(), target["relations"].long()
    ious, box_scores = {}, torch.zeros(len(labels))
    for slot in ("subject", "object"):
        pred = box_cxcywh_to_xyxy(outputs[f"relation_{slot}_boxes"].float())
        ious[slot] = box_iou(pred, boxes)[0].nan_to_num(0.0)  # [Q, N]
        probs = outputs[f"relation_{slot}_logits"].float().softmax(-1)[:, labels]  # [Q, N]
        confirmed = torch.where(ious[slot] >= iou, probs.nan_to_num(0.0), 0.0).max(dim=0).values
        box_scores = torch.maximum(box_scores, confirmed)
    if len(relations) == 0:
        return box_scores.double().numpy(), np.zeros(0)
    s, o, p = relations.unbind(1)
    localized = torch.minimum(ious["subject"][:, s], ious["object"][:, o]) >= iou  # [Q, M]
    predicates = outputs["relation_logits"].float()[:, :-1].softmax(-1)[:, p]  # [Q, M]
    confirmed = torch.where(localized, predicates.nan_to_num(0.0), 0.0)
    return box_scores.double().numpy(), confirmed.max(dim=0).values.double().numpy()


@torch.no_grad()
def score_file(
    model: nn.Module, dataset: RelCocoDataset, *, device: torch.device, batch_size: int, iou: float
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Image id -> (box scores, relationship scores), boxes and relations in file order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_relations)
    scores = {}
    for batch in loader:
        outputs = model(batch_images(batch, device), batch["pixel_mask"].to(device))
        for b, target in enumerate(batch["targets"]):
            single = {k: v[b].cpu() for k, v in outputs.items() if isinstance(v, Tensor)}
            scores[int(target["image_id"])] = instance_scores(single, target, iou=iou)
    return scores


def _by_image(data: dict[str, Any]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Positions of each image's annotations and relationships, in file order."""
    boxes: dict[int, list[int]] = defaultdict(list)
    image_of = {}
    for k, ann in enumerate(data["annotations"]):
        boxes[ann["image_id"]].append(k)
        image_of[ann["id"]] = ann["image_id"]
    relations: dict[int, list[int]] = defaultdict(list)
    for k, rel in enumerate(data["relationships"]):
        relations[image_of[rel["subject_id"]]].append(k)
    return boxes, relations


def apply_filter(
    data: dict[str, Any],
    scores: dict[int, tuple[np.ndarray, np.ndarray]],
    *,
    mode: str,
    score: float,
    weight: float = 0.5,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The filtered copy of a parsed relcoco file, and the report.

    Args:
        data: the parsed input (not modified).
        scores: from :func:`score_file`; an image without scores keeps everything.
        mode: ``ignore``, ``reweight`` or ``drop``.
        score: instances scoring below it are doubtful.
        weight: ``reweight``'s factor on a doubtful instance's ``loss_weight``.

    Returns:
        (output data, report: per class and per predicate name ``kept`` / ``changed`` /
        ``dropped``, and the doubtful annotation ids and relationship positions).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = copy.deepcopy(data)
    boxes, relations = _by_image(data)
    doubtful_boxes, doubtful_rels = set(), set()
    for image_id, (box_scores, rel_scores) in scores.items():
        doubtful_boxes |= {boxes[image_id][j] for j in np.flatnonzero(box_scores < score)}
        doubtful_rels |= {relations[image_id][j] for j in np.flatnonzero(rel_scores < score)}
    dropped_ids = {data["annotations"][k]["id"] for k in doubtful_boxes} if mode == "drop" else ()
    for positions, entries in (
        (doubtful_boxes, out["annotations"]),
        (doubtful_rels, out["relationships"]),
    ):
        for k in positions:
            if mode == "ignore":
                entries[k]["ignore"] = True
            elif mode == "reweight":
                entries[k]["loss_weight"] = float(entries[k].get("loss_weight", 1.0)) * weight
    report = _report(data, doubtful_boxes, doubtful_rels, dropped_ids, mode)
    if mode == "drop":
        out["annotations"] = [
            a for k, a in enumerate(out["annotations"]) if k not in doubtful_boxes
        ]
        out["relationships"] = [
            r
            for k, r in enumerate(out["relationships"])
            if k not in doubtful_rels
            and r["subject_id"] not in dropped_ids
            and r["object_id"] not in dropped_ids
        ]
    report["doubtful_annotation_ids"] = sorted(data["annotations"][k]["id"] for k in doubtful_boxes)
    report["doubtful_relationships"] = sorted(doubtful_rels)
    return out, report


def _report(
    data: dict[str, Any], boxes: set[int], rels: set[int], dropped_ids: Any, mode: str
) -> dict[str, Any]:
    """Per class and predicate name: kept, changed (ignored or reweighted), dropped."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    predicates = {p["id"]: p["name"] for p in data["predicates"]}
    fate = "dropped" if mode == "drop" else "changed"

    def table(entries: Sequence[dict], doubtful: set[int], key: str, labels: dict) -> dict:
        counts: dict[str, dict[str, int]] = {}
        for k, entry in enumerate(entries):
            row = counts.setdefault(labels[entry[key]], {"kept": 0, "changed": 0, "dropped": 0})
            lost = (
                mode == "drop"
                and key == "predicate_id"
                and (entry["subject_id"] in dropped_ids or entry["object_id"] in dropped_ids)
            )
            row[fate if k in doubtful else "dropped" if lost else "kept"] += 1
        return counts

    return {
        "mode": mode,
        "classes": table(data["annotations"], boxes, "category_id", names),
        "predicates": table(data["relationships"], rels, "predicate_id", predicates),
    }


def filter_file(
    model: nn.Module,
    source: str | Path,
    out: str | Path,
    *,
    image_root: str | Path,
    transforms: Any,
    device: torch.device,
    batch_size: int,
    mode: str = "ignore",
    iou: float = 0.3,
    score: float = 0.1,
    weight: float = 0.5,
) -> dict[str, Any]:
    """Score ``source`` with ``model``, write the filtered file to ``out`` and its report
    beside it; returns the report.

    Raises:
        ValueError: ``out`` is ``source``, or a bad mode / threshold.
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the input file; the input is never modified")
    if not (0 < iou <= 1 and 0 <= score <= 1 and weight >= 0):
        raise ValueError(
            f"need 0 < --iou <= 1, 0 <= --score <= 1 and --weight >= 0, got {iou}, {score}, "
            f"{weight}"
        )
    dataset = RelCocoDataset(source, image_root, transforms=transforms, check_files=True)
    scores = score_file(model, dataset, device=device, batch_size=batch_size, iou=iou)
    filtered, report = apply_filter(
        load_relcoco_json(source), scores, mode=mode, score=score, weight=weight
    )
    report.update(
        source=str(source),
        image_root=str(Path(image_root).resolve()),
        iou=iou,
        score=score,
        weight=weight,
    )
    atomic_write_json(out, filtered)
    atomic_write_json(out.with_name(f"{out.stem}.report.json"), report)
    return report


def filter_with_run(
    run: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    image_root: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``realsynth data filter``: :func:`filter_file` with the model of a run folder or
    checkpoint (its ``best.pt`` when the folder has one, else ``last.pt``).

    Raises:
        ValueError: the source is not a relcoco file (one line, as ``data check`` names the
            problem), or its classes or predicates are not the run's.
    """
    from realsynth.training.data_setup import eval_transforms
    from realsynth.training.reopen import load_run_model

    classes, predicates = _relcoco_labels(source)  # before the model: a wrong file fails fast
    loaded = load_run_model(run)
    data = loaded.data
    if classes != list(data.classes) or predicates != list(data.predicates):
        raise ValueError(
            f"{source}: its classes / predicates are not those of the run {run} "
            f"({data.classes} / {data.predicates})"
        )
    root = Path(image_root) if image_root is not None else Path(source).parent / "images"
    return filter_file(
        loaded.model,
        source,
        out,
        image_root=root,
        transforms=eval_transforms(loaded.cfg),
        device=loaded.device,
        batch_size=loaded.cfg.TEST.IMS_PER_BATCH,
        **options,
    )


def _relcoco_labels(source: str | Path) -> tuple[list[str], list[str]]:
    """The class and predicate names of a relcoco file, by 0-based index.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or a problem of the whole file (``invalid_file`` when it is not
            relcoco at all), named in one line with the code ``realsynth data check`` gives it.
    """
    index, findings = index_relcoco(load_relcoco_json(source), source)
    problems = findings.file_errors
    if index is None or problems:
        first = problems[0]
        where = "" if first.location == str(source) else f" {first.location}:"
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ValueError(
            f"{source}: {first.code}:{where} {first.message}{more}; "
            f"`realsynth data check {source}` lists every problem"
        )
    return list(index.classes), list(index.predicates)


def format_filter_report(report: dict[str, Any]) -> str:
    """The report as two small tables (boxes per class, relationships per predicate)."""
    fate = "dropped" if report["mode"] == "drop" else report["mode"] + "d"
    lines = []
    for title, key in (("class", "classes"), ("predicate", "predicates")):
        lines += [f"| {title} | kept | {fate} | dropped with a box |", "|---|---:|---:|---:|"]
        for name, row in sorted(report[key].items()):
            changed = row["dropped"] if report["mode"] == "drop" else row["changed"]
            extra = 0 if report["mode"] == "drop" else row["dropped"]
            lines.append(f"| {name} | {row['kept']} | {changed} | {extra} |")
        lines.append("")
    return "\n".join(lines).rstrip()
