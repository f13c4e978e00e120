"""SpeaQ's config keys: what they build, where the frequencies come from, what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import tiny_config

from realsynth.config import ConfigError, load_config
from realsynth.modeling.one_to_many import QualityAwareMatcher
from realsynth.modeling.predicate_groups import split_by_frequency
from realsynth.training.build_model import build_model_and_criterion, predicate_counts
from realsynth.training.data_setup import build_data

SPEAQ_DEMO = Path(__file__).resolve().parents[2] / "configs" / "speaq_demo.yaml"
DEMO = SPEAQ_DEMO.with_name("demo.yaml")
TINY_MODEL = ("MODEL.NUM_QUERIES=12", "MODEL.D_MODEL=32", "MODEL.BACKBONE.CHANNELS=[8,16,32]")


def _speaq_demo(tmp_path, demo_root, *overrides):
    base = tiny_config(tmp_path, demo_root=demo_root)
    demo = base.DATASETS.DEMO
    sizes = [f"DATASETS.DEMO.{k}={demo[k]}" for k in demo if demo[k] is not None]
    return load_config(SPEAQ_DEMO, [*sizes, *TINY_MODEL, f"OUTPUT_DIR={tmp_path}/run", *overrides])


def test_the_speaq_demo_config_builds_speaqs_matcher(tmp_path, demo_root):
    cfg = _speaq_demo(tmp_path, demo_root)
    data = build_data(cfg)
    model, criterion = build_model_and_criterion(cfg, data, "cpu")
    assert model.num_queries == 24  # NUM_QUERIES 12 x MULTIPLY_QUERY 2
    matcher = criterion.matcher
    assert isinstance(matcher, QualityAwareMatcher)
    assert (matcher.scheme, matcher.top_k, matcher.combine) == ("dynamic", 4, "max")
    assert type(matcher.scheme) is str and type(matcher.combine) is str  # no config types
    assert matcher.predicate_weight == -0.5
    assert matcher.groups.query_group.numel() == 24 and len(matcher.groups.members) == 4
    # The groups follow the real sources' predicate counts, not the synthetic ones.
    real = predicate_counts(cfg, data)
    assert matcher.groups.members == split_by_frequency(real, 4)
    real_only = [ds for ds, n in zip(data.train, data.names) if data.kinds[n] == "real"]
    counted = sum(len(ds.annotation(i)["relations"]) for ds in real_only for i in range(len(ds)))
    assert real.sum() == counted
    assert criterion.predicate_class_weights[:-1].min() >= 1.0  # frequency weights, >= 1


def test_frequencies_of_all_sources_when_asked(tmp_path, demo_root):
    cfg = _speaq_demo(tmp_path, demo_root, "MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE=all")
    data = build_data(cfg)
    real = _speaq_demo(tmp_path, demo_root)
    assert predicate_counts(cfg, data).sum() > predicate_counts(real, data).sum()


def test_one_to_one_without_the_speaq_keys(tmp_path, demo_root):
    cfg = tiny_config(tmp_path, demo_root=demo_root)
    _, criterion = build_model_and_criterion(cfg, build_data(cfg), "cpu")
    assert type(criterion.matcher).__name__ == "HungarianMatcher"
    assert criterion.match_independent


def test_unsupported_and_impossible_speaq_settings_are_one_line_errors(tmp_path, demo_root):
    with pytest.raises(ConfigError, match="ONLY_PREDICATE_MULTIPLY is not supported"):
        load_config(None, ["MODEL.SPEAQ.ONLY_PREDICATE_MULTIPLY=true"])
    with pytest.raises(ConfigError, match="dynamic needs MATCH_INDEPENDENT=true"):
        load_config(
            None, ["MODEL.SPEAQ.ONE2MANY_SCHEME=dynamic", "MODEL.SPEAQ.MATCH_INDEPENDENT=false"]
        )
    with pytest.raises(ConfigError, match="ONE2MANY_SCHEME must be one of none, static, dynamic"):
        load_config(None, ["MODEL.SPEAQ.ONE2MANY_SCHEME=many"])
    cfg = _speaq_demo(tmp_path, demo_root, "MODEL.SPEAQ.NUM_GROUPS=6")
    with pytest.raises(ConfigError) as info:
        build_model_and_criterion(cfg, build_data(cfg), "cpu")
    assert str(info.value) == (
        "MODEL.SPEAQ.USE_GROUP_MASK: 6 predicate groups for 5 predicates: group(s) [5] get no "
        "predicate; lower MODEL.SPEAQ.NUM_GROUPS=6 to at most 5 (with MODEL.NUM_QUERIES x "
        "MODEL.SPEAQ.MULTIPLY_QUERY = 12 x 2 = 24 relation queries)"
    )


def test_too_few_queries_for_the_groups_names_the_groups_and_both_ways_out(tmp_path, demo_root):
    # The demo's real predicate counts give 4 groups of 37, 18, 17 and 34 relations; 2 x 1
    # queries leave the two most frequent groups without one (no predicate is "too rare").
    cfg = _speaq_demo(tmp_path, demo_root, "MODEL.NUM_QUERIES=1")
    data = build_data(cfg)
    counts = predicate_counts(cfg, data)
    assert [sum(counts[r] for r in g) for g in split_by_frequency(counts, 4)] == [37, 18, 17, 34]
    with pytest.raises(ConfigError) as info:
        build_model_and_criterion(cfg, data, "cpu")
    message = str(info.value)
    assert message.startswith(
        "MODEL.SPEAQ.USE_GROUP_MASK: 2 queries for 4 predicate groups: group(s) [0, 1] get no "
        "query (shares of the relations 0: "
    )
    assert message.endswith(
        "; lower MODEL.SPEAQ.NUM_GROUPS=4 to at most 1, or raise the relation queries "
        "(MODEL.NUM_QUERIES x MODEL.SPEAQ.MULTIPLY_QUERY = 1 x 2 = 2) to at least 7"
    )
    assert "\n" not in message and "rare" not in message
    # What it proposes builds.
    for fix in ("MODEL.SPEAQ.NUM_GROUPS=1", "MODEL.NUM_QUERIES=4"):
        build_model_and_criterion(_speaq_demo(tmp_path, demo_root, fix), data, "cpu")


def test_the_demo_trains_with_speaqs_recipe_and_no_config_file_with_one_to_one_matching():
    demo, speaq = load_config(DEMO), load_config(SPEAQ_DEMO, ["OUTPUT_DIR=runs/demo"])
    assert demo == speaq  # make demo trains exactly configs/speaq_demo.yaml
    plain = load_config(None, [])
    assert plain.MODEL.SPEAQ.ONE2MANY_SCHEME == "none" and not plain.MODEL.SPEAQ.USE_GROUP_MASK
    assert plain.MODEL.CRITERION.PREDICATE_CLASS_WEIGHTS != "frequency"
    assert plain.DATASETS.MULTI_DATASET == demo.DATASETS.MULTI_DATASET  # the same mix
