"""A Snakemake logger plugin for the tests: the jobs a run reports, as JSON lines.

`snakemake -n --logger dafusion-tests --logger-dafusion-tests-jobs FILE` writes to FILE one
JSON object per job the dry run would run, from Snakemake's JOB_INFO log events (the records
its text output is formatted from): jobid, rule, input, output, log, wildcards, resources,
threads, reason. A last line {"closed": true} says that Snakemake closed the handler, so no
job is missing. Found by Snakemake's plugin registry on PYTHONPATH (tests/helpers.py adds
tests/plugins), the way an installed snakemake-logger-plugin-* package is.
"""

import json
from dataclasses import dataclass, field
from logging import LogRecord
from typing import Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

FIELDS = ("jobid", "input", "output", "log", "wildcards", "threads", "reason")


@dataclass
class LogHandlerSettings(LogHandlerSettingsBase):
    # Optional[...], not `str | None`: Snakemake's CLI calls the annotation to parse the value.
    jobs: Optional[str] = field(  # noqa: UP045
        default=None,
        metadata={"help": "File to write the jobs to, one JSON object a line", "required": True},
    )


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        self.baseFilename = self.settings.jobs
        self._file = open(self.settings.jobs, "w")  # noqa: SIM115 (closed in close())

    def emit(self, record: LogRecord) -> None:
        if getattr(record, "event", None) != LogEvent.JOB_INFO or self._file.closed:
            return
        job = {name: getattr(record, name, None) for name in FIELDS}
        job["rule"] = record.rule_name
        resources = getattr(record, "resources", None)
        job["resources"] = dict(resources.items()) if resources is not None else {}
        self._file.write(json.dumps(job, default=str) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.write(json.dumps({"closed": True}) + "\n")
            self._file.close()
        super().close()

    @property
    def writes_to_stream(self) -> bool:
        return False

    @property
    def writes_to_file(self) -> bool:
        return True

    @property
    def has_filter(self) -> bool:
        return True  # none: every JOB_INFO event, whatever --quiet hides from the text output

    @property
    def has_formatter(self) -> bool:
        return True  # none needed: emit() writes JSON

    @property
    def needs_rulegraph(self) -> bool:
        return False
