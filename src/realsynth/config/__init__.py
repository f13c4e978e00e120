"""What the user asked for: the config schema, loading with overrides, checks, schedules and the
mix of sources, translated to plain values by ``realsynth.training.build``."""

from realsynth.config.load import ConfigError, load_config, to_yaml

__all__ = ["ConfigError", "load_config", "to_yaml"]
