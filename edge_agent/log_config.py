"""Log levels of every command: `--log-level`, `[agent] log_level` and `[agent.log_levels]`, and the handler setup."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence

import orjson

#: The level names the command line and the config accept (in any case).
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Protocol libraries that log every service call or frame at INFO/DEBUG: they log at WARNING (or at the
#: chosen level if that is higher) unless a per-logger level names them.
QUIET_LIBRARIES = ("asyncua", "pymodbus")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def level_name(text: object) -> str:
    """`text` as one of LEVELS (any case accepted); ValueError listing them otherwise."""
    name = text.strip().upper() if isinstance(text, str) else ""
    if name not in LEVELS:
        raise ValueError(f"unknown log level; use one of {', '.join(LEVELS)}")
    return name


def cli_level(text: str) -> tuple[str | None, str]:
    """One `--log-level` value, `LEVEL` or `LOGGER=LEVEL`, as (logger or None for all, level name)."""
    logger, sep, level = text.rpartition("=")
    try:
        name = level_name(level)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown log level {level!r}; use one of {', '.join(LEVELS)} (any case), "
            "or LOGGER=LEVEL for one logger"
        ) from None
    if sep and not logger.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give the logger's name before '=', e.g. asyncua=INFO")
    return (logger.strip() or None) if sep else None, name


def add_log_level_option(parser: argparse.ArgumentParser, default: str) -> None:
    """Add the repeatable `--log-level [LOGGER=]LEVEL` option to a command's parser; `default` says what applies without it."""
    parser.add_argument(
        "--log-level",
        type=cli_level,
        action="append",
        metavar="[LOGGER=]LEVEL",
        help=f"log level: {', '.join(LEVELS)} (default: {default}); LOGGER=LEVEL sets one logger and "
        "its children, e.g. edge_agent.drivers.opcua=DEBUG (repeatable); "
        f"{' and '.join(QUIET_LIBRARIES)} stay at WARNING unless named",
    )


def split_cli_levels(given: Sequence[tuple[str | None, str]] | None) -> tuple[str | None, dict[str, str]]:
    """The parsed `--log-level` values as (level for all or None, {logger: level}); the last one given wins."""
    level: str | None = None
    loggers: dict[str, str] = {}
    for logger, name in given or ():
        if logger is None:
            level = name
        else:
            loggers[logger] = name
    return level, loggers


def apply_levels(level: str, loggers: Mapping[str, str] | None = None) -> None:
    """Set the root logger to `level`, the quiet libraries to WARNING or above, then each named logger."""
    loggers = loggers or {}
    logging.getLogger().setLevel(level)
    floor = max(logging.WARNING, logging.getLevelNamesMapping()[level])
    for library in QUIET_LIBRARIES:
        if library not in loggers:
            logging.getLogger(library).setLevel(floor)
    for name, value in loggers.items():
        logging.getLogger(name).setLevel(value)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and the traceback, if any, as `exc`)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, str] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def setup_logging(level: str = "INFO", loggers: Mapping[str, str] | None = None, fmt: str = "text") -> None:
    """One stderr handler (text or JSON lines) on the root logger unless it has one, then the levels (see apply_levels)."""
    root = logging.getLogger()
    if not root.handlers:  # a command called in a process that logs already (a test) keeps its handlers
        handler = logging.StreamHandler()
        handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
        root.addHandler(handler)
    apply_levels(level, loggers)
