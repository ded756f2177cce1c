"""The run-metrics table: written by every classifier job, read by aggregate."""

RUN_COLUMNS = ["dataset", "method", "seed", "shots", "step", "split", "metric", "value"]
