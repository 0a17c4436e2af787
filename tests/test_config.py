"""Config loading: golden good and bad cases, secrets, the check-config command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config, parse_config

CASES = Path(__file__).parent / "cases"
REPO = Path(__file__).resolve().parent.parent
CASE_DIRS = sorted(p for p in CASES.iterdir() if (p / "config.toml").exists())


def test_there_are_enough_bad_cases() -> None:
    assert sum((p / "error.txt").exists() for p in CASE_DIRS) >= 12


@pytest.mark.parametrize("case", CASE_DIRS, ids=[p.name for p in CASE_DIRS])
def test_golden_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_AGENT_TEST_UNSET_PASSWORD", raising=False)
    error_file, summary_file = case / "error.txt", case / "summary.txt"
    assert error_file.exists() != summary_file.exists(), f"{case.name}: give error.txt or summary.txt"
    if summary_file.exists():
        assert load_config(case / "config.toml").summary() == summary_file.read_text().strip()
        return
    with pytest.raises(ConfigError) as info:
        load_config(case / "config.toml")
    # {case} stands for the case's folder, where a problem names a file in it (a profile)
    expected = error_file.read_text(encoding="utf-8").strip().replace("{case}", str(case)).splitlines()
    assert info.value.problems == expected
    assert info.value.source == str(case / "config.toml")


def with_pki(example: Path, folder: Path) -> Path:
    """A copy of a shipped config in `folder`, next to the pki/ files that docs/opcua.md has the user make."""
    from edge_agent import certs

    certs.create_certificate(folder / "pki" / "client-cert.der", folder / "pki" / "client-key.pem")
    (folder / "pki" / "trusted").mkdir()
    copy = folder / example.name
    copy.write_text(example.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


@pytest.mark.parametrize("example", sorted(REPO.glob("config/*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(example: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFLUX_TOKEN", "t")
    config = load_config(with_pki(example, tmp_path))
    assert config.devices, f"{example.name} configures no device"


def test_security_file_of_the_wrong_kind_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLUX_TOKEN", "t")
    config = with_pki(REPO / "config" / "example.toml", tmp_path)
    (tmp_path / "pki" / "trusted").rmdir()
    (tmp_path / "pki" / "trusted").write_text("not a folder")
    (tmp_path / "pki" / "client-key.pem").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.problems == [
        "devices[1].opcua.private_key: file 'pki/client-key.pem' (relative to the config file's folder) "
        "does not exist; make the client certificate and key with `edge-agent certs create --out DIR`",
        "devices[1].opcua.trust_store: folder 'pki/trusted' (relative to the config file's folder) "
        "is not a folder; create the folder and copy the server's certificate into it",
    ]


def test_secret_is_resolved_from_env_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PW", "s3cr3t-value")
    config = parse_config('[sinks.mqtt]\nusername = "agent"\npassword = "${BROKER_PW}"\n')
    assert config.sinks.mqtt is not None and config.sinks.mqtt.password is not None
    assert config.sinks.mqtt.password.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config)
    assert "s3cr3t-value" not in str(config.model_dump())


def test_plaintext_secret_is_not_echoed_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[sinks.influx]\ntoken = "hunter2-plaintext"\n')
    assert "hunter2" not in str(info.value)
    assert info.value.problems == [
        "sinks.influx.token: secrets are written as an environment reference like '${MQTT_PASSWORD}'"
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = """
[[devices]]
name = "a"
protocol = "modbus"
profile = "die_casting"
endpoint = "modbus-tcp://h:1"
tags = [{ name = "x", address = 70000 }, { name = "y", address = 1, type = "float16" }]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "devices[0].tags[0].address",
        "devices[0].tags[1].type",
    ]


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        ("ns=2;b=@@@", "b= takes base64 bytes"),
        ("ns=70000;i=1", "namespace index ns=70000 is above 65535"),
        ("i=4294967296", "i= takes a whole number from 0 to 4294967295"),
    ],
)
def test_node_id_the_driver_cannot_send_is_a_config_error(node: str, problem: str) -> None:
    text = f"""
[[devices]]
name = "imm"
protocol = "opcua"
profile = "injection_molding"
endpoint = "opc.tcp://h:4840"
opcua = {{ security_policy = "None", security_mode = "None", allow_insecure = true }}
tags = [{{ name = "x", node = "{node}" }}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    (only,) = info.value.problems
    assert only.startswith(f"devices[0].tags[0].node: {problem}")
    assert only.endswith(f"(got {node!r})")


def test_outbox_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[outbox]\ndir = "spool"\n')
    assert load_config(path).outbox.dir == tmp_path.resolve() / "spool"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=60,
    )


def test_check_config_command_ok(tmp_path: Path) -> None:
    config = with_pki(REPO / "config" / "example.toml", tmp_path)
    done = _cli("check-config", str(config), env={"INFLUX_TOKEN": "t"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"OK {config}: 2 devices (modbus, opcua), 9 tags, 2 sinks (mqtt, influx)\n"


def test_check_config_command_reports_problems_with_exit_2() -> None:
    case = CASES / "unknown_key" / "config.toml"
    done = _cli("check-config", str(case))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[0] == (
        f"{case}: devices[0].pol_interval: unknown key 'pol_interval'; did you mean 'poll_interval'?"
    )


def test_check_config_missing_file() -> None:
    done = _cli("check-config", "no/such.toml")
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == "no/such.toml: no such file"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/2:a/", "element 2 of the browse path is empty"),
        ("/a//b", "element 2 of the browse path is empty"),
        ("/", "element 1 of the browse path is empty"),
        ("/2:", "element 1 of the browse path is empty"),
        ("/{http://x/}", "element 1 of the browse path is empty"),
        ("/{http://x/y", "element 1 needs a namespace URI closed by '}'"),
        ("/70000:a", "element 1: namespace index 70000 is above 65535"),
    ],
)
def test_browse_path_the_driver_cannot_follow_is_a_config_error(path: str, problem: str) -> None:
    text = f"""
