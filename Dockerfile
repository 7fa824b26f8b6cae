# syntax=docker/dockerfile:1
# One image for both programs: `vmsandbox-operator` (the default command, non-root) and
# `vmsandbox-agent` (the chart's DaemonSet runs it as root; see charts/vmsandbox/values.yaml).
#
#   docker build \
#     --build-arg CLOUD_HYPERVISOR_SHA256=<sha256 of cloud-hypervisor-static of that release> \
#     -t vmsandbox:dev .
#
# Stages: wheel (the package) -> guest (kernel, initramfs, root image) and cloud-hypervisor
# (pinned release binary, checksum-verified) -> runtime (slim Python + Debian tools).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Cloud Hypervisor release tag (https://github.com/cloud-hypervisor/cloud-hypervisor/releases).
ARG CLOUD_HYPERVISOR_VERSION=v51.1
# sha256 of that release's `cloud-hypervisor-static` asset. Deliberately no default: a
# checksum is only worth something if it comes from a source you trust, so the build refuses
# to run without one rather than trusting whatever the download returns. Compute it once from
# a download you verified and pin it beside the version (e.g. in CI's build command); a
# changed version needs a new checksum, and a mismatch fails the build at `sha256sum -c`.
ARG CLOUD_HYPERVISOR_SHA256

# ---- wheel: the vmsandbox package, built once and installed by the later stages ------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vmsandbox ./vmsandbox
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- guest: what each microVM boots, built by the project's own builder ------------------
FROM ${PYTHON_IMAGE} AS guest
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      mmdebstrap debian-archive-keyring busybox-static cpio kmod e2fsprogs ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl
# The builder reads package versions from apt's lists and bootstraps the guest root with
# mmdebstrap from this stage's Debian mirror, without mounting anything, then checks the
# result against its manifest; the lists are refreshed and dropped within the same layer.
RUN apt-get update \
 && vmsandbox-guest-image build --out /opt/vmsandbox/guest \
 && vmsandbox-guest-image verify /opt/vmsandbox/guest \
 && rm -rf /var/lib/apt/lists/* /root/.cache/vmsandbox

# ---- cloud-hypervisor: the official static release binary, pinned by version and sha256 --
FROM debian:bookworm-slim AS cloud-hypervisor
ARG CLOUD_HYPERVISOR_VERSION
ARG CLOUD_HYPERVISOR_SHA256
RUN if ! printf '%s' "${CLOUD_HYPERVISOR_SHA256}" | grep -Eq '^[0-9a-f]{64}$'; then \
      echo "CLOUD_HYPERVISOR_SHA256 must be set to the 64-hex sha256 of cloud-hypervisor-static ${CLOUD_HYPERVISOR_VERSION}:" >&2; \
      echo "  docker build --build-arg CLOUD_HYPERVISOR_SHA256=<sha256> ..." >&2; \
      exit 1; \
    fi
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN curl -fsSL --retry 3 -o /cloud-hypervisor \
      "https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/${CLOUD_HYPERVISOR_VERSION}/cloud-hypervisor-static" \
 && echo "${CLOUD_HYPERVISOR_SHA256}  /cloud-hypervisor" | sha256sum -c - \
 && chmod 0755 /cloud-hypervisor

# ---- runtime: the image that runs ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# crun/runc: the process backend's OCI runtimes; skopeo/umoci: image pull and unpack;
# e2fsprogs: mkfs.ext4 -d and debugfs for container root disks.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      crun runc skopeo umoci e2fsprogs ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 vmsandbox \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin vmsandbox
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl
COPY --from=cloud-hypervisor /cloud-hypervisor /usr/local/bin/cloud-hypervisor
COPY --from=guest /opt/vmsandbox/guest /opt/vmsandbox/guest
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VMSANDBOX_GUEST_IMAGE_DIR=/opt/vmsandbox/guest \
    VMSANDBOX_CLOUD_HYPERVISOR_BINARY=/usr/local/bin/cloud-hypervisor
ARG CLOUD_HYPERVISOR_VERSION
LABEL org.opencontainers.image.title="vmsandbox" \
      org.opencontainers.image.description="VMSandbox operator and node agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.vmsandbox.cloud-hypervisor.version="${CLOUD_HYPERVISOR_VERSION}"
USER 65532:65532
CMD ["vmsandbox-operator"]
