"""Deployment files checked structurally: Grafana dashboards against the schema, compose, systemd, Dockerfile.

Docker does not run in CI, so these tests read the files: every Flux query's measurement, field, tag
and signal must exist in edge_agent/schema.py and the profiles, every datasource uid must be
provisioned, and the compose stack, agent config, unit and Dockerfile must agree with each other.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml  # PyYAML comes with amqtt, a runtime dependency

from edge_agent import schema
from edge_agent.config import Config, load_config, profile_dirs
from edge_agent.pipeline import PSEUDO_SIGNALS, IndicatorPipeline, pseudo_family
from edge_agent.profiles import load_profile
from edge_agent.simulators.plant import FIRST_LINE, MACHINES

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
#: One dashboard per equipment profile (the generator makes one for every file in config/profiles).
KIND_DASHBOARDS = tuple(sorted(p.stem for p in (REPO / "config" / "profiles").glob("*.toml")))

#: Device-level pseudo-signals of edge_agent/pipeline.py (IndicatorPipeline adds one row of each per device).


# --------------------------------------------------------------------------- the schema as the checker sees it


def documented_schema() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Measurement -> (tags, fields) of edge_agent.schema."""
    return {name: (frozenset(m.tags), frozenset(m.fields)) for name, m in schema.measurements().items()}


def profile_signals(kind: str) -> set[str]:
    """Signal names of one equipment profile."""
    return {s.name for s in load_profile(REPO / "config" / "profiles" / f"{kind}.toml").signals}


ALL_SIGNALS = set().union(*(profile_signals(k) for k in KIND_DASHBOARDS)) | set(PSEUDO_SIGNALS)

# --------------------------------------------------------------------------- Flux checker

_MEASUREMENT = re.compile(r"\br\._measurement\s*==\s*\"([^\"]*)\"")
_FIELD = re.compile(r"\br\._field\s*==\s*\"([^\"]*)\"")
_SET = re.compile(r"contains\(\s*value:\s*r\.(\w+)\s*,\s*set:\s*\[([^\]]*)\]\s*\)")
_TAG = re.compile(r"\br\.([A-Za-z]\w*)\s*(?:==|!=|=~|!~)")
_SIGNAL = re.compile(r"\br\.signal\s*==\s*\"([^\"]*)\"")
_TAG_VALUES = re.compile(r"schema\.tagValues\((?:[^()]|\([^()]*\))*?\btag:\s*\"([^\"]+)\"")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_FROM = re.compile(r"\bfrom\(bucket:|schema\.tagValues\(")


def _strings(listing: str) -> list[str]:
    return re.findall(r"\"([^\"]*)\"", listing)


def query_problems(
    query: str, signals: set[str], variables: set[str], known: dict[str, Any] | None = None
) -> list[str]:
    """What is wrong with one Flux query against the documented schema; empty when nothing is."""
    known = documented_schema() if known is None else known
    problems: list[str] = []
    if not _FROM.search(query):
        problems.append("reads no bucket")
    measurements = set(_MEASUREMENT.findall(query))
    if len(measurements) != 1:
        return [
            *problems,
            f"filters {len(measurements)} measurements {sorted(measurements)}; one is checkable",
        ]
    (m,) = measurements
    if m not in known:
        return [*problems, f"measurement {m!r} is not in the schema"]
    tags, fields = known[m]
    sets = _SET.findall(query)
    used_fields = set(_FIELD.findall(query)) | {
        f for col, items in sets if col == "_field" for f in _strings(items)
    }
    if not used_fields and "schema.tagValues" not in query:
        problems.append("no r._field filter: the fields read cannot be checked")
    problems += [f"{m}: no field {f!r}" for f in sorted(used_fields - fields)]
    used_tags = set(_TAG.findall(query)) | {col for col, _ in sets if not col.startswith("_")}
    used_tags |= set(_TAG_VALUES.findall(query))
    problems += [f"{m}: no tag {t!r}" for t in sorted(used_tags - tags)]
    used_signals = set(_SIGNAL.findall(query)) | {
        s for col, items in sets if col == "signal" for s in _strings(items)
    }
    problems += [f"signal {s!r} is not one of this dashboard's" for s in sorted(used_signals - signals)]
    for s in sorted(used_signals & set(PSEUDO_SIGNALS)):
        if m != "alarm" and pseudo_family(s) != m:
            problems.append(f"signal {s!r} is written to {pseudo_family(s)!r}, not {m!r}")
    referenced = {a or b for a, b in _VARIABLE.findall(query)}
    problems += [f"variable ${v} is not defined" for v in sorted(referenced - variables)]
    return problems


