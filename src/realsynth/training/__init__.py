"""One run: build it from the config, train it step by step, keep its run folder and
checkpoints, and reopen a finished run."""
