"""relcoco's relationship rules: which ``relationships`` entries are valid, and why not."""

from __future__ import annotations

from realsynth.data.problems import Findings


def index_relationships(
    findings: Findings, rels: list, image_pos: dict, where_of: dict, pred_pos: dict, images: list
) -> tuple[list[tuple[int, int, int]], list[int], list[int]]:
    """The valid relations (subject box, object box, predicate), the image of each and its
    position in ``relationships``."""
    seen: set[tuple] = set()
    relations: list[tuple[int, int, int]] = []
    owners: list[int] = []
    positions: list[int] = []
    for k, rel in enumerate(rels):
        if type(rel) is not dict:
            findings.error("invalid_file", f"relationships[{k}]", "entry is not an object")
            continue
        sub, obj, pred = rel.get("subject_id"), rel.get("object_id"), rel.get("predicate_id")
        subject, target = where_of.get(sub), where_of.get(obj)
        if (
            subject is None
            or target is None
            or pred is None
            or subject[0] != target[0]
            or ("image_id" in rel and image_pos.get(rel["image_id"]) != subject[0])
        ):
            _relationship_problem(findings, k, rel, image_pos, where_of, images)
            continue
        pos = subject[0]
        label = pred_pos.get(pred, -1)
        if label < 0:
            findings.error(
                "unknown_predicate",
                f"relationships[{k}]",
                f"predicate_id {pred!r} is not an id in 'predicates'",
                pos,
            )
            continue
        if sub == obj:
            findings.warn(
                "self_relation",
                f"relationships[{k}]",
                f"subject and object are the same annotation {sub}",
                pos,
            )
        key = (sub, obj, pred)
        if key in seen:
            findings.warn(
                "duplicate_relation", f"relationships[{k}]", f"{key} listed more than once", pos
            )
        seen.add(key)
        relations.append((subject[1], target[1], label))
        owners.append(pos)
        positions.append(k)
    return relations, owners, positions


def _relationship_problem(
    findings: Findings, k: int, rel: dict, image_pos: dict, where_of: dict, images: list
) -> None:
    """Say what is wrong with a relationship the fast path rejected."""
    where = f"relationships[{k}]"
    pos = image_pos.get(rel.get("image_id"))
    for key in ("subject_id", "object_id"):
        if pos is None and rel.get(key) in where_of:
            pos = where_of[rel[key]][0]
    missing = [key for key in ("subject_id", "object_id", "predicate_id") if key not in rel]
    if missing:
        findings.error("invalid_file", where, f"lacks {missing}", pos)
        return
    unknown = [
        f"{key} {rel[key]!r}" for key in ("subject_id", "object_id") if rel[key] not in where_of
    ]
    if unknown:
        findings.error(
            "unknown_annotation", where, f"{' and '.join(unknown)} not an annotation id", pos
        )
        return
    sub, obj = rel["subject_id"], rel["object_id"]
    s_pos, o_pos = where_of[sub][0], where_of[obj][0]
    findings.error(
        "cross_image_relation",
        where,
        f"subject {sub} is in image {images[s_pos]['id']}, object {obj} in image "
        f"{images[o_pos]['id']}, the relation says image {rel.get('image_id')!r}",
        s_pos,
    )
