"""`edge-agent discover PROTOCOL TARGET`: the protocols and their options come from the drivers that offer discovery."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from edge_agent.commissioning import DEFAULT_WAIT_S, wait_until_listening
from edge_agent.drivers.base import Discovery, DiscoveryError


def _discoveries() -> dict[str, Discovery]:
    from edge_agent.drivers.registry import DRIVERS

    return {p: plugin.discovery for p, plugin in sorted(DRIVERS.items()) if plugin.discovery is not None}


def build_parser() -> argparse.ArgumentParser:
    """`edge-agent discover`'s parser: one sub-command per driver that offers discovery."""
    parser = argparse.ArgumentParser(
        prog="edge-agent discover",
        description="Look at a machine and print a config skeleton (a [[devices]] entry) on stdout.",
    )
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    for protocol, discovery in _discoveries().items():
        p = sub.add_parser(protocol, help=discovery.summary, description=discovery.summary)
        p.add_argument("target", metavar="TARGET", help=discovery.target)
        discovery.add_arguments(p)
        p.add_argument("--name", default="machine-1", help="device name to write into the skeleton")
        p.add_argument("--profile", help="equipment profile to write into the skeleton (see config/profiles)")
        p.add_argument(
            "--wait",
            type=float,
            default=DEFAULT_WAIT_S,
            metavar="SECONDS",
            help=f"wait this long for a device that refuses connections, e.g. one just started "
            f"(default {DEFAULT_WAIT_S:g})",
        )
    return parser


def discover_command(args: argparse.Namespace) -> int:
    """Run `edge-agent discover PROTOCOL TARGET [options]` (words after `discover` in args.args): 0, or 2 and one line."""
    argv: Sequence[str] = args.args
    ns = build_parser().parse_args(list(argv))
    discovery = _discoveries()[ns.protocol]
    where = f"discover {ns.protocol} {ns.target}"
    # the command prints one line per failure; the library's own logging would only repeat it
    for name in discovery.quiet_loggers:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        skeleton = asyncio.run(_discover(discovery, ns, where))
    except (ValueError, DiscoveryError, OSError, TimeoutError) as exc:
        # nothing on stdout: `discover ... > file.toml` leaves no half skeleton behind
        print(f"{where}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    sys.stdout.write(skeleton)
    return 0


async def _discover(discovery: Discovery, ns: argparse.Namespace, where: str) -> str:
    host, port = discovery.address(ns.target)
    if ns.wait > 0:
        await wait_until_listening(
            host, port, ns.wait, note=lambda text: print(f"{where}: {text}", file=sys.stderr)
        )
    return await discovery.run(ns)
