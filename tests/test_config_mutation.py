"""Hostile config files: seeded mutations of the shipped configs and profiles give exit 0 or 2 with a place, never a traceback."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(REPO.glob("config/*.toml"))
PROFILES = sorted(REPO.glob("config/profiles/*.toml"))
#: a shipped config that uses each profile, so a mutated profile is loaded through a real device
USER_OF = {
    "die_casting": "die-casting.toml",
    "furnace": "furnace.toml",
    "injection_molding": "imm.toml",
    "mold_tcu": "mold-tcu.toml",
    "forging": "forging.toml",
    "welding_arc": "welding-arc.toml",
    "welding_spot": "welding-spot.toml",
    "plating": "plating.toml",
    "anodizing": "plating.toml",
}
ENV = {"INFLUX_TOKEN": "t"}

#: bytes a damaged or hostile file may hold: invalid UTF-8, a surrogate, NUL, a BOM, TOML syntax
JUNK = [
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf0\x28\x8c\x28",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\r",
    b"\t",
    b'"',
    b"'",
    b"[",
    b"]",
    b"{",
    b"=",
    b"\\",
    b"#",
    b"\n",
]
#: values of other types (and edge values of the right type) put in place of a line's value
VALUES = [
    '"text"',
    '""',
    "-1",
    "0",
    "1",
    "65536",
    "99999999999999999999999",
    "1e309",
    "-inf",
    "nan",
    "0.0",
    "true",
    "[]",
    "{}",
    '["a", 1]',
    "{ lsl = 5.0, usl = 1.0 }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    '"${NO_SUCH_VARIABLE_EDGE_TEST}"',
    '"' + "x" * 300 + '"',
    '"/"',
    '"/2:a/"',
    '"/a//b"',
    '"ns=2;s="',
    '"None"',
    '"Sign"',
    '"SignAndEncrypt"',
]
#: text put inside the first string of a line (a path, a NodeId, a name, an endpoint)
STRING_EDITS = ["/", "//", ";", "=", "{", "}", ":", "", "\\u0000", "../", " ", "é", "x" * 300, "$", "%"]
#: whole lines inserted anywhere
LINES = [
    "bogus = 1",
    "[[devices]]",
    "[devices.opcua]",
    "[[devices.tags]]",
    "[[signals]]",
    "[sinks.mqtt]",
    "[site]",
    'profiles_dir = "no/such/folder"',
    "trust_store = 'pki/trusted'",
    'security_mode = "Sign"',
    "allow_insecure = true",
    "enabled = false",
    "[" + ".".join(["x"] * 300) + "]",
]
DEPTHS = [1, 2, 5, 50, 200, 400, 1000, 3000]


@dataclass(frozen=True)
class Mutation:
    """One edit of a file: what kind and where (positions are taken modulo the file's size)."""

    kind: str
    a: int
    b: int
    c: int


MUTATION = st.builds(
    Mutation,
    st.sampled_from(
        [
            "delete_line",
            "duplicate_line",
            "swap_lines",
            "swap_values",
            "flip_byte",
            "insert_junk",
            "nest_value",
            "change_value",
            "edit_string",
            "insert_line",
            "truncate",
            "blank",
        ]
    ),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
)


def _value_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if re.match(rb"^\s*[\w.\"-]+\s*=", line)]


def _split_value(line: bytes) -> tuple[bytes, bytes]:
    key, _, value = line.partition(b"=")
    return key + b"=", value