# --------------------------------------------------------------------------- dashboard walking


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, Flux text) of every panel target, template variable and annotation."""
    for panel in walk_panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["query"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["query"]
    for ann in board["annotations"]["list"]:
        if "target" in ann:
            yield f"annotation {ann['name']}", ann["target"]["query"]


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every `datasource` object anywhere in a dashboard."""
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict):
            yield ref
        for value in node.values():
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_refs(value)


def provisioned_datasources() -> dict[str, str]:
    """uid -> type of the provisioned datasources."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yml").read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def dashboard_problems(board: dict[str, Any], signals: set[str]) -> list[str]:
    """Structural problems of one dashboard: ids, grid, datasources, queries."""
    problems: list[str] = []
    ids = [p["id"] for p in walk_panels(board["panels"])]
    problems += [f"panel id {i} is used {ids.count(i)} times" for i in sorted(set(ids)) if ids.count(i) > 1]
    for panel in walk_panels(board["panels"]):
        pos = panel["gridPos"]
        if not (pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24 and pos["h"] >= 1):
            problems.append(f"panel {panel['id']} leaves the 24-column grid: {pos}")
        if panel["type"] != "row" and not panel.get("targets"):
            problems.append(f"panel {panel['id']} {panel['title']!r} has no query")
    provisioned = provisioned_datasources()
    for ref in datasource_refs(board):
        if ref.get("type") == "grafana":  # the built-in annotation source
            continue
        if provisioned.get(ref.get("uid", "")) != ref.get("type"):
            problems.append(f"datasource {ref} is not provisioned")
    variables = {v["name"] for v in board["templating"]["list"]}
    for where, query in queries(board):
        problems += [f"{where}: {p}" for p in query_problems(query, signals, variables)]
    return problems


def dashboard_signals(path: Path) -> set[str]:
    """The signals a dashboard may name: its kind's profile signals and the pseudo-signals."""
    kind = path.stem
    return (profile_signals(kind) if kind in KIND_DASHBOARDS else set()) | set(PSEUDO_SIGNALS)


