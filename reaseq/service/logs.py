"""Logging for failures that repeat per request: one line per cause per interval, not per call."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("reaseq.service")
LOG_EVERY_S = 10.0  # an outage fails every request: log its cause once per this interval
_last_logged: dict[str, float] = {}


def log_throttled(key: str, message: str, *args: object) -> None:
    """One warning per `key` per LOG_EVERY_S: an outage must not write a line per request."""
    now = time.monotonic()
    if now - _last_logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
        _last_logged[key] = now
        log.warning(message, *args)
