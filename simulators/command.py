"""What the simulators' command lines share: the list of faults, one line for an address they cannot listen on."""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from collections.abc import Mapping


def bind_error(host: str, port: int) -> OSError:
    """Why host:port cannot be listened on, found by trying (for servers that only log the reason)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        return exc
    return OSError(f"the server did not start listening on {host}:{port}")


def cannot_listen(kind: str, host: str, port: int, exc: OSError) -> str:
    """`edge-agent simulate KIND: cannot listen on HOST:PORT: why; what to do`, one line."""
    # asyncio's bind message repeats the address, so the errno's own text; resolver codes are negative
    code = exc.errno or 0
    reason = os.strerror(code).lower() if code > 0 else exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        fix = "stop what uses it (another simulator?) or pick another --port (0 picks a free one)"
    elif exc.errno == errno.EACCES:
        fix = "ports below 1024 need root: pick another --port"
    elif exc.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME):
        fix = "--host must be an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
    else:
        fix = "pick another --port or --host"
    return f"edge-agent simulate {kind}: cannot listen on {host}:{port}: {reason}; {fix}"


def fault_list(faults: Mapping[str, str], width: int = 100) -> str:
    """The `--help` epilog: each fault with what it does, wrapped under its name."""
    lines = ["faults (--fault NAME or NAME:key=value,...):"]
    for name, what in sorted(faults.items()):
        lines += textwrap.wrap(f"{name}: {what}", width, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)