def load_generator() -> ModuleType:
    """deploy/grafana/make_dashboards.py as a module."""
    spec = importlib.util.spec_from_file_location("make_dashboards", GRAFANA / "make_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- dashboards


def test_a_dashboard_per_equipment_kind() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert names == {*KIND_DASHBOARDS, "overview"}
    assert set(schema.EQUIPMENT_MEASUREMENTS) == set(KIND_DASHBOARDS)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_consistent_with_schema(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    assert board["schemaVersion"] >= 36
    assert board["uid"] and len(board["uid"]) <= 40
    assert dashboard_problems(board, dashboard_signals(path)) == []
    # a dashboard emptied by a generator bug would pass the checks above vacuously
    assert sum(1 for _ in queries(board)) >= 8


def test_pseudo_signals_are_those_of_the_pipeline() -> None:
    config = agent_config()
    pipeline = IndicatorPipeline(config, profile_dirs(config, DEPLOY))
    for info in pipeline.devices.values():
        raw = {s for s in info.rows if info.profile.signal(s) is not None}
        assert set(info.rows) - raw == set(PSEUDO_SIGNALS), info.name


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize(
    ("kind", "wanted"),
    [
        (
            "die_casting",
            {
                "spc": {"x", "cl", "ucl", "lcl", "cpk"},
                "oee": {"oee", "availability", "performance", "quality"},
            },
        ),
        (
            "injection_molding",
            {"spc": {"x", "cl", "ucl", "lcl", "cpk"}, "oee": {"oee"}, "injection_molding": {"value"}},
        ),
        ("mold_tcu", {"mold": {"heat_kw", "delta_t", "flow", "pct_used"}, "mold_tcu": {"value"}}),
        (
            "furnace",
            {"furnace": {"value"}, "furnace_uniformity": {"spread", "soak_s", "overshoot_c", "tolerance_c"}},
        ),
    ],
)
def test_dashboard_shows_what_the_issue_asks_for(kind: str, wanted: dict[str, set[str]]) -> None:
    board = json.loads((GRAFANA / "dashboards" / f"{kind}.json").read_text())
    read: dict[str, set[str]] = {}
    for _, query in queries(board):
        for m in _MEASUREMENT.findall(query):
            read.setdefault(m, set()).update(_FIELD.findall(query))
    for m, fields in wanted.items():
        assert fields <= read.get(m, set()), f"{kind}: {m} lacks {fields - read.get(m, set())}"
    assert {"active", "severity", "message"} <= read["alarm"]


def test_spc_chart_for_every_charted_signal() -> None:
    for kind in ("die_casting", "injection_molding"):
        board = json.loads((GRAFANA / "dashboards" / f"{kind}.json").read_text())
        charted = {
            s.name
            for s in load_profile(REPO / "config" / "profiles" / f"{kind}.toml").signals
            if "imr" in s.indicators
        }
        with_limits = {
            sig
            for _, q in queries(board)
            if {"x", "ucl", "lcl"} <= set(_FIELD.findall(q))
            for sig in _SIGNAL.findall(q)
        }
        assert charted and with_limits == charted


def test_committed_dashboards_equal_the_generator_output() -> None:
    rendered = load_generator().render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for name, text in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text(encoding="utf-8") == text, f"{name} is stale"


# the checker itself: each deliberate mistake must be reported


GOOD = """from(bucket: "${bucket}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "spc")
  |> filter(fn: (r) => r.site == "${site}" and r.machine == "${machine}")
  |> filter(fn: (r) => r.signal == "cushion")
  |> filter(fn: (r) => r._field == "x" or r._field == "ucl")"""
VARS = {"bucket", "site", "machine"}


def test_checker_accepts_a_good_query() -> None:
    assert query_problems(GOOD, ALL_SIGNALS, VARS) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('r._field == "ucl"', 'r._field == "ucll"', "spc: no field 'ucll'"),
        (
            'r._field == "x" or r._field == "ucl"',
            'contains(value: r._field, set: ["x", "sigma"])',
            "spc: no field 'sigma'",
        ),
        ('r._measurement == "spc"', 'r._measurement == "spcs"', "measurement 'spcs' is not in the schema"),
        ('r.machine == "${machine}"', 'r.machin == "${machine}"', "spc: no tag 'machin'"),
        ('r.signal == "cushion"', 'r.signal == "cushon"', "signal 'cushon' is not one of this dashboard's"),
        ('r.signal == "cushion"', 'r.signal == "oee"', "signal 'oee' is written to 'oee', not 'spc'"),
        ('r.machine == "${machine}"', 'r.machine == "${device}"', "variable $device is not defined"),
        ('  |> filter(fn: (r) => r._field == "x" or r._field == "ucl")', "", "no r._field filter"),
        (
            'r._measurement == "spc"',
            'r._measurement == "spc" or r._measurement == "oee"',
            "filters 2 measurements",
        ),
    ],
)
def test_checker_reports_a_wrong_query(old: str, new: str, expected: str) -> None:
    bad = GOOD.replace(old, new)
    assert bad != GOOD
    problems = query_problems(bad, ALL_SIGNALS, VARS)
    assert any(p.startswith(expected) for p in problems), problems


def test_checker_tells_raw_furnace_values_from_furnace_indicators() -> None:
    raw = (
        GOOD.replace('"spc"', '"furnace"')
        .replace('"cushion"', '"zone_1_temp"')
        .replace('r._field == "x" or r._field == "ucl"', 'r._field == "value"')
    )
    assert query_problems(raw, ALL_SIGNALS, VARS) == []
    kpi = raw.replace('"furnace"', '"furnace_uniformity"').replace('"zone_1_temp"', '"uniformity"')
    kpi = kpi.replace('"value"', '"soak_s"')
    assert query_problems(kpi, ALL_SIGNALS, VARS) == []
    assert query_problems(kpi.replace('"soak_s"', '"heat_kw"'), ALL_SIGNALS, VARS) == [
        "furnace_uniformity: no field 'heat_kw'"
    ]
    assert query_problems(raw.replace('"value"', '"soak_s"'), ALL_SIGNALS, VARS) == [
        "furnace: no field 'soak_s'"
    ]


