"""The default demo set's sizes and the named presets of its synthetic damage: one place for the
CLI, the config and the generator.

Kept free of heavy imports so that ``realsynth --help`` and ``config show`` stay instant.
"""

from __future__ import annotations

#: Images per domain and split. Validation sets of 500 make a 0.03 difference in R@50
#: detectable across seeds; the real test split is never used for model selection.
DEMO_SIZES = {
    "real_train": 300,
    "real_val": 500,
    "synthetic_train": 3000,
    "synthetic_val": 500,
    "real_test": 500,
}
#: The knobs of the synthetic domain's damage with their ``mild`` values (the demo's default:
#: 10% wrong classes and predicates, the flat rendering); realsynth.data.demo_damage says what
#: each one does.
DEMO_DAMAGE_DEFAULTS = {
    "class_noise": 0.1,
    "predicate_noise": 0.1,
    "missing_objects": 0.0,
    "missing_relations": 0.0,
    "box_noise": 0.0,
    "class_shift": 0.0,
    "predicate_shift": 0.0,
    "appearance_gap": 1.0,
    "hue_shift": 0.0,
}
#: The named presets, as changes from the ``mild`` values. ``noisy``: many wrong, missing and
#: misplaced labels. ``shifted``: mild labels, other label frequencies, a strong appearance gap.
DEMO_PRESET_CHANGES = {
    "mild": {},
    "noisy": {
        "class_noise": 0.3,
        "predicate_noise": 0.3,
        "missing_objects": 0.2,
        "missing_relations": 0.3,
        "box_noise": 0.15,
    },
    "shifted": {"class_shift": 0.8, "predicate_shift": 0.7, "hue_shift": 180.0},
}
