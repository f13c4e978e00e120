"""The default demo set's sizes and noise: one place for the CLI, the config and the generator.

Kept free of heavy imports so that ``realsynth --help`` and ``config show`` stay instant.
"""

from __future__ import annotations

#: Images per domain and split.
DEMO_SIZES = {"real_train": 300, "real_val": 100, "synthetic_train": 3000, "synthetic_val": 100}
#: Share of synthetic classes and predicates replaced by a wrong one.
DEMO_LABEL_NOISE = 0.1
