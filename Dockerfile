# syntax=docker/dockerfile:1
# One image for both programs: `vmsandbox-operator` (the default command, non-root) and
# `vmsandbox-agent` (the chart's DaemonSet runs it as root; see charts/vmsandbox/values.yaml).
# It also holds `vmsandbox-runtime`, the guest image every VM boots, and QEMU.
#
#   bash hack/build-image.sh            # podman/buildah/docker, cached by its inputs
#   docker build -t vmsandbox:dev .     # the same, by hand (needs GitHub for Cloud Hypervisor)
#
# Cloud Hypervisor, one of three ways (the label io.vmsandbox.cloud-hypervisor says which):
#   default          the v53.0 release binary, downloaded and checked against the pinned sha256;
#                    another version needs both CLOUD_HYPERVISOR_VERSION and CLOUD_HYPERVISOR_SHA256
#   offline          --build-arg CLOUD_HYPERVISOR_FILE=vendor/cloud-hypervisor-static: that file
#                    from the build context, checked against the same sha256
#   none             --build-arg CLOUD_HYPERVISOR_VERSION=absent: no Cloud Hypervisor; the agent
#                    then offers QEMU only
#
# Stages: build (the package in a virtualenv) -> guest (kernel, initramfs, root image) and
# cloud-hypervisor (pinned, checksum-verified) -> runtime (Debian tools + QEMU, no build tools).

# Debian 12. Pin it by digest for a reproducible build: hack/build-image.sh passes the digest the
# registry reports, or, when no registry answers, imports a local mmdebstrap base under this name
# (its image id is part of the build's cache key).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
ARG CLOUD_HYPERVISOR_VERSION=v53.0
# sha256 of the v53.0 release asset `cloud-hypervisor-static` (x86_64).
ARG CLOUD_HYPERVISOR_SHA256=448af3d4e59b22c2987f7df94c213ad40fb53a10d437e42b5ee6c4fce7c29ecc
# A path inside the build context (vendor/ is the only place .dockerignore lets in).
ARG CLOUD_HYPERVISOR_FILE=
# Optional: a CA bundle in the build context (vendor/) that pip trusts while building, for
# networks that inspect TLS; it is read through a bind mount and never copied into a layer.
ARG BUILD_CA_BUNDLE=

# ---- build: the vmsandbox package and its dependencies in a virtualenv ---------------------
FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY vmsandbox /src/vmsandbox
ARG BUILD_CA_BUNDLE
# Python dependencies resolve within pyproject.toml's ranges at build time (not locked).
RUN --mount=type=bind,target=/context \
    if [ -n "${BUILD_CA_BUNDLE:-}" ]; then export PIP_CERT="/context/${BUILD_CA_BUNDLE}"; fi \
 && python3 -m venv /opt/vmsandbox/venv \
 && /opt/vmsandbox/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src

# ---- guest: what each microVM boots, built by the project's own builder ------------------
FROM ${BASE_IMAGE} AS guest
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 mmdebstrap debian-archive-keyring busybox-static cpio kmod e2fsprogs ca-certificates
COPY --from=build /opt/vmsandbox/venv /opt/vmsandbox/venv
# The builder reads package versions from apt's lists and bootstraps the guest root with
# mmdebstrap from this stage's Debian mirror, without mounting anything, then checks the
# result against its manifest. Its own cache (keyed by every input) survives between builds.
ARG BUILD_CA_BUNDLE
RUN --mount=type=cache,target=/root/.cache/vmsandbox --mount=type=bind,target=/context \
    if [ -n "${BUILD_CA_BUNDLE:-}" ]; then export PIP_CERT="/context/${BUILD_CA_BUNDLE}"; fi \
 && /opt/vmsandbox/venv/bin/vmsandbox-guest-image build --out /opt/vmsandbox/guest \
 && /opt/vmsandbox/venv/bin/vmsandbox-guest-image verify /opt/vmsandbox/guest

