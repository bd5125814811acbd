"""How every service (agent, edge, controller) logs: one setup, text or JSON lines.

JSON lines (``--log-format json``, or ``log_format = "json"`` in a service's file) are
for log shippers (Loki, Elasticsearch, journald's JSON export): one object per line with
``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the service's name, and
``exception`` when there is one. Tokens never reach a log line in either format: log
calls name a token by its name (``edgeshot.agent.auth``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
FORMATS: tuple[str, ...] = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (json.dumps escapes whatever a message holds)."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.service:
            out["service"] = self.service
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", *, service: str | None = None,
                      access_level: int = logging.INFO) -> None:
    """Log to stderr at ``level`` in ``fmt`` ("text" or "json"), replacing any earlier
    setup; aiohttp's access log at ``access_level``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(access_level)
