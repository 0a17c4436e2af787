#!/usr/bin/env bash
# The whole test suite, as CI runs it: set up .venv and the Debian packages the tests need,
# then lint (ruff), type-check (mypy), check the import contracts (import-linter) and run pytest against real Mosquitto, VictoriaMetrics and
# the OPC UA / Modbus simulators. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"

ensure_venv test
ensure_test_services
cd "$REPO"

echo "== ruff" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy" >&2
"$VENV/bin/mypy"
echo "== import contracts (pyproject.toml [tool.importlinter])" >&2
"$VENV/bin/lint-imports"
echo "== pytest" >&2
"$VENV/bin/pytest" "$@"
