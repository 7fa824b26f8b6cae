#!/usr/bin/env bash
# Builds a genuine Kubernetes CRD API server (k8s.io/apiextensions-apiserver) and etcd from
# Debian sid's packaged Go sources, offline, in GOPATH mode, and caches both binaries.
# Prints the directory holding `apiextensions-apiserver` and `etcd` on its last line.
# Nothing is installed system-wide: a private apt configuration downloads the .debs and
# dpkg-deb unpacks them into a scratch root.
set -euo pipefail

cache="${VMSANDBOX_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsandbox/kube}"
if [ -x "$cache/current/apiextensions-apiserver" ] && [ -x "$cache/current/etcd" ]; then
  echo "$cache/current"
  exit 0
fi

mirror="${VMSANDBOX_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # Reuse the mirror the machine's own apt sources point at, so no host is hard-coded here.
  mirror=$(grep -rhoE '^(deb|URIs:)[^#]*https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | head -n1 || true)
fi
[ -n "$mirror" ] || { echo "build-apiserver: step 'mirror': no Debian mirror found in /etc/apt sources" >&2; exit 1; }

step() { echo "build-apiserver: $*" >&2; }
fail() { echo "build-apiserver: step '$1' failed: $2" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vmsandbox-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/debs" "$work/root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" > "$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1")

step "apt update (sid, private configuration)"
apt-get "${apt_opts[@]}" update -qq >"$work/update.log" 2>&1 || fail "apt update" "$(tail -n3 "$work/update.log")"

step "resolving the -dev closure of golang-k8s-apiextensions-apiserver-dev"
apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev 2>/dev/null \
  | grep -E '^[a-z0-9][a-z0-9.+-]*-dev$' | sort -u > "$work/pkgs" || true
[ -s "$work/pkgs" ] || fail "resolve" "no -dev packages found for golang-k8s-apiextensions-apiserver-dev"
goversion=$(apt-cache "${apt_opts[@]}" depends golang-go 2>/dev/null | grep -oE 'golang-1\.[0-9]+-go' | head -n1)
[ -n "$goversion" ] || goversion=golang-1.26-go
gosrc=${goversion%-go}-src
printf '%s\n' "$goversion" "$gosrc" etcd-server >> "$work/pkgs"
step "downloading $(wc -l < "$work/pkgs") packages"
(cd "$work/debs" && xargs -a "$work/pkgs" apt-get "${apt_opts[@]}" download -qq >"$work/download.log" 2>&1) \
  || fail "download" "$(tail -n3 "$work/download.log")"

step "unpacking"
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/root"; done
# Record the exact versions the binaries were built from.
for d in "$work"/debs/*.deb; do dpkg-deb -f "$d" Package Version | paste -sd' '; done | sort > "$work/versions.txt"

goroot=$(ls -d "$work"/root/usr/lib/go-1.* | head -n1)
[ -x "$goroot/bin/go" ] || fail "toolchain" "no go binary under $work/root/usr/lib"
step "compiling k8s.io/apiextensions-apiserver with $($goroot/bin/go version) (4-6 min on 2 cores)"
mkdir -p "$work/out" "$work/gocache"
(cd "$work" && GOROOT="$goroot" GOPATH="$work/root/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 \
  GOTOOLCHAIN=local GOCACHE="$work/gocache" GOFLAGS= \
  "$goroot/bin/go" build -o "$work/out/apiextensions-apiserver" k8s.io/apiextensions-apiserver \
  >"$work/build.log" 2>&1) || fail "compile" "$(tail -n5 "$work/build.log")"
cp "$work/root/usr/bin/etcd" "$work/out/etcd" || fail "etcd" "etcd-server did not ship usr/bin/etcd"
cp "$work/versions.txt" "$work/out/versions.txt"

key=$(sha256sum "$work/versions.txt" | cut -c1-16)
mkdir -p "$cache"
rm -rf "$cache/$key"
mv "$work/out" "$cache/$key"
ln -sfn "$key" "$cache/current"
step "cached in $cache/$key"
echo "$cache/current"
