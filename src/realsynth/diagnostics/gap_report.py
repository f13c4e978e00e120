"""``realsynth gap RUN``: how far each synthetic source is from the real one, in labels, boxes,
appearance and recall (``gap.md``, ``gap.json`` and PNG plots in the run folder).

- Labels and boxes, from every source's training annotations: class and predicate frequencies,
  box size (square root of the area over the image's), aspect (log2 of width over height),
  centre position, objects and relations per image; each compared with the real source by the
  Jensen-Shannon divergence (histograms with fixed bins for the continuous ones).
- Appearance, on up to ``feature_images`` validation (else training) images per source, read
  without augmentation: the trained model's backbone features, averaged over the unpadded
  positions; a cross-validated logistic domain classifier (real vs each synthetic source, ROC
  AUC with a 95% interval) and the Fréchet distance of the two feature sets.
- Recall: per-predicate R@50 of every validation source, side by side, from the run's
  ``eval_records.npz`` (what the synthetic data does not teach shows up here).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from realsynth.data.batch_transport import batch_images
from realsynth.data.collate import collate_relations
from realsynth.diagnostics.domain_gap import domain_classifier_auc, frechet_distance, js_divergence
from realsynth.diagnostics.gap_plots import format_gap_markdown, plot_gap
from realsynth.evaluation.records import EVAL_RECORDS
from realsynth.modeling.backbone import downsample_mask, masked_mean
from realsynth.training.reopen import RunModel, load_run_model
from realsynth.utils.atomic import atomic_write_json, atomic_write_text

BINS = {
    "size": np.linspace(0, 1, 21),
    "aspect": np.linspace(-3, 3, 25),
    "center_x": np.linspace(0, 1, 11),
    "center_y": np.linspace(0, 1, 11),
    "objects_per_image": np.arange(0, 31) - 0.5,
    "relations_per_image": np.arange(0, 51) - 0.5,
}


def label_statistics(dataset: Any, num_classes: int, num_predicates: int) -> dict[str, Any]:
    """Counts and histograms (:data:`BINS`) of a dataset's annotations (``annotation(i)``:
    xyxy pixel ``boxes``, ``labels``, ``relations``, ``orig_size`` (h, w))."""
    classes, predicates = np.zeros(num_classes), np.zeros(num_predicates)
    values: dict[str, list[np.ndarray]] = {key: [] for key in BINS}
    for i in range(len(dataset)):
        ann = dataset.annotation(i)
        height, width = (float(v) for v in ann["orig_size"])
        boxes = ann["boxes"].double().numpy().reshape(-1, 4)
        w = np.clip(boxes[:, 2] - boxes[:, 0], 1e-6, None)
        h = np.clip(boxes[:, 3] - boxes[:, 1], 1e-6, None)
        values["size"].append(np.sqrt(w * h / (width * height)))
        values["aspect"].append(np.log2(w / h))
        values["center_x"].append((boxes[:, 0] + w / 2) / width)
        values["center_y"].append((boxes[:, 1] + h / 2) / height)
        values["objects_per_image"].append(np.array([len(boxes)]))
        values["relations_per_image"].append(np.array([len(ann["relations"])]))
        classes += np.bincount(ann["labels"].numpy(), minlength=num_classes)[:num_classes]
        predicates += np.bincount(ann["relations"][:, 2].numpy(), minlength=num_predicates)[
            :num_predicates
        ]
    hists = {
        key: np.histogram(np.concatenate(parts) if parts else [], bins=BINS[key])[0]
        for key, parts in values.items()
    }
    return {
        "classes": classes,
        "predicates": predicates,
        "histograms": hists,
        "images": len(dataset),
    }


#: Why the appearance section is missing for a model that offers no image features.
NO_FEATURES = (
    "not available for this model: it offers neither a pooled_features(images, pixel_mask) "
    "method nor a backbone attribute"
)


def offers_features(model: torch.nn.Module) -> bool:
    """Whether the model gives image features: ``pooled_features(images, pixel_mask)`` -> [B, D],
    or a ``backbone`` mapping images [B, 3, H, W] to a feature map [B, C, h, w]."""
    return hasattr(model, "pooled_features") or hasattr(model, "backbone")


def _pool(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, D] image features: the model's own pooling, or its backbone's feature map averaged
    over each image's unpadded positions."""
    if hasattr(model, "pooled_features"):
        return model.pooled_features(images, mask)
    features = model.backbone(images)
    return masked_mean(features, ~downsample_mask(mask, features.shape[-2:]))


