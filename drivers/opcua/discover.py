"""`edge-agent discover opcua URL`: browse a server, map a EUROMAP 77 machine to the profile's signals, print a skeleton."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edge_agent.drivers.base import Discovery, DiscoveryError
from edge_agent.drivers.skeleton import device_header, progress, toml_string

IMM2MES_URI = "http://opcfoundation.org/UA/IMM2MES/"

#: EUROMAP 77 browse-name path suffixes -> the injection_molding profile's signal names.
EUROMAP77_SIGNALS: dict[tuple[str, ...], str] = {
    ("MachineStatus", "MachineMode"): "machine_mode",
    ("ProductionControl", "ProductionStatus"): "production_status",
    ("MachineMESStatus", "ProductionStatus"): "production_status",
    ("ActiveJobValues", "JobCycleCounter"): "job_cycle_counter",
    ("ActiveJobValues", "JobPartsCounter"): "job_parts_counter",
    ("ActiveJobValues", "JobGoodPartsCounter"): "job_good_parts_counter",
    ("ActiveJobValues", "JobBadPartsCounter"): "job_bad_parts_counter",
    ("ActiveJobValues", "LastCycleTime"): "last_cycle_time",
}


#: EUROMAP 77 temperature zones: (unit folder, zone variable) -> the profile's signal name pattern.
EUROMAP77_ZONES: dict[tuple[str, str], str] = {
    ("InjectionUnit_1", "ActualTemperature"): "barrel_zone_{zone}",
    ("InjectionUnit_1", "NominalTemperature"): "barrel_zone_{zone}_setpoint",
    ("Mould_1", "ActualTemperature"): "mould_zone_{zone}",
    ("Mould_1", "NominalTemperature"): "mould_zone_{zone}_setpoint",
}

#: Extra lines of a mapped zone tag, as in config/imm.toml: actual values change often and are
#: subscribed with a deadband, set points change seldom and are polled slowly.
_ZONE_TAG_LINES = {
    "ActualTemperature": ['mode = "subscribe"', "interval = 1.0", "deadband = 0.2", 'unit = "°C"'],
    "NominalTemperature": ["interval = 10.0", 'unit = "°C"'],
}

#: CycleParametersEventType field paths -> the injection_molding profile's per-cycle signal names.
CYCLE_EVENT_FIELDS: dict[str, str] = {
    "cushion": "InjectionUnitCycleParameters_1/CushionVolume",
    "injection_time": "InjectionUnitCycleParameters_1/InjectionTime",
    "dosing_time": "InjectionUnitCycleParameters_1/DosingTime",
    "peak_pressure": "InjectionUnitCycleParameters_1/SpecificPressureMaximum",
    "vp_position": "InjectionUnitCycleParameters_1/VPChangeOverPosition",
    "cycle_time": "CycleTime",
}


def _zone_signal(path: tuple[str, ...]) -> str | None:
    """The profile's name of a EUROMAP 77 zone variable (.../UNIT/TemperatureZones/TemperatureZone_N/VAR)."""
    if len(path) < 4 or path[-3] != "TemperatureZones":
        return None
    match = re.fullmatch(r"TemperatureZone_(\d+)", path[-2])
    pattern = EUROMAP77_ZONES.get((path[-4], path[-1]))
    return pattern.format(zone=match.group(1)) if match and pattern else None


def _tag_name(parts: Iterable[str]) -> str:
    name = "_".join(parts)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    name = re.sub(r"[^a-z0-9_]+", "_", name).strip("_")
    return name[:64] or "tag"


@dataclass(frozen=True)
class FoundVariable:
    """A variable found while browsing: where it is and what it would be called."""

    path: tuple[str, ...]
    node: str
    data_type: str


@dataclass(frozen=True)
class FoundEvent:
    """An event type the profile knows, found in the server's type tree, with the fields it has."""

    name: str
    event_type: str
    fields: dict[str, str]


@dataclass
class Browsed:
    """What browsing a server found."""

    variables: list[FoundVariable]
    euromap: bool
    events: list[FoundEvent]