def mutate(data: bytes, m: Mutation) -> bytes:
    """The file after one mutation (deterministic in `m`)."""
    lines = data.split(b"\n")
    n = len(lines)
    i, j = m.a % n, m.b % n
    values = _value_lines(lines)
    if m.kind == "delete_line":
        del lines[i]
    elif m.kind == "duplicate_line":
        lines.insert(i, lines[i])
    elif m.kind == "swap_lines":
        lines[i], lines[j] = lines[j], lines[i]
    elif m.kind == "swap_values" and len(values) >= 2:
        x, y = values[m.a % len(values)], values[m.b % len(values)]
        (kx, vx), (ky, vy) = _split_value(lines[x]), _split_value(lines[y])
        lines[x], lines[y] = kx + vy, ky + vx
    elif m.kind == "flip_byte" and data:
        pos = m.a % len(data)
        return data[:pos] + bytes([data[pos] ^ (1 << (m.b % 8))]) + data[pos + 1 :]
    elif m.kind == "insert_junk":
        pos = m.a % (len(data) + 1)
        return data[:pos] + JUNK[m.b % len(JUNK)] + data[pos:]
    elif m.kind == "nest_value" and values:
        x = values[m.a % len(values)]
        depth = DEPTHS[m.b % len(DEPTHS)]
        key, _ = _split_value(lines[x])
        nested = "[" * depth + "1" + "]" * depth if m.c % 2 else "{ a = " * depth + "1" + " }" * depth
        lines[x] = key + b" " + nested.encode()
    elif m.kind == "change_value" and values:
        x = values[m.a % len(values)]
        lines[x] = _split_value(lines[x])[0] + b" " + VALUES[m.b % len(VALUES)].encode()
    elif m.kind == "edit_string":
        quoted = [k for k, line in enumerate(lines) if line.count(b'"') >= 2]
        if quoted:
            x = quoted[m.a % len(quoted)]
            start = lines[x].index(b'"') + 1
            end = lines[x].index(b'"', start)
            pos = start + m.b % (end - start + 1)
            lines[x] = lines[x][:pos] + STRING_EDITS[m.c % len(STRING_EDITS)].encode() + lines[x][pos:]
    elif m.kind == "insert_line":
        lines.insert(i, LINES[m.b % len(LINES)].encode())
    elif m.kind == "truncate":
        return data[: m.a % (len(data) + 1)]
    elif m.kind == "blank":
        return [b"", b"  \n\n", b"# only a comment\n"][m.a % 3]
    return b"\n".join(lines)


@dataclass(frozen=True)
class Case:
    """A shipped file (config or profile) and the mutations applied to it."""

    source: Path
    mutations: tuple[Mutation, ...]


