#!/usr/bin/env bash
# Builds the vmsandbox image from the Dockerfile, tagged localhost/vmsandbox:dev by default, and
# prints what it built (id, digest, size, layers, component versions).
#
#   bash hack/build-image.sh [--tag REF] [--cloud-hypervisor FILE|absent]
#                            [--cloud-hypervisor-version V --cloud-hypervisor-sha256 SHA]
#                            [--target STAGE] [--no-cache]
#
# Engine: docker when its daemon answers, else podman, else buildah (VMSANDBOX_IMAGE_ENGINE
# overrides). Podman and buildah build with --isolation chroot, run with runc and with the
# open-files and process limits this host allows, through a containers.conf (CONTAINERS_CONF).
#
# Base: docker.io/library/debian:bookworm-slim pinned by the digest the registry reports; when no
# registry answers, a local Debian base made with mmdebstrap (tarball cached by its inputs) is
# imported under that same name.
#
# Cloud Hypervisor: the pinned v53.0 release when GitHub answers; a local binary with
# --cloud-hypervisor FILE (its sha256 is checked against the pin all the same); otherwise the
# image is built without it, labelled io.vmsandbox.cloud-hypervisor=absent.
#
# The whole build is cached by its inputs (Dockerfile, build context, base, build arguments):
# ~/.cache/vmsandbox/image/builds/<key> holds the image id, and the image stays in the engine's
# storage. A warm run only re-tags it; if the storage lost the image, it is rebuilt.
# shellcheck disable=SC2016  # single-quoted scripts run inside the tree or the image
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${VMSANDBOX_CACHE_DIR:-$HOME/.cache/vmsandbox}/image"
BASE_NAME=docker.io/library/debian:bookworm-slim
CH_DEFAULT_VERSION=v53.0
CH_RELEASES=https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

tag=localhost/vmsandbox:dev
ch_choice="" ch_version="" ch_sha256="" target="" no_cache=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --cloud-hypervisor) ch_choice="$2"; shift 2 ;;
    --cloud-hypervisor-version) ch_version="$2"; shift 2 ;;
    --cloud-hypervisor-sha256) ch_sha256="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    --no-cache) no_cache=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [ -n "$ch_version" ] && [ "$ch_version" != "$CH_DEFAULT_VERSION" ] && [ -z "$ch_sha256" ]; then
  die "--cloud-hypervisor-version $ch_version needs --cloud-hypervisor-sha256 (the built-in pin is for $CH_DEFAULT_VERSION)"
fi
mkdir -p "$CACHE/builds" "$CACHE/base"

# ---- engine --------------------------------------------------------------------------------
engine="${VMSANDBOX_IMAGE_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else die "no image builder: install podman or buildah (bash hack/setup.sh) or docker"; fi
fi
if [ "$engine" != docker ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  # runc (crun refuses hybrid-cgroup hosts) and limits root may actually set on this host.
  export CONTAINERS_CONF="$CACHE/containers.conf"
  cat > "$CONTAINERS_CONF.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
  mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
fi
# `engine_image CMD ARGS` runs the image subcommand of whichever engine builds.
engine_image() {
  local cmd="$1"; shift
  case "$engine" in
    buildah)
      case "$cmd" in
        exists) buildah inspect --type image "$@" >/dev/null 2>&1 ;;
        inspect) buildah inspect --type image "$@" ;;
        *) buildah "$cmd" "$@" ;;
      esac ;;
    *) "$engine" image "$cmd" "$@" ;;
  esac
}
image_exists() {
  if [ "$engine" = docker ]; then docker image inspect "$1" >/dev/null 2>&1; else engine_image exists "$1"; fi
}
# podman and docker agree on these Go template fields; buildah names them differently.
image_field() {
  case "$engine:$2" in
    buildah:id) buildah inspect --type image --format '{{.FromImageID}}' "$1" ;;
    buildah:digest) buildah inspect --type image --format '{{.FromImageDigest}}' "$1" ;;
    buildah:layers) buildah inspect --type image --format '{{len .OCIv1.RootFS.DiffIDs}}' "$1" ;;
    buildah:size) podman image inspect --format '{{.Size}}' "$1" 2>/dev/null || echo "?" ;;
    buildah:base-label) buildah inspect --type image --format '{{index .OCIv1.Config.Labels "io.vmsandbox.base-tarball"}}' "$1" ;;
    *:base-label) "$engine" image inspect --format '{{index .Config.Labels "io.vmsandbox.base-tarball"}}' "$1" ;;
    *:id) "$engine" image inspect --format '{{.Id}}' "$1" ;;
    *:digest) "$engine" image inspect --format '{{.Digest}}' "$1" 2>/dev/null || echo "none" ;;
    *:layers) "$engine" image inspect --format '{{len .RootFS.Layers}}' "$1" ;;
    *:size) "$engine" image inspect --format '{{.Size}}' "$1" ;;
  esac
}
say "engine: $engine ($("$engine" --version 2>/dev/null | head -n1))"

