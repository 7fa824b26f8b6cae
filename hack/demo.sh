#!/usr/bin/env bash
# The walkthrough on one machine: set up, start `vmsandbox dev` (a real CRD API server, the
# operator and a node agent), run samples/hello-local.yaml to completion, show its status and
# output, then stop everything. Pass --keep to leave `vmsandbox dev` running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

python -m vmsandbox.devcluster.sample_image >/dev/null   # the sample's image, from busybox-static

log=$(mktemp -t vmsandbox-dev.XXXXXX.log)
vmsandbox dev >"$log" 2>&1 &
dev=$!
cleanup() { kill -INT "$dev" 2>/dev/null && wait "$dev" 2>/dev/null; rm -f "$log"; }
[ "${1:-}" = "--keep" ] || trap cleanup EXIT

echo "== starting vmsandbox dev"
for _ in $(seq 600); do
  grep -q 'vmsandbox dev: ready' "$log" && break
  kill -0 "$dev" 2>/dev/null || { cat "$log"; echo "vmsandbox dev exited" >&2; exit 1; }
  sleep 1
done
grep -q 'vmsandbox dev: ready' "$log" || { cat "$log"; echo "vmsandbox dev did not get ready" >&2; exit 1; }
grep 'vmsandbox dev:' "$log"

echo "== vmsandbox apply -f samples/hello-local.yaml"
vmsandbox apply -f samples/hello-local.yaml
for _ in $(seq 300); do
  phase=$(vmsandbox get hello -o json | python -c 'import json,sys; print(json.load(sys.stdin).get("status",{}).get("phase",""))')
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 1
done
echo "== vmsandbox get hello"
vmsandbox get hello
echo "== vmsandbox get hello -o yaml (status)"
vmsandbox get hello -o yaml | sed -n '/^status:/,$p'
echo "== vmsandbox logs hello"
vmsandbox logs hello
[ "$phase" = Succeeded ]