async def _cycle_event(client: Any, namespaces: list[str]) -> FoundEvent | None:
    """The EUROMAP 77 CycleParametersEventType, if the server defines it, with the profile's fields it has."""
    from asyncua import ua

    if IMM2MES_URI not in namespaces:
        return None
    imm = namespaces.index(IMM2MES_URI)
    frontier = [client.get_node(ua.ObjectIds.BaseEventType)]
    for _depth in range(6):  # event type trees are shallow
        next_frontier = []
        for node in frontier:
            for ref in await node.get_children_descriptions(refs=ua.ObjectIds.HasSubtype):
                qn = ref.BrowseName
                if qn.Name == "CycleParametersEventType" and qn.NamespaceIndex == imm:
                    have = await _member_paths(client.get_node(ref.NodeId))
                    fields = {s: p for s, p in CYCLE_EVENT_FIELDS.items() if p in have}
                    nid = ref.NodeId.to_string().split(";", 1)[-1]
                    return FoundEvent("cycle", f"nsu={IMM2MES_URI};{nid}", fields)
                next_frontier.append(client.get_node(ref.NodeId))
        frontier = next_frontier
    return None


async def _member_paths(event_type: Any) -> set[str]:
    """Browse-name paths (A or A/B) of an event type's members, one level of nesting deep."""
    from asyncua import Node, ua

    paths: set[str] = set()
    for ref in await event_type.get_children_descriptions(refs=ua.ObjectIds.HierarchicalReferences):
        paths.add(ref.BrowseName.Name)
        if ref.NodeClass == ua.NodeClass.Object:
            member = Node(event_type.session, ref.NodeId)
            for inner in await member.get_children_descriptions(refs=ua.ObjectIds.HierarchicalReferences):
                paths.add(f"{ref.BrowseName.Name}/{inner.BrowseName.Name}")
    return paths


async def browse_opcua(url: str, max_depth: int = 8, max_nodes: int = 5000, timeout: float = 10.0) -> Browsed:
    """Browse Objects breadth-first: the variables, whether a EUROMAP 77 machine was seen, its cycle event.

    Browses without security; raises DiscoveryError if the server offers no such endpoint.
    """
    from asyncua import Client, ua

    endpoints = await Client(url, timeout=timeout).connect_and_get_server_endpoints()
    offered = sorted(
        {f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name}" for ep in endpoints}
    )
    if not any(ep.SecurityPolicyUri.endswith("#None") for ep in endpoints):
        raise DiscoveryError(
            f"the server offers only secure endpoints ({', '.join(offered)}) and discover browses with "
            "SecurityPolicy None: allow None on the server while commissioning, or write the config from "
            "a browse with an OPC UA client (docs/opcua.md)"
        )
    found: list[FoundVariable] = []
    euromap = False
    async with Client(url, timeout=timeout) as client:
        namespaces = await client.get_namespace_array()
        euromap = IMM2MES_URI in namespaces
        cycle = await _cycle_event(client, namespaces)
        events = [cycle] if cycle is not None else []
        objects = client.nodes.objects
        frontier: list[tuple[Any, tuple[str, ...]]] = [(objects, ())]
        seen = 0
        with progress() as bar:
            task = bar.add_task(f"browsing {url}", total=None)
            for _depth in range(max_depth):
                next_frontier: list[tuple[Any, tuple[str, ...]]] = []
                for node, path in frontier:
                    children = await node.get_children_descriptions(refs=ua.ObjectIds.HierarchicalReferences)
                    for ref in children:
                        name = ref.BrowseName.Name
                        if not path and name == "Server":
                            continue  # the server's own diagnostics are not machine data
                        child_path = (*path, name)
                        seen += 1
                        if ref.NodeClass == ua.NodeClass.Variable:
                            nid = ref.NodeId
                            uri = (
                                namespaces[nid.NamespaceIndex] if nid.NamespaceIndex < len(namespaces) else ""
                            )
                            node_str = nid.to_string()
                            if nid.NamespaceIndex > 0:
                                # nsu= survives a server that renumbers its namespaces on restart
                                node_str = "nsu=" + uri + ";" + node_str.split(";", 1)[1]
                            found.append(FoundVariable(child_path, node_str, ""))
                        elif ref.NodeClass == ua.NodeClass.Object:
                            next_frontier.append((client.get_node(ref.NodeId), child_path))
                        bar.update(task, description=f"browsing {url}: {seen} nodes, {len(found)} variables")
                        if seen >= max_nodes:
                            return Browsed(found, euromap, events)
                frontier = next_frontier
                if not frontier:
                    break
    return Browsed(found, euromap, events)