# ---- base ----------------------------------------------------------------------------------
base_ref="" base_key=""
if [ -z "${VMSANDBOX_LOCAL_BASE:-}" ] \
   && digest=$(timeout 30 skopeo inspect --format '{{.Digest}}' "docker://$BASE_NAME" 2>/dev/null); then
  base_ref="$BASE_NAME@$digest"
  base_key="$base_ref"
  say "base: $base_ref (from the registry)"
else
  say "base: no registry answers for $BASE_NAME; using a local Debian base made with mmdebstrap"
  sources=/etc/apt/sources.list.d/debian.sources
  [ -r "$sources" ] || die "the local base needs this machine's Debian sources ($sources)"
  # Like the official slim image: no docs, man pages or translations, no kept .debs, and the
  # machine's deb822 sources instead of a sources.list.
  mmdebstrap_args=(--variant=minbase --format=tar
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --customize-hook='echo "APT::Keep-Downloaded-Packages \"false\";" > "$1/etc/apt/apt.conf.d/docker-clean"'
    --customize-hook='rm -f "$1/etc/apt/sources.list"'
    --customize-hook="upload $sources /etc/apt/sources.list.d/debian.sources"
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
    bookworm)
  base_key=$(printf '%s\n' "mmdebstrap $(mmdebstrap --version)" "${mmdebstrap_args[@]}" "$(cat "$sources")" \
    | sha256sum | cut -c1-16)
  tarball="$CACHE/base/debian-bookworm-minbase-$base_key.tar"
  if [ ! -s "$tarball" ]; then
    say "base: mmdebstrap --variant=minbase bookworm (cached as $tarball)"
    # SOURCE_DATE_EPOCH makes file times and generated ids of the tree reproducible.
    SOURCE_DATE_EPOCH=1767225600 mmdebstrap --quiet "${mmdebstrap_args[@]}" "$tarball.tmp" - < "$sources"
    mv "$tarball.tmp" "$tarball"
  fi
  # The import is keyed by the tarball's content, recorded in a label: `import` stamps a new
  # creation time (so a new image id) each time, while the tarball itself is reproducible.
  [ -s "$tarball.sha256" ] || sha256sum "$tarball" | cut -c1-64 > "$tarball.sha256"
  tarball_sha=$(cat "$tarball.sha256")
  if [ "$(image_field "$BASE_NAME" base-label 2>/dev/null)" != "$tarball_sha" ]; then
    say "base: importing $tarball as $BASE_NAME"
    change=(--change 'CMD ["bash"]' --change "LABEL io.vmsandbox.base-tarball=$tarball_sha")
    case "$engine" in
      docker) docker import "${change[@]}" "$tarball" "$BASE_NAME" >/dev/null ;;
      *) podman import "${change[@]}" "$tarball" "$BASE_NAME" >/dev/null ;;
    esac
  fi
  base_ref="$BASE_NAME"
  base_key="local:$tarball_sha"
fi

# ---- Cloud Hypervisor ----------------------------------------------------------------------
context=$(mktemp -d "$CACHE/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
build_args=(--build-arg "BASE_IMAGE=$base_ref")
[ -n "$ch_version" ] && build_args+=(--build-arg "CLOUD_HYPERVISOR_VERSION=$ch_version")
[ -n "$ch_sha256" ] && build_args+=(--build-arg "CLOUD_HYPERVISOR_SHA256=$ch_sha256")
ch_label="${ch_version:-$CH_DEFAULT_VERSION}"
case "$ch_choice" in
  absent)
    build_args+=(--build-arg CLOUD_HYPERVISOR_VERSION=absent); ch_label=absent ;;
  "")
    url="$CH_RELEASES/$ch_label/cloud-hypervisor-static"
    if ! curl -fsSI --max-time 20 -o /dev/null "$url" 2>/dev/null; then
      say "Cloud Hypervisor $ch_label cannot be downloaded ($url does not answer) and no local"
      say "binary was given (--cloud-hypervisor FILE): building WITHOUT it, labelled"
      say "io.vmsandbox.cloud-hypervisor=absent; the agent in this image offers QEMU only."
      build_args+=(--build-arg CLOUD_HYPERVISOR_VERSION=absent); ch_label=absent
    fi ;;
  *)
    [ -f "$ch_choice" ] || die "--cloud-hypervisor $ch_choice: no such file"
    # Checked before the build as well as in it: the engine may drop a failed step's last words,
    # and a wrong file should be named before minutes of building, not after.
    ch_want="${ch_sha256:-$(sed -n 's/^ARG CLOUD_HYPERVISOR_SHA256=//p' "$REPO/Dockerfile")}"
    ch_have=$(sha256sum "$ch_choice" | cut -d' ' -f1)
    [ "$ch_have" = "$ch_want" ] ||
      die "CLOUD_HYPERVISOR_SHA256 mismatch: cloud-hypervisor-static $ch_label has sha256 $ch_have, expected $ch_want"
    mkdir -p "$context/vendor"
    cp "$ch_choice" "$context/vendor/cloud-hypervisor-static"
    build_args+=(--build-arg CLOUD_HYPERVISOR_FILE=vendor/cloud-hypervisor-static)
    say "Cloud Hypervisor: $ch_choice (sha256 checked, and again in the build)" ;;
