#!/usr/bin/env bash
# The demo: simulated machines (injection moulding, die casting, mould TCU, furnace, forging, welding,
# plating; `--machines` picks some) on
# loopback, the agent polling them, an embedded MQTT broker, and a live view. Ctrl-C stops it.
# Extra arguments go to `edge-agent demo` (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

ensure_venv demo
cd "$REPO"
exec "$VENV/bin/edge-agent" demo "$@"
