"""Snakemake 8's `--log-handler-script`: each job a run reports (for a dry run: each job it
would run) as a JSON line appended to the file $DAFUSION_TEST_JOBS names, with the fields of
the Snakemake 9 logger plugin next to this file (snakemake_logger_plugin_dafusion_tests)."""

import json
import os

FIELDS = ("jobid", "input", "output", "log", "wildcards", "threads", "reason")


def log_handler(msg: dict) -> None:
    if msg.get("level") != "job_info":
        return
    job = {name: msg.get(name) for name in FIELDS}
    job["rule"] = msg["name"]
    resources = msg.get("resources")
    job["resources"] = dict(resources.items()) if resources is not None else {}
    with open(os.environ["DAFUSION_TEST_JOBS"], "a") as out:
        out.write(json.dumps(job, default=str) + "\n")