esac
[ -n "$target" ] && build_args+=(--target "$target")
# pip in the build trusts what this machine trusts (e.g. the CA of a TLS-inspecting proxy):
# the bundle goes into the context's vendor/ and is read through a bind mount, never copied.
ca="${VMSANDBOX_BUILD_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
if [ -r "$ca" ]; then
  mkdir -p "$context/vendor"
  cp "$ca" "$context/vendor/build-ca.crt"
  build_args+=(--build-arg BUILD_CA_BUNDLE=vendor/build-ca.crt)
fi

# ---- build context and cache key -----------------------------------------------------------
# Exactly what .dockerignore lets in, copied so that its hash is the context's hash.
cp "$REPO/Dockerfile" "$REPO/.dockerignore" "$REPO/pyproject.toml" "$REPO/README.md" "$context/"
(cd "$REPO" && find vmsandbox -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*_cache/*' -print0 \
  | cpio --quiet -0 -pdm "$context")
context_sha=$(cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
build_args+=(--build-arg "SOURCE_SHA256=$context_sha")
key=$(printf '%s\n' "context $context_sha" "base $base_key" "target $target" "${build_args[@]}" \
  | sha256sum | cut -c1-32)
keyfile="$CACHE/builds/$key"

if [ "$no_cache" = 0 ] && [ -s "$keyfile" ] && image_exists "$(cat "$keyfile")"; then
  say "cached: inputs $key were built before as $(cut -c1-12 "$keyfile"); tagging it $tag"
  engine_image tag "$(cat "$keyfile")" "$tag"
else
  started=$(date +%s)
  previous=$(image_field "$tag" id 2>/dev/null || true)
  iidfile="$context.iid"
  flags=(-f "$context/Dockerfile" -t "$tag" --iidfile "$iidfile" --label "io.vmsandbox.build-key=$key"
         "${build_args[@]}")
  [ "$no_cache" = 1 ] && flags+=(--no-cache)
  case "$engine" in
    docker) flags+=(--network host) ;;
    *)
      flags+=(--isolation chroot --network host --layers
              --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
      [ "${base_ref#*@}" = "$base_ref" ] && flags+=(--pull=never) ;;
  esac
  say "building $tag (inputs $key)"
  case "$engine" in
    buildah) buildah bud "${flags[@]}" "$context" ;;
    *) "$engine" build "${flags[@]}" "$context" ;;
  esac
  id=$(cat "$iidfile"); rm -f "$iidfile"
  echo "${id#sha256:}" > "$keyfile"
  # The image this tag named before is superseded: drop it unless something else still uses it
  # (another tag or a container), so that rebuilds do not pile up. Its layers stay cached.
  if [ -n "$previous" ] && [ "$previous" != "${id#sha256:}" ]; then
    engine_image rm "$previous" >/dev/null 2>&1 || true
  fi
  say "built in $(( $(date +%s) - started ))s"
fi

# ---- what was built ------------------------------------------------------------------------
id=$(image_field "$tag" id)
size=$(image_field "$tag" size)
echo "image:    $tag"
echo "id:       $id"
echo "digest:   $(image_field "$tag" digest)"
echo "size:     $size bytes ($(( ${size:-0} / 1048576 )) MiB)"
echo "layers:   $(image_field "$tag" layers)"
echo "cloud-hypervisor label: $ch_label"
echo "cache key: $key"
if [ -z "$target" ] && [ "$engine" != buildah ]; then
  "$engine" run --rm --network none --entrypoint /bin/sh "$tag" -c '
    echo "python:   $(python3 --version 2>&1)"
    echo "vmsandbox: $(python3 -c "import importlib.metadata as m; print(m.version(\"vmsandbox\"))")"
    echo "qemu:     $(qemu-system-x86_64 --version | head -n1)"
    echo "runc:     $(runc --version | head -n1)"
    echo "crun:     $(crun --version | head -n1)"
    echo "skopeo:   $(skopeo --version)"
    echo "umoci:    $(umoci --version)"
    if [ -x /usr/local/bin/cloud-hypervisor ]; then echo "cloud-hypervisor: $(cloud-hypervisor --version)";
    else echo "cloud-hypervisor: absent"; fi
    echo "guest:    $(python3 -c "import json; m = json.load(open(\"/opt/vmsandbox/guest/manifest.json\")); k = m[\"kernel\"]; print(k[\"name\"], k[\"version\"], \"key\", m[\"cache_key\"])")"'
fi
