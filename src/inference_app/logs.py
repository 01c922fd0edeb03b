"""Log configuration: JSON lines on stderr (python-json-logger), or plain text for a terminal."""

from __future__ import annotations

from typing import Any

#: Fields of every JSON line besides the ones a call adds with ``extra=``.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
#: The logger of one line per answered request.
ACCESS_LOGGER = "inference_app.access"


def logging_config(log_format: str = "json", level: str = "INFO") -> dict[str, Any]:
    """Return a :func:`logging.config.dictConfig` mapping for the app and Gunicorn.

    Gunicorn's own error log (``gunicorn.error``) and the app's loggers write to stderr in
    the same form; Gunicorn's access log is left off, since the app writes a richer access
    line (logger :data:`ACCESS_LOGGER`) with the request id, model, rows and stage timings.

    :param log_format: ``"json"`` (one JSON object per line, keys renamed to ``time``,
        ``level``, ``logger``, ``pid``, ``message``) or ``"text"``.
    :param level: the least severe level written, e.g. ``"INFO"``.
    :raises ValueError: an unknown ``log_format``.
    """
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "process": "pid",
            },
            "timestamp": False,
        }
    elif log_format == "text":
        formatter = {"format": TEXT_FORMAT}
    else:
        raise ValueError(f"log format must be 'json' or 'text'; got {log_format!r}")
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def one_line(message: str) -> str:
    """Return ``message`` on one line, for a log line or a command's ``Error:`` line.

    Each further line, stripped, is joined to the first: after a space when the first ends
    with a colon (a heading such as ``refused model bundles:``), else after ``"; "``; the
    further lines are joined with ``"; "``. Blank lines are dropped.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    head, *rest = lines
    if not rest:
        return head
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest)