# ---- cloud-hypervisor: the release binary, pinned by version and sha256 -------------------
FROM ${BASE_IMAGE} AS cloud-hypervisor
ARG CLOUD_HYPERVISOR_VERSION
ARG CLOUD_HYPERVISOR_SHA256
ARG CLOUD_HYPERVISOR_FILE
RUN --mount=type=bind,target=/context \
    set -eu; mkdir -p /out; \
    version="${CLOUD_HYPERVISOR_VERSION:-}"; sha="${CLOUD_HYPERVISOR_SHA256:-}"; file="${CLOUD_HYPERVISOR_FILE:-}"; \
    if [ "$version" = absent ]; then echo "Cloud Hypervisor: absent (QEMU only)"; exit 0; fi; \
    if ! printf '%s' "$sha" | grep -Eq '^[0-9a-f]{64}$'; then \
      echo "CLOUD_HYPERVISOR_SHA256 must be the 64-hex sha256 of cloud-hypervisor-static $version, not '$sha'" >&2; exit 1; \
    fi; \
    if [ "$version" != v53.0 ] && [ "$sha" = 448af3d4e59b22c2987f7df94c213ad40fb53a10d437e42b5ee6c4fce7c29ecc ]; then \
      echo "CLOUD_HYPERVISOR_VERSION=$version needs its own CLOUD_HYPERVISOR_SHA256 (the default pins v53.0)" >&2; exit 1; \
    fi; \
    if [ -n "$file" ]; then \
      if [ ! -f "/context/$file" ]; then \
        echo "CLOUD_HYPERVISOR_FILE=$file is not in the build context (.dockerignore admits vendor/ only)" >&2; exit 1; \
      fi; \
      cp "/context/$file" /out/cloud-hypervisor; \
    else \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates; \
      curl -fsSL --retry 3 -o /out/cloud-hypervisor \
        "https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/$version/cloud-hypervisor-static"; \
    fi; \
    if ! echo "$sha  /out/cloud-hypervisor" | sha256sum -c - >/dev/null 2>&1; then \
      echo "CLOUD_HYPERVISOR_SHA256 mismatch: cloud-hypervisor-static $version has sha256 $(sha256sum /out/cloud-hypervisor | cut -d' ' -f1), expected $sha" >&2; \
      rm -f /out/cloud-hypervisor; exit 1; \
    fi; \
    chmod 0755 /out/cloud-hypervisor

# ---- runtime: the image that runs ----------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
# python3: the interpreter of the virtualenv; crun/runc: the process backend's OCI runtimes;
# skopeo/umoci: image pull and unpack; e2fsprogs: mkfs.ext4 -d and debugfs for root disks;
# qemu-system-x86: the QEMU backend (KVM when the node has it, TCG otherwise).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 crun runc skopeo umoci e2fsprogs ca-certificates qemu-system-x86 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 65532 vmsandbox \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin vmsandbox \
 && useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin vmsandbox-vmm
# The virtualenv without pip and setuptools: nothing installs anything at run time.
# A layer cache keys a RUN by its text, not by what it mounts from another stage, so the
# sources' hash (hack/build-image.sh passes it) is part of the text: else a rebuild after a
# source change reuses the first build's virtualenv.
ARG SOURCE_SHA256=unknown
RUN --mount=type=bind,from=build,source=/opt/vmsandbox/venv,target=/mnt/venv \
    echo "vmsandbox sources ${SOURCE_SHA256}" \
 && cp -a /mnt/venv /opt/vmsandbox-venv \
 && /opt/vmsandbox-venv/bin/python -c 'import vmsandbox' \
 && rm -rf /opt/vmsandbox-venv/bin/pip* /opt/vmsandbox-venv/lib/python3*/site-packages/pip \
      /opt/vmsandbox-venv/lib/python3*/site-packages/pip-* \
      /opt/vmsandbox-venv/lib/python3*/site-packages/setuptools* \
      /opt/vmsandbox-venv/lib/python3*/site-packages/_distutils_hack \
      /opt/vmsandbox-venv/lib/python3*/site-packages/distutils-precedence.pth \
      /opt/vmsandbox-venv/lib/python3*/site-packages/pkg_resources \
 && mkdir -p /opt/vmsandbox && mv /opt/vmsandbox-venv /opt/vmsandbox/venv
COPY --from=cloud-hypervisor /out/ /usr/local/bin/
COPY --from=guest /opt/vmsandbox/guest /opt/vmsandbox/guest
ENV PATH=/opt/vmsandbox/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VMSANDBOX_GUEST_IMAGE_DIR=/opt/vmsandbox/guest \
    VMSANDBOX_CLOUD_HYPERVISOR_BINARY=/usr/local/bin/cloud-hypervisor
ARG CLOUD_HYPERVISOR_VERSION
LABEL org.opencontainers.image.title="vmsandbox" \
      org.opencontainers.image.description="VMSandbox operator and node agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.vmsandbox.cloud-hypervisor="${CLOUD_HYPERVISOR_VERSION}"
USER 65532:65532
CMD ["vmsandbox-operator"]
