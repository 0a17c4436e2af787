"""Real Mosquitto and VictoriaMetrics processes for the tests: free loopback ports, temp data dirs, clean stops."""

from __future__ import annotations

import abc
import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on the port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def require_binary(path: str, package: str) -> str:
    """The binary's path, or an error telling what to install."""
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if found is None:
        raise RuntimeError(
            f"{path} not found: install the Debian package '{package}' "
            f"(apt-get install {package}), or run scripts/test.sh as root to do it for you"
        )
    return found


@dataclass
class _Process(abc.ABC):
    """A server process we own: started with a fixed port so it can be restarted on the same one."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    def _ready(self) -> None:
        wait_for_port(self.port)

    def start(self) -> None:
        """Start (or restart after stop) on the same port and data dir."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        try:
            self._ready()
        except TimeoutError:
            self.stop()
            tail = (self.workdir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{self.__class__.__name__} did not start on port {self.port}:\n{tail}"
            ) from None

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Mosquitto(_Process):
    """A Mosquitto broker on 127.0.0.1, anonymous, no persistence, unless `extra_config` says otherwise."""

    extra_config: str = ""

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto.conf"
        body = self.extra_config or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        conf.write_text(f"persistence false\nlog_type error\nlog_type warning\n{body}")
        return [require_binary("/usr/sbin/mosquitto", "mosquitto"), "-c", str(conf)]

    @property
    def url(self) -> str:
        """mqtt:// URL of the broker."""
        return f"mqtt://127.0.0.1:{self.port}"


@dataclass
class VictoriaMetrics(_Process):
    """A VictoriaMetrics single node serving the InfluxDB v2 write API and the export API."""

    def _command(self) -> list[str]:
        return [
            require_binary("victoria-metrics", "victoria-metrics"),
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            "-retentionPeriod=100y",  # the tests write points with old timestamps too
            "-search.disableCache",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ]

    def _ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.1)

    @property
    def url(self) -> str:
        """Base http:// URL."""
        return f"http://127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Make recently written points visible to queries and exports."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as r:
            r.read()

    def export(self, match: str = '{__name__!=""}') -> list[dict]:
        """Every series matching the selector: [{"metric": {...labels}, "values": [...], "timestamps": [ms...]}]."""
        self.flush()
        query = urllib.parse.urlencode({"match[]": match, "start": "0"})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as r:
            body = r.read()
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]

    def count(self, match: str = '{__name__!=""}') -> int:
        """Number of points stored under the selector."""
        return sum(len(s["values"]) for s in self.export(match))

    def settled_count(self, match: str, expect: int, timeout: float = 15.0) -> int:
        """The point count under `match` once it reaches `expect` or stops growing for 2 s (ingestion is async)."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while True:
            n = self.count(match)
            if n >= expect or time.monotonic() > deadline:
                return n
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 2.0:
                return n
            time.sleep(0.2)

    def reset(self) -> None:
        """Delete every series, so a test starts from an empty database."""
        data = urllib.parse.urlencode({"match[]": '{__name__!=""}'}).encode()
        url = f"{self.url}/api/v1/admin/tsdb/delete_series"
        with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(url, data=data, timeout=10):
            pass