def test_checker_reports_broken_dashboards() -> None:
    path = GRAFANA / "dashboards" / "furnace.json"
    board = json.loads(path.read_text())
    signals = dashboard_signals(path)
    assert dashboard_problems(board, signals) == []
    panels = list(walk_panels(board["panels"]))
    dup = copy.deepcopy(board)
    list(walk_panels(dup["panels"]))[-1]["id"] = panels[1]["id"]
    assert any("is used 2 times" in p for p in dashboard_problems(dup, signals))
    dangling = copy.deepcopy(board)
    list(walk_panels(dangling["panels"]))[1]["datasource"] = {"type": "influxdb", "uid": "nope"}
    assert any("is not provisioned" in p for p in dashboard_problems(dangling, signals))
    # a signal of another kind's profile on the furnace dashboard
    foreign = json.loads(json.dumps(board).replace('\\"zone_1_temp\\"', '\\"cushion\\"'))
    assert any("'cushion' is not one of this dashboard's" in p for p in dashboard_problems(foreign, signals))


# --------------------------------------------------------------------------- Grafana provisioning


def test_datasource_provisioning_matches_the_agent_and_influxdb() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yml").read_text())
    (ds,) = doc["datasources"]
    compose = load_compose()
    init = compose["services"]["influxdb"]["environment"]
    influx = agent_config().sinks.influx
    assert influx is not None
    assert ds["type"] == "influxdb" and ds["jsonData"]["version"] == "Flux"
    assert ds["url"] == influx.url == "http://influxdb:8086"
    assert ds["jsonData"]["organization"] == influx.org == init["DOCKER_INFLUXDB_INIT_ORG"]
    assert ds["jsonData"]["defaultBucket"] == influx.bucket == init["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert influx.bucket == load_generator().BUCKET
    # the token comes from Grafana's environment, which compose fills from the same variable as InfluxDB's
    assert ds["secureJsonData"]["token"] == "$INFLUX_TOKEN"
    assert "INFLUX_TOKEN" in compose["services"]["grafana"]["environment"]


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    (provider,) = doc["providers"]
    mounts = bind_mounts("grafana")
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"


# --------------------------------------------------------------------------- compose


def load_compose() -> dict[str, Any]:
    """deploy/docker-compose.yml parsed."""
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to deploy/)."""
    out = {}
    for volume in load_compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (DEPLOY / source).resolve()
    return out


def agent_config() -> Config:
    """deploy/agent.toml loaded as the agent loads it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLUX_TOKEN", "test-token")
        return load_config(DEPLOY / "agent.toml")