CASES = st.builds(
    Case, st.sampled_from(CONFIGS + PROFILES), st.lists(MUTATION, min_size=1, max_size=3).map(tuple)
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped configs beside the pki/ files they need and a copy of the profiles (searched first)."""
    from edge_agent import certs

    root = tmp_path_factory.mktemp("mutation")
    certs.create_certificate(root / "pki" / "client-cert.der", root / "pki" / "client-key.pem")
    (root / "pki" / "trusted").mkdir()
    shutil.copy(root / "pki" / "client-cert.der", root / "pki" / "trusted" / "server.der")
    for config in CONFIGS:
        shutil.copy(config, root / config.name)
    shutil.copytree(REPO / "config" / "profiles", root / "profiles")
    return root


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_config(path: Path) -> tuple[int, str, str]:
    """`edge-agent check-config PATH` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _env(ENV):
        try:
            code = main(["check-config", str(path)])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


#: a field path (`devices[1].tags[0].address`, `(top level)`), maybe with the device's name, then ": "
_FIELD = re.compile(r"^(?:\(top level\)|[^\s\[]+(?:\[\d+\][^\s\[]*)*)(?: \([^)]*\))?: \S")
#: problems of the file as a whole, each naming its line where there is one
_FILE = re.compile(
    r"^(?:not valid TOML: .*\((?:at line \d+, column \d+|at end of document)\)"
    r"|not valid TOML: arrays or inline tables nested too deeply to parse in the key/value pair at line \d+"
    r"|not UTF-8 text: .* at line \d+, column \d+ \(byte \d+\); save the file as UTF-8"
    r"|the file is empty; .*"
    r"|is a folder; .*"
    r"|no such file)$"
)


def names_a_place(problem: str, profile: Path | None) -> bool:
    """Whether a problem line (after the file's path) starts with the field path, or a line, or says what is wrong with the whole file."""
    if _FILE.match(problem):
        return True
    if not _FIELD.match(problem):
        return False
    if profile is not None and f": {profile}: " in problem:
        # a broken profile is named by its path, then the place in it
        return names_a_place(problem.split(f": {profile}: ", 1)[1], None)
    return True


def assert_clean_exit(path: Path, profile: Path | None, code: int, out: str, err: str) -> None:
    """Exit 0 with the summary (and placed warnings), or exit 2 with one placed problem per line; never anything else."""
    assert code in (0, 2), f"exit {code}\n{err}"
    assert "Traceback" not in err
    if code == 0:
        assert out.startswith(f"OK {path}: ")
        for line in err.splitlines():
            assert line.startswith(f"warning: {path}: "), line
            assert names_a_place(line[len(f"warning: {path}: ") :], None), line
        return
    lines = err.splitlines()
    assert out == "" and len(lines) >= 2, err
    assert re.fullmatch(r"\d+ problem\(s\); nothing was started\.", lines[-1]), err
    for line in lines[:-1]:
        assert line.startswith(f"{path}: "), line
        assert names_a_place(line[len(f"{path}: ") :], profile), line


def run_case(workspace: Path, case: Case) -> int:
    """Write the mutated file, check it in-process, put the shipped profile back; returns the exit code."""
    data = case.source.read_bytes()
    for m in case.mutations:
        data = mutate(data, m)
    profile: Path | None = None
    if case.source.parent.name == "profiles":
        profile = workspace / "profiles" / case.source.name
        path = workspace / USER_OF[case.source.stem]
        profile.write_bytes(data)
    else:
        path = workspace / f"{case.source.stem}-mutated.toml"
        path.write_bytes(data)
    try:
        code, out, err = check_config(path)
    finally:
        if profile is not None:
            shutil.copy(case.source, profile)
    assert_clean_exit(path, profile, code, out, err)
    return code


def test_shipped_files_pass_unmutated(workspace: Path) -> None:
    for config in CONFIGS:
        code, _, err = check_config(workspace / config.name)
        assert code == 0, err


def test_mutated_configs_and_profiles_exit_0_or_2_with_the_place(workspace: Path) -> None:
    codes: Counter[int] = Counter()

    @settings(
        max_examples=1200,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(CASES)
    def check(case: Case) -> None:
        codes[run_case(workspace, case)] += 1

    check()
    print(f"mutated inputs: {sum(codes.values())}, exit 0: {codes[0]}, exit 2: {codes[2]}")
    # the mutations reach both outcomes, so the property is not vacuous
    assert codes[2] > codes[0] > 0


@pytest.mark.parametrize(
    "case",
    [
        # the kinds of input that once escaped as a traceback
        Case(CONFIGS[0], (Mutation("nest_value", 3, 6, 1),)),
        Case(CONFIGS[0], (Mutation("nest_value", 3, 6, 0),)),
        Case(PROFILES[0], (Mutation("insert_junk", 40, 0, 0),)),
        Case(PROFILES[0], (Mutation("nest_value", 1, 7, 1),)),
    ],
    ids=["deep_array", "deep_inline_table", "profile_not_utf8", "profile_deep_array"],
)
def test_known_tracebacks(workspace: Path, case: Case) -> None:
    assert run_case(workspace, case) == 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=REPO,
        timeout=60,
    )


def test_real_command_on_hostile_files(workspace: Path) -> None:
    deep = workspace / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    not_utf8 = workspace / "latin1.toml"
    not_utf8.write_bytes('[site]\narea = "Gießerei"\n'.encode("latin-1"))
    expected = {
        deep: f"{deep}: not valid TOML: arrays or inline tables nested too deeply to parse in the key/value pair at line 1",
        not_utf8: f"{not_utf8}: not UTF-8 text: invalid continuation byte at line 2, column 12 (byte 18); ",
        workspace / "pki": f"{workspace / 'pki'}: is a folder; give the path of a TOML file",
    }
    for path, first in expected.items():
        done = _cli("check-config", str(path))
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.splitlines()[0].startswith(first), done.stderr
