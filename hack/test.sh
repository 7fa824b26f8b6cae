#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up, lint, type-check, then every test,
# including the real API server, the real OCI runtimes and real QEMU guests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole suite (what CI runs) needs the container image: setup builds it beside the others.
# A selection of tests that includes tests/image builds it before its first test instead.
if [ $# -eq 0 ]; then export VMSANDBOX_SETUP_CONTAINER_IMAGE=1; fi
bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export VMSANDBOX_REQUIRE_KUBE=1 VMSANDBOX_REQUIRE_VM=1 VMSANDBOX_REQUIRE_TOOLS=1 VMSANDBOX_REQUIRE_IMAGE=1
export VMSANDBOX_GUEST_IMAGE_DIR="${VMSANDBOX_GUEST_IMAGE_DIR:-$HOME/.cache/vmsandbox/guest-image}"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
# The tests start thousands of interpreters (runtime CLIs, agents, relays). Where the
# environment says PYTHONDONTWRITEBYTECODE, each would compile the package from source again:
# give them its bytecode up front, as an installed package has it (about 40 ms per runtime CLI).
echo "== bytecode"; python -m compileall -q vmsandbox
echo "== pytest"; pytest --durations=30 "$@"
