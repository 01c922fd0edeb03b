"""Log configuration: JSON lines on stderr (python-json-logger), or plain text for a terminal;
and the access line's writer, which formats it with orjson straight to stderr."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

#: Fields of every JSON line besides the ones a call adds with ``extra=``.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
#: The names those fields have in a JSON line.
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
#: The logger of one line per answered request.
ACCESS_LOGGER = "inference_app.access"
_LINE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
#: This process's id (``os.getpid()`` is a system call), renewed at each fork.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


class JsonFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter, which can also make a line from its fields
    without a ``LogRecord`` (:meth:`line`), byte for byte what :meth:`format` makes of the
    record that ``logger.info(message, extra=fields)`` would create.

    Arguments as ``OrjsonFormatter``'s; :meth:`line` is only for :attr:`direct` formatters.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Whether :meth:`line` makes what :meth:`format` makes: the fields and names of
        #: :func:`logging_config`, no prefix, static or default fields, timestamp or datefmt.
        settings = ("prefix", "static_fields", "defaults", "timestamp", "datefmt")
        self.direct = (
            self._required_fields == ["asctime", "levelname", "name", "process", "message"]
            and self.rename_fields == JSON_RENAMES
            and not any(getattr(self, name, None) for name in settings)
            and not (getattr(self, "rename_fields_keep_missing", False) or self.json_indent)
        )
        self._second = -1
        self._stamp = b""
        self._heads: dict[tuple[str, str, int], bytes] = {}

    def line(self, created: float, level: str, name: str, message: str, fields: Any) -> bytes:
        """Return one JSON line, ``\\n`` ended, UTF-8: ``orjson.dumps`` of ``{"time": ...,
        "level": level, "logger": name, "pid": ..., "message": message, **fields}``, made
        from the cached bytes of its first fields (once a second) and the dump of ``fields``.

        :param created: seconds since the epoch (``time.time()``), written as
            ``logging.Formatter.formatTime`` writes it (local time, ``,`` and milliseconds).
        :param level: the level's name, ``INFO``; ``name`` the logger's name.
        :param fields: the fields after ``message``, in order (a ``dict``); none named as one
            of the first five (``logging`` forbids most of them in ``extra=``).
        """
        second = int(created)
        if second != self._second:  # strftime once a second
            stamp = time.strftime(self.default_time_format, self.converter(created))
            self._stamp = b'{"time":' + orjson.dumps(stamp)[:-1] + b","
            self._second = second
        pid = _pid[0]
        head = self._heads.get((level, name, pid))
        if head is None:
            head = self._heads[level, name, pid] = b"".join(
                (b'","level":', orjson.dumps(level), b',"logger":', orjson.dumps(name))
                + (b',"pid":', orjson.dumps(pid), b',"message":')
            )
        body = orjson.dumps(fields, default=self.json_default, option=_LINE_OPTIONS)
        return b"".join(
            (
                self._stamp,
                b"%03d" % int((created - second) * 1000),
                head,
                orjson.dumps(message),
                b"," if len(body) > 3 else b"",  # b"{}\n": no fields
                body[1:],
            )
        )


def milliseconds(seconds: float) -> float:
    """Return ``round(seconds * 1000, 3)``, the same float, in about half its time.

    ``round(x, 3)`` rounds the exact value of ``x`` to 3 decimals (half to even), then takes
    the double nearest that decimal; here ``k = round(x * 1000)`` and ``k / 1000`` (a
    correctly rounded division of an exact integer: the same nearest double). The product
    ``x * 1000`` is rounded, but rounding is monotonic and half-integers are doubles, so it
    lands on the far side of a rounding boundary only by landing on it: on a tie, or for
    values beyond 2**52, ``round`` decides.
    """
    ms = seconds * 1000
    scaled = ms * 1000
    if not -4e15 < scaled < 4e15:  # beyond 2**51 (NaN too): no exact integers to spare
        return round(ms, 3)
    nearest = round(scaled)
    if abs(scaled - nearest) == 0.5:
        return round(ms, 3)
    return nearest / 1000


class AccessLog:
    """Writes one access line per request on ``logger`` (:data:`ACCESS_LOGGER`).

    When the line would reach only the stderr handler that :func:`logging_config` installs
    (JSON lines, no filters: as under Gunicorn), it is made by :meth:`JsonFormatter.line`
    and written with one ``os.write`` to the handler's file descriptor, under the handler's
    lock, skipping ``LogRecord`` and the formatter's generic work; the bytes are the same.
    Otherwise (text lines, another or a further handler, filters: a test's log capture), it
    goes through ``logger.info`` as any other line. Either way the logger's level decides:
    ``logging.getLogger("inference_app.access").setLevel("WARNING")`` turns it off.
    One ``write`` per line: lines from several workers never interleave on a pipe (up to
    ``PIPE_BUF``, 4096 bytes on Linux) or a file opened for appending.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._stream: Any = None
        self._fd = -1

    def write(self, method: str, path: str, status: int, fields: dict[str, Any]) -> None:
        """Write the line of a request: message ``"<method> <path> <status>"``, then
        ``fields`` (the ``extra=`` of ``logger.info``); never raises for a broken stream
        (as ``logging``, it reports the error on stderr)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handler = self._direct_handler()
        if handler is not None:
            formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
            line = formatter.line(
                time.time(), "INFO", logger.name, f"{method} {path} {status}", fields
            )
            try:
                with handler.lock:  # type: ignore[union-attr]
                    handler.stream.flush()  # what others wrote on the stream goes first
                    written = os.write(self._fd, line)
                    while written < len(line):  # a signal cut the write short
                        written += os.write(self._fd, line[written:])
                return
            except (OSError, ValueError):  # stderr closed or gone: let logging report it
                pass
        logger.info("%s %s %s", method, path, status, extra=fields)

    def _direct_handler(self) -> logging.StreamHandler[Any] | None:
        """Return the one handler the line would reach if it writes JSON on a UTF-8 file
        descriptor as :meth:`write` does, else ``None``."""
        logger: logging.Logger | None = self.logger
        if self.logger.filters or logging.getLogRecordFactory() is not logging.LogRecord:
            return None
        found = None
        while logger is not None:
            for handler in logger.handlers:
                if found is not None:
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        if (
            type(found) is not logging.StreamHandler
            or found.level > logging.INFO
            or found.filters
            or found.terminator != "\n"
            or type(found.formatter) is not JsonFormatter
            or not found.formatter.direct
        ):
            return None
        if found.stream is not self._stream:
            self._fd = _utf8_fd(found.stream)
            self._stream = found.stream
        return found if self._fd >= 0 else None


def _utf8_fd(stream: Any) -> int:
    """Return the file descriptor of a text stream that writes UTF-8, else -1."""
    try:
        encoding = (stream.encoding or "").lower().replace("-", "").replace("_", "")
        return int(stream.fileno()) if encoding == "utf8" else -1
    except (AttributeError, OSError, ValueError):  # no file under it (io.StringIO)
        return -1


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
            "()": "inference_app.logs.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": dict(JSON_RENAMES),
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
