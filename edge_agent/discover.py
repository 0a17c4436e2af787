"""`edge-agent discover PROTOCOL TARGET`: the protocols and their options come from the drivers that offer discovery."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

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
    return parser


def discover_command(args: argparse.Namespace) -> int:
    """Run `edge-agent discover PROTOCOL TARGET [options]` (the words after `discover` are in args.args)."""
    argv: Sequence[str] = args.args
    ns = build_parser().parse_args(list(argv))
    discovery = _discoveries()[ns.protocol]
    where = f"discover {ns.protocol} {ns.target}"
    # the command prints one line per failure; the libraries' own logging would only repeat it
    for name in ("pymodbus", "asyncua"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        discovery.address(ns.target)
        skeleton = asyncio.run(discovery.run(ns))
    except (ValueError, DiscoveryError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(skeleton)
    return 0