def test_compose_services_and_mounts_exist() -> None:
    compose = load_compose()
    services = compose["services"]
    assert {"mosquitto", "influxdb", "grafana", "agent"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target, source in bind_mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
        named = [v.split(":")[0] for v in service.get("volumes", []) if not v.startswith((".", "/"))]
        assert set(named) <= set(compose["volumes"]), name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    build = services["agent"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert (
        bind_mounts("mosquitto")["/mosquitto/config/mosquitto.conf"]
        == DEPLOY / "mosquitto" / "mosquitto.conf"
    )


def test_compose_agent_runs_the_mounted_config_and_reaches_the_services() -> None:
    services = load_compose()["services"]
    command = services["agent"]["command"]
    assert command[:2] == ["run", "-c"]
    assert bind_mounts("agent")[command[2]] == DEPLOY / "agent.toml"
    config = agent_config()
    assert config.sinks.mqtt is not None and config.sinks.mqtt.url == "mqtt://mosquitto:1883"
    assert "1883:1883" in services["mosquitto"]["ports"]
    assert re.search(r"(?m)^listener 1883\b", (DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    # the outbox lives on the agent's volume, so a new container sends what the old one could not
    assert str(config.outbox.dir).startswith("/var/lib/edge-agent")
    assert any(v.endswith(":/var/lib/edge-agent") for v in services["agent"]["volumes"])
    assert "INFLUX_TOKEN" in services["agent"]["environment"]


def test_compose_simulators_match_the_agent_devices() -> None:
    services = load_compose()["services"]
    config = agent_config()
    # the compose stack runs the first line's four machines
    assert sorted(d.name for d in config.devices) == sorted(MACHINES[key][0] for key in FIRST_LINE)
    for key in FIRST_LINE:
        device_name, cycle_s = MACHINES[key]
        device = next(d for d in config.devices if d.name == device_name)
        match = re.fullmatch(r"[\w.+-]+://([\w-]+):(\d+)(/.*)?", device.endpoint)
        assert match, device.endpoint
        host, port = match.group(1), match.group(2)
        command = services[host]["command"]
        assert command[:2] == ["simulate", key], host
        args = dict(zip(command[2::2], command[3::2], strict=True))
        assert args["--host"] == "0.0.0.0" and args["--port"] == port
        assert "9108" not in str(services[host].get("ports", [])) and services[host]["healthcheck"] == {
            "disable": True
        }
        if cycle_s is not None:
            # simulated cycle time / speed = wall-clock cycle time the agent expects
            assert device.nominal_cycle_s == pytest.approx(cycle_s / float(args["--speed"]))
        shipped = tomllib.loads((REPO / "config" / f"{key}.toml").read_text())["devices"][0]
        ours = device.model_dump(by_alias=True)
        assert [t["name"] for t in ours["tags"]] == [t["name"] for t in shipped["tags"]]
        for mine, theirs in zip(ours["tags"], shipped["tags"], strict=True):
            assert {k: mine[k] for k in theirs if k != "interval"} == {
                k: v for k, v in theirs.items() if k != "interval"
            }, f"{device_name}: tag {theirs['name']} differs from config/{key}.toml"


# --------------------------------------------------------------------------- systemd, Dockerfile


def unit_file() -> dict[str, dict[str, list[str]]]:
    """deploy/edge-agent.service as section -> key -> values (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in (DEPLOY / "edge-agent.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def test_systemd_unit_runs_the_agent() -> None:
    unit = unit_file()
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    match = re.fullmatch(r"(/\S+/)?edge-agent run -c (/\S+)", exec_start)
    assert match, exec_start
    config_path = match.group(2)
    assert any(v.endswith(f"edge-agent check-config {config_path}") for v in service["ExecStartPre"])
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["KillSignal"] == ["SIGTERM"]
    # systemd must wait longer than the agent's flush on SIGTERM
    assert int(service["TimeoutStopSec"][0]) > Config().agent.shutdown_timeout
    state = "/var/lib/" + service["StateDirectory"][0]
    assert service["WorkingDirectory"] == [state] and state in service["ReadWritePaths"][0].split()
    assert service["ProtectSystem"] == ["strict"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "Documentation" not in unit["Unit"]  # no placeholder address


def test_systemd_unit_is_hardened() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(DEPLOY / "edge-agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for edge-agent.service: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.5, done.stdout


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_the_packages_of_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set()
    for word, args in dockerfile():
        if word == "COPY":
            *sources, _dest = args.split()
            copied.update(sources)
    assert packages and packages <= copied
    # the built-in profiles are package data of the wheel, which the image installs (not editable)
    install = next(a for w, a in dockerfile() if w == "RUN" and "pip install" in a)
    assert "config" in copied and "pip wheel" in install and "edge_agent-*.whl" in install
    assert "-e ." not in install
    for source in copied:
        assert (REPO / source).exists(), source
    allowed = {
        line[1:]
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed, "the build context leaves out a copied path"


def test_dockerfile_entrypoint_and_health() -> None:
    instructions = dict(dockerfile())
    assert json.loads(instructions["ENTRYPOINT"]) == ["edge-agent"]
    cmd = json.loads(instructions["CMD"])
    assert cmd[:2] == ["run", "-c"]
    compose_cmd = load_compose()["services"]["agent"]["command"]
    assert compose_cmd == cmd
    port = instructions["EXPOSE"]
    assert f"127.0.0.1:{port}/metrics" in instructions["HEALTHCHECK"]
    assert agent_config().agent.metrics_port == int(port)
    assert instructions["USER"] == "edge-agent"
