"""What goes into every batch and with what weight: the mixed dataset, the exact per-batch
sampler, compositions and schedules of the shares and weights, and adaptive mixing."""
