"""Many runs: compare (variants x seeds with intervals) and sweep (an Optuna search of the mix),
with their reports, search space and statistics."""