def opcua_skeleton(
    url: str,
    variables: list[FoundVariable],
    euromap: bool,
    name: str = "machine-1",
    profile: str | None = None,
    events: Iterable[FoundEvent] = (),
) -> str:
    """A device config for the browsed server: EUROMAP 77 signals and events by their profile names, the rest commented."""
    profile = profile or ("injection_molding" if euromap else "CHOOSE_A_PROFILE")
    lines = [
        f"# discovered from {url}: {len(variables)} variables"
        + (" (EUROMAP 77 / OPC 40077 machine recognised)" if euromap else ""),
        *device_header(name, "opcua", profile, url),
        "",
        "[devices.opcua]",
        "# choose the security the server offers; None only for a lab",
        'security_policy = "None"',
        'security_mode = "None"',
        "allow_insecure = true",
        "",
    ]
    used: set[str] = set()
    mapped: list[tuple[str, FoundVariable]] = []
    others: list[FoundVariable] = []
    for var in variables:
        signal = next(
            (s for suffix, s in EUROMAP77_SIGNALS.items() if var.path[-len(suffix) :] == suffix), None
        ) or _zone_signal(var.path)
        if euromap and signal and signal not in used:
            used.add(signal)
            mapped.append((signal, var))
        else:
            others.append(var)
    for signal, var in mapped:
        extra = _ZONE_TAG_LINES.get(var.path[-1], []) if _zone_signal(var.path) else []
        lines += ["[[devices.tags]]", f'name = "{signal}"', f"node = {toml_string(var.node)}", *extra, ""]
    for event in events if euromap else ():
        lines += [
            "# one event per machine cycle: the per-cycle values arrive as one batch",
            "[[devices.events]]",
            f'name = "{event.name}"',
            f"event_type = {toml_string(event.event_type)}",
            *(f"fields.{signal} = {toml_string(path)}" for signal, path in event.fields.items()),
            "",
        ]
        used.update(event.fields)
    if others:
        lines.append("# other variables: uncomment what the profile should see")
    for var in others:
        name = _unique_name(var.path, used)
        lines += [
            f"# [[devices.tags]]  # {'/'.join(var.path)}",
            f'# name = "{name}"',
            f"# node = {toml_string(var.node)}",
        ]
    return "\n".join(lines) + "\n"


def _unique_name(path: tuple[str, ...], used: set[str]) -> str:
    """A tag name from the end of `path`, taking more of the path (then a number) until it is unused."""
    name = _tag_name(path[-2:])
    for depth in range(3, len(path) + 1):
        if name not in used:
            break
        name = _tag_name(path[-depth:])
    base, n = name, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _address(target: str) -> tuple[str, int]:
    """opc.tcp://HOST[:PORT][/PATH] -> (host, port); 4840 when the URL gives none."""
    parts = urlsplit(target)
    try:
        port = parts.port or 4840
    except ValueError:
        port = 0
    if parts.scheme != "opc.tcp" or not parts.hostname or not port:
        raise ValueError(f"{target!r} is not an opc.tcp://HOST:PORT URL, e.g. opc.tcp://192.0.2.10:4840")
    return parts.hostname, port


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-nodes", type=int, default=5000, help="stop browsing after this many nodes")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="answer time of each request (default 10)",
    )


async def _run(args: argparse.Namespace) -> str:
    from asyncua import ua

    try:
        found = await browse_opcua(args.target, max_nodes=args.max_nodes, timeout=args.timeout)
    except TimeoutError:
        raise DiscoveryError(
            f"no OPC UA answer within {args.timeout:g} s: is it an OPC UA server, and the port right? "
            "(a slow one: --timeout)"
        ) from None
    except ua.UaError as exc:  # a refusal by status code: login, access, too many sessions
        raise DiscoveryError(f"the server refused: {exc}") from None
    return opcua_skeleton(args.target, found.variables, found.euromap, args.name, args.profile, found.events)


DISCOVERY = Discovery(
    summary="browse an OPC UA server; a EUROMAP 77 machine gets the injection_molding profile's names",
    target="opc.tcp://HOST:PORT[/PATH]",
    address=_address,
    add_arguments=_add_arguments,
    run=_run,
    quiet_loggers=("asyncua",),
)
