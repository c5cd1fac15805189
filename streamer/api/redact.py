"""Keeps credentials out of the logs: the access log prints paths, and paths can carry
``?token=`` (a view token in a viewer's URL, an API key on a browser's WebSocket)."""

from __future__ import annotations

import logging
import re
from typing import Any

SECRET = re.compile(r"((?:[?&](?:token|access_token|api_key)=)|(?:bearer\s+))[^&\s\"']+", re.I)
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


def scrub(text: str) -> str:
    return SECRET.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Rewrites a record's message and string arguments with the secrets replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _scrub_arg(v) for k, v in record.args.items()}
        return True


def _scrub_arg(value: Any) -> Any:
    return scrub(value) if isinstance(value, str) else value


def install() -> None:
    """Filter every handler of the root and uvicorn loggers (a handler's filter sees the
    records its logger's children propagate too). Call it after uvicorn configured logging."""
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactTokens) for f in handler.filters):
                handler.addFilter(RedactTokens())
