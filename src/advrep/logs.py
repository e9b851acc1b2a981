"""Send a job's stdout/stderr and Python logging to its log file (rule scripts call :func:`to_file` first)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def to_file(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
