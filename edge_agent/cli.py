"""The `edge-agent` command line: check-config, read, simulate, certs, run, demo, discover."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.log_config import add_log_level_option, setup_logging, split_cli_levels

#: simulator name on the command line -> module with `main(argv) -> int`
SIMULATORS = {
    "die-casting": "edge_agent.simulators.die_casting",
    "mold-tcu": "edge_agent.simulators.mold_tcu",
    "imm": "edge_agent.simulators.imm",
    "furnace": "edge_agent.simulators.furnace",
    "forging": "edge_agent.simulators.forging",
    "welding-arc": "edge_agent.simulators.welding_arc",
    "welding-spot": "edge_agent.simulators.welding_spot",
    "plating": "edge_agent.simulators.plating",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def _check_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge_agent.config import ConfigError, config_warnings, load_config

    given = [f for f in (getattr(args, "config", None), args.file) if f is not None]
    if len(given) != 1:
        problem = (
            f"two config files given (-c {given[0]} and {given[1]}); give one"
            if given
            else "give the config file: edge-agent check-config -c FILE"
        )
        print(f"edge-agent check-config: error: {problem}", file=sys.stderr)
        return 2
    args.file = given[0]
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was started.", file=sys.stderr)
        return 2
    for warning in config_warnings(config, Path(args.file).resolve().parent):
        print(f"warning: {args.file}: {warning}", file=sys.stderr)
    print(f"OK {args.file}: {config.summary()}")
    return 0


def _delegate(module: str, function: str = "main") -> object:
    """Import a command's module only when it runs, so `check-config` stays fast and light."""
    return getattr(importlib.import_module(module), function)


def _simulate(args: argparse.Namespace) -> int:
    # `simulate imm --log-level DEBUG`: the option may also come after the machine, among its own options
    own = argparse.ArgumentParser(prog=f"edge-agent simulate {args.machine}", add_help=False)
    add_log_level_option(own, "INFO")
    later, rest = own.parse_known_args(args.args)
    given = (args.log_level or []) + (later.log_level or [])
    level, loggers = split_cli_levels(given)
    setup_logging(level or "INFO", loggers)
    main = _delegate(SIMULATORS[args.machine])
    return int(main(rest))  # type: ignore[operator]


def _read(args: argparse.Namespace) -> int:
    if args.log_level:
        level, loggers = split_cli_levels(args.log_level)
        setup_logging(level or "WARNING", loggers)
    return int(_delegate("edge_agent.commissioning", "read_command")(args))  # type: ignore[operator]


class _CertsHelp(argparse.Action):
    """`edge-agent certs --help`: the options are parsed by edge_agent.certs, so its parser prints the help."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, help="show this help message and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        """Print the certs command's own help and exit."""
        _delegate("edge_agent.certs")(["--help"])  # type: ignore[operator]


class _DiscoverHelp(_CertsHelp):
    """`edge-agent discover --help`: the protocols come from the driver registry, so its parser prints the help."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        """Print the discover command's own help and exit."""
        _delegate("edge_agent.discover", "build_parser")().parse_args(["--help"])  # type: ignore[operator]


def _certs(args: argparse.Namespace) -> int:
    return int(_delegate("edge_agent.certs")(args.args))  # type: ignore[operator]


def _run(args: argparse.Namespace) -> int:
    return int(_delegate("edge_agent.agent", "run_command")(args))  # type: ignore[operator]


def _demo(args: argparse.Namespace) -> int:
    return int(_delegate("edge_agent.demo", "demo_command")(args))  # type: ignore[operator]


