"""Scene-Graph-Benchmark metrics and the scoring pass over validation sources, with the
per-image records that compare and the diagnostics read."""