[[devices]]
name = "imm"
protocol = "opcua"
profile = "injection_molding"
endpoint = "opc.tcp://h:4840"
opcua = {{ security_policy = "None", security_mode = "None", allow_insecure = true }}
tags = [{{ name = "x", path = "{path}" }}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    (only,) = info.value.problems
    assert only.startswith(f"devices[0].tags[0].path: {problem}")


def test_browse_paths_with_namespace_uris_still_split() -> None:
    from edge_agent.drivers.opcua.address import split_browse_path

    assert split_browse_path("/{urn:a:b}IMM_1/{http://x.org/UA/y/}Status/2:Mode/Plain") == [
        ("IMM_1", None, "urn:a:b"),
        ("Status", None, "http://x.org/UA/y/"),
        ("Mode", 2, None),
        ("Plain", 0, None),
    ]


def test_empty_file_points_to_files_that_exist() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("\n  \n")
    (problem,) = info.value.problems
    assert "config/example.toml" in problem and (REPO / "config" / "example.toml").is_file()
    assert "`edge-agent discover opcua|modbus TARGET`" in problem
    assert "discover" in _cli("--help").stdout


@pytest.mark.parametrize(
    "command", [["check-config"], ["run", "-c"], ["run", "--once", "-c"], ["read", "-c"]]
)
def test_signing_without_trust_is_one_line_and_exit_2(command: list[str]) -> None:
    case = CASES / "signing_without_trust" / "config.toml"
    done = _cli(*command, str(case))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == f"{case}: " + (
        (CASES / "signing_without_trust" / "error.txt").read_text(encoding="utf-8").strip()
    )


def test_configuration_reference_is_current() -> None:
    from edge_agent.config_reference import render

    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc == render(), "regenerate: python -m edge_agent.config_reference > docs/configuration.md"


@pytest.mark.parametrize(
    ("argv", "usage", "listed"),
    [
        (["certs", "--help"], "usage: edge-agent certs [-h] ACTION ...", ["create", "show"]),
        (["certs", "-h"], "usage: edge-agent certs [-h] ACTION ...", ["create", "show"]),
        (
            ["simulate", "--help"],
            "usage: edge-agent simulate [-h]",
            ["{die-casting,forging,furnace,imm,mold-tcu,plating,welding-arc,welding-spot}"],
        ),
        (["simulate", "imm", "--help"], "usage: edge-agent simulate imm [-h]", ["--secure PKI_DIR"]),
    ],
)
def test_command_help_prints_the_commands_own_help(
    argv: list[str], usage: str, listed: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    assert info.value.code == 0, out.err
    assert out.out.startswith(usage)
    for word in listed:
        assert word in out.out


def test_sink_file_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MQTT TLS files and the dead-letter file resolve like the outbox and device certificates: from the config's folder."""
    text = (
        '[sinks.mqtt]\nurl = "mqtts://broker:8883"\n[sinks.mqtt.tls]\nca_file = "pki/ca.pem"\n'
        'cert_file = "pki/me.pem"\nkey_file = "/etc/edge/me.key"\n'
        '[sinks.influx]\nurl = "http://tsdb:8086"\ntoken = "${EDGE_TEST_TOKEN}"\ndead_letter = "var/dead.jsonl"\n'
    )
    monkeypatch.setenv("EDGE_TEST_TOKEN", "t")
    config = parse_config(text, "agent.toml", tmp_path)
    tls = config.sinks.mqtt.tls  # type: ignore[union-attr]
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (
        tmp_path / "pki/ca.pem",
        tmp_path / "pki/me.pem",
        Path("/etc/edge/me.key"),
    )
    assert config.sinks.influx.dead_letter == tmp_path / "var/dead.jsonl"  # type: ignore[union-attr]
    assert config.outbox.dir == tmp_path / "var/outbox"


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("devices = 3\nprofiles_dir = 7\n", "devices: Input should be a valid list"),
        ('devices = [1, "x"]\n', "devices[0]: Input should be a valid dictionary"),
        (
            'profiles_dir = 7\n[[devices]]\nname = "a"\nprotocol = "modbus"\nprofile = "nope"\n',
            "profiles_dir",
        ),
        ('[[devices]]\nprotocol = "modbus"\ntags = "x"\n[sinks]\nmqtt = 1\n', "devices[0].tags"),
    ],
)
def test_partly_valid_input_is_reported_not_raised(text: str, first: str) -> None:
    """The extra checks run on the devices that validated; whatever else is broken, the answer is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.problems[0].startswith(first), info.value.problems


def test_devices_that_validate_get_their_profile_checks_beside_schema_errors(tmp_path: Path) -> None:
    text = """