def _discover(args: argparse.Namespace) -> int:
    return int(_delegate("edge_agent.discover", "discover_command")(args))  # type: ignore[operator]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Poll shop-floor machines over OPC UA and Modbus TCP, compute process-quality "
        "indicators, publish to MQTT and InfluxDB.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a config file and print a one-line summary")
    p.add_argument("-c", "--config", metavar="FILE", help="agent config (TOML)")
    p.add_argument("file", nargs="?", metavar="FILE", help="the same, without -c")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("read", help="poll every configured device once and print one JSON line per tag")
    p.add_argument("-c", "--config", required=True, help="agent config (TOML)")
    p.add_argument("--device", action="append", help="only this device (repeatable)")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wait this long for a device that refuses connections, e.g. one just started (default 10)",
    )
    p.set_defaults(func=_read)

    p = sub.add_parser("simulate", help="run a simulated machine until Ctrl-C")
    p.add_argument("machine", choices=sorted(SIMULATORS), help="which machine")
    p.add_argument("args", nargs=argparse.REMAINDER, help="simulator options (see MACHINE --help)")
    p.set_defaults(func=_simulate)

    # the catch-all argument cannot take a leading --help, and certs' own parser knows the actions
    p = sub.add_parser("certs", help="make OPC UA application certificates", add_help=False)
    p.add_argument("-h", "--help", action=_CertsHelp)
    p.add_argument("args", nargs=argparse.REMAINDER, help="see `edge-agent certs --help`")
    p.set_defaults(func=_certs)

    p = sub.add_parser(
        "run",
        help="run the agent",
        description="Run the agent until SIGTERM or Ctrl-C, which flush the outboxes for up to "
        "agent.shutdown_timeout; a second one stops at once (exit code 128 + the signal: 130 for Ctrl-C, "
        "143 for SIGTERM) and the outbox keeps what is unsent for the next start. SIGHUP reloads the config.",
    )
    p.add_argument("-c", "--config", required=True, help="agent config (TOML)")
    p.add_argument("--once", action="store_true", help="poll once, print the records as JSON lines, exit")
    p.add_argument("--web", metavar="HOST:PORT", help="serve the live web page there ([web] in the config)")
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="run simulated machines and the agent, with a live view")
    p.add_argument("--mqtt-url", help="publish to this broker instead of an embedded one")
    p.add_argument(
        "--broker-port", type=int, default=0, help="port of the embedded broker (default: a free one)"
    )
    p.add_argument("--influx-url", help="also write to this InfluxDB (v2 write API)")
    p.add_argument(
        "--influx-token",
        help="InfluxDB 2 API token that may write to the bucket (default: $INFLUX_TOKEN; "
        "the environment is better: a command line shows in ps)",
    )
    p.add_argument("--influx-org", default="shopfloor", help="InfluxDB organization")
    p.add_argument("--influx-bucket", default="process", help="InfluxDB bucket")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--speed", type=float, default=20.0, help="simulated time per wall-clock second")
    p.add_argument(
        "--machines",
        metavar="KIND,...",
        help="the simulated machines to run, comma-separated, or all: imm, die-casting, mold-tcu, furnace, "
        "forging, welding-arc, welding-spot, plating (default: all; with the agent about a third of a core)",
    )
    p.add_argument("--fault", action="append", default=[], help="inject a fault, e.g. imm:check_ring_wear")
    p.add_argument(
        "--fault-after",
        type=float,
        metavar="SECONDS",
        help="switch the --fault faults on after SECONDS, not at start",
    )
    p.add_argument(
        "--web", metavar="HOST:PORT", help="where the live web page listens (default 127.0.0.1:8080)"
    )
    p.add_argument("--plain", action="store_true", help="print summary lines instead of the live view")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the demo's temporary folder (agent.toml, outbox) after it stops",
    )
    p.set_defaults(func=_demo)

    # the protocols and their options come from the drivers (registry), so edge_agent.discover parses them
    p = sub.add_parser("discover", help="browse a machine and print a config skeleton", add_help=False)
    p.add_argument("-h", "--help", action=_DiscoverHelp)
    p.add_argument("args", nargs=argparse.REMAINDER, help="PROTOCOL TARGET [options]; see --help")
    p.set_defaults(func=_discover)

    p = sub.add_parser("schema", help="print the config file's JSON Schema, for editors")
    p.set_defaults(func=lambda args: _delegate("edge_agent.config", "schema_command")(args))  # type: ignore[operator]

    for name, default in LOG_LEVEL_DEFAULTS.items():
        add_log_level_option(sub.choices[name], default)
    for p in sub.choices.values():
        p.formatter_class = _HelpFormatter
    return parser


#: The commands that take `--log-level`, and what applies without it.
LOG_LEVEL_DEFAULTS = {
    "run": "the config's agent.log_level, INFO",
    "demo": "WARNING",
    "read": "WARNING, asyncua and pymodbus silent",
    "simulate": "INFO",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edge-agent` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edge-agent read ... | head`: the reader left; that is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