@torch.no_grad()
def pooled_features(
    run: RunModel, dataset: Dataset, *, limit: int, batch_size: int, seed: int = 0
) -> np.ndarray:
    """float64 [N, D] image features (see :func:`_pool`) of up to ``limit`` images drawn at
    random (seeded)."""
    picks = np.sort(np.random.default_rng([seed, 5]).permutation(len(dataset))[:limit])
    loader = DataLoader(
        Subset(dataset, picks.tolist()), batch_size=batch_size, collate_fn=collate_relations
    )
    out = []
    for batch in loader:
        images, mask = batch_images(batch, run.device), batch["pixel_mask"].to(run.device)
        out.append(_pool(run.model, images, mask).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def _without_augmentation(dataset: Dataset, transforms: Any) -> Dataset:
    view = copy.copy(dataset)
    view.transforms = transforms
    return view


def gap_report(run_dir: str | Path, *, feature_images: int = 500) -> dict[str, Any]:
    """Compute the report of a finished run, write it into the run folder and return it.

    Raises:
        ValueError: the run trained on no real source, or on one source only (nothing to
            compare); nothing is written then.
    """
    from realsynth.training.data_setup import eval_transforms

    run_dir = Path(run_dir)
    run = load_run_model(run_dir)
    data, names = run.data, run.data.names
    real = next((n for n in names if run.data.kinds[n] == "real"), None)
    if real is None:
        raise ValueError(f"{run_dir}: the run has no real source to compare with")
    if len(names) < 2:
        raise ValueError(
            f"{run_dir}: the run trained on one source only ('{real}'), so there is no second "
            "(synthetic) source to compare with; `realsynth gap` needs a run trained on a real "
            "and a synthetic source"
        )
    stats = {
        n: label_statistics(ds, len(data.classes), len(data.predicates))
        for n, ds in zip(names, data.train)
    }
    transforms = eval_transforms(run.cfg)
    features = {n: np.zeros((0, 0)) for n in names}
    for n, ds in zip(names, data.train):
        if not offers_features(run.model):
            break
        images = data.val.get(n) or _without_augmentation(ds, transforms)
        features[n] = pooled_features(
            run, images, limit=feature_images, batch_size=run.cfg.TEST.IMS_PER_BATCH
        )
    report: dict[str, Any] = {"real": real, "sources": {}, "classes": data.classes}
    report["predicates"] = data.predicates
    if not offers_features(run.model):
        report["appearance"] = NO_FEATURES
    for n in names:
        entry = _source_entry(stats[n], stats[real], features[n], features[real], n == real)
        report["sources"][n] = {"kind": data.kinds[n], **entry}
    report["recall"] = _predicate_recall(run_dir, data.predicates)
    out = run_dir
    atomic_write_json(out / "gap.json", report)
    plots = plot_gap(report, out)
    atomic_write_text(out / "gap.md", format_gap_markdown(report, plots))
    return report


def _source_entry(
    stats: dict, real: dict, features: np.ndarray, real_features: np.ndarray, is_real: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "images": stats["images"],
        "class_counts": stats["classes"].tolist(),
        "predicate_counts": stats["predicates"].tolist(),
        "histograms": {k: v.tolist() for k, v in stats["histograms"].items()},
    }
    if is_real:
        return entry
    js = {"classes": js_divergence(stats["classes"], real["classes"])}
    js["predicates"] = js_divergence(stats["predicates"], real["predicates"])
    for key, hist in stats["histograms"].items():
        if hist.sum() and real["histograms"][key].sum():
            js[key] = js_divergence(hist, real["histograms"][key])
    entry["js_divergence"] = js
    folds = min(5, len(features), len(real_features))
    if folds >= 2:
        entry["domain_classifier"] = domain_classifier_auc(real_features, features, folds=folds)
        entry["frechet_distance"] = frechet_distance(real_features, features)
    return entry


def _predicate_recall(run_dir: Path, predicates: list[str]) -> dict[str, list[float | None]]:
    """Per-predicate R@50 of every validation source (None where a predicate never occurs)."""
    from realsynth.evaluation.records import load_records

    path = run_dir / EVAL_RECORDS
    if not path.exists():
        return {}
    template, records = load_records(path)
    k = template.ks.index(50) if 50 in template.ks else len(template.ks) - 1
    out = {}
    for source, rows in records.items():
        recall = template.per_predicate_recall(rows)[k]
        out[source] = [None if np.isnan(v) else float(v) for v in recall[: len(predicates)]]
    return out