[[devices]]
name = "a"
protocol = "modbus"
profile = "die_castin"
endpoint = "modbus-tcp://h:1"
tags = [{ name = "x", address = 0 }]

[[devices]]
name = "b"
protocol = "modbus"
profile = "die_casting"
endpoint = "modbus-tcp://h:1"
tags = [{ name = "x", address = "zero" }]

[outbox]
max_bytes = 10
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.toml", tmp_path)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "devices[0].profile",
        "devices[1].tags[0].address",
        "outbox.max_bytes",
    ]


SKELETON = """
[[devices]]
name = "machine-1"
protocol = "modbus"
profile = "mold_tcu"
endpoint = "modbus-tcp://127.0.0.1:1"
tags = [{ name = "hr_0", address = 0 }, { name = "hr_1", address = 1 }]

[[devices]]
name = "tcu-2"
protocol = "modbus"
profile = "mold_tcu"
endpoint = "modbus-tcp://127.0.0.1:1"
tags = [{ name = "supply_temp", address = 0 }, { name = "setpoint", address = 1 }, { name = "hr_9", address = 9 }]

[[devices]]
name = "spare"
protocol = "modbus"
profile = "mold_tcu"
endpoint = "modbus-tcp://127.0.0.1:1"
enabled = false
tags = [{ name = "hr_0", address = 0 }]
"""

SKELETON_WARNINGS = [
    "devices[0] (machine-1): none of its tags is named after a signal of profile 'mold_tcu', so only raw "
    "values are published and no indicator is computed: supply_temp, return_temp, flow, setpoint, "
    "mold_shot_counter; name a tag after each of them the machine has",
    "devices[1] (tcu-2): no tag provides these signals of profile 'mold_tcu', so nothing that needs them is "
    "computed: return_temp, flow, mold_shot_counter; name a tag after each of them the machine has",
    "sinks: no sink configured, so nothing read or computed is published; add [sinks.mqtt] or [sinks.influx]",
]


def test_valid_but_unlikely_configs_get_warnings(tmp_path: Path) -> None:
    from edge_agent.config import config_warnings

    config = parse_config(SKELETON, "agent.toml", tmp_path)
    assert config_warnings(config, tmp_path) == SKELETON_WARNINGS
    full = (REPO / "config" / "mold-tcu.toml").read_text(encoding="utf-8")
    sink = '\n[sinks.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
    assert config_warnings(parse_config(full + sink, "agent.toml", REPO / "config"), REPO / "config") == []


def test_check_config_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(SKELETON, encoding="utf-8")
    done = _cli("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"OK {path}: 3 devices (modbus), 6 tags, 0 sinks (none)\n"
    assert done.stderr.splitlines() == [f"warning: {path}: {w}" for w in SKELETON_WARNINGS]


def test_run_logs_the_warnings_once_at_start(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(SKELETON.replace("127.0.0.1:1", "127.0.0.1:9"), encoding="utf-8")
    done = _cli("run", "--once", "-c", str(path))
    assert "Traceback" not in done.stderr
    logged = [line for line in done.stderr.splitlines() if " WARNING edge_agent.agent: " in line]
    assert [line.split(" WARNING edge_agent.agent: ", 1)[1] for line in logged] == [
        f"{path}: {w}" for w in SKELETON_WARNINGS
    ]


def test_json_schema_accepts_the_shipped_configs_and_refuses_wrong_types() -> None:
    import json
    import tomllib

    import jsonschema

    from edge_agent.drivers.modbus.config import ModbusTag

    done = _cli("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for example in sorted(REPO.glob("config/*.toml")):
        data = tomllib.loads(example.read_text(encoding="utf-8"))
        assert [e.message for e in validator.iter_errors(data)] == [], example.name
    # the field docstrings are the editor's hover text
    tag = schema["definitions"]["ModbusTag"]["properties"]
    assert tag["scale"]["description"] == ModbusTag.model_fields["scale"].description
    assert schema["properties"]["outbox"]["description"] == "Store-and-forward."
    device = '[[devices]]\nname = "a"\nprotocol = "modbus"\nprofile = "p"\nendpoint = "modbus-tcp://h:1"\n'
    good = tomllib.loads(device + 'tags = [{ name = "t", address = 0, scale = 0.1 }]\n')
    assert validator.is_valid(good)
    for wrong in (
        'poll_interval = "fast"\ntags = [{ name = "t", address = 0 }]\n',  # a string for seconds
        'tags = [{ name = "t", address = "zero" }]\n',  # a string for an address
        'tags = [{ name = "t", address = 0, sacle = 0.1 }]\n',  # an unknown key
    ):
        assert not validator.is_valid(tomllib.loads(device + wrong)), wrong
    assert not validator.is_valid({"outbox": {"max_bytes": "1 GB"}})
