"""Package lookups and downloads through the host's apt, without installing anything on it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.manifest import PackageVersion
from vmsandbox.guest.image.steps import run

# Downloads into a directory the unprivileged _apt user cannot write would otherwise warn.
_APT_OPTS = ("-o", "APT::Sandbox::User=root", "-q")


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def candidates(packages: list[str]) -> dict[str, dict[str, str]]:
    """Control fields of the versions apt would install now, by package name, in one apt call.

    Names apt has no candidate for (unknown or purely virtual) are absent from the result.
    """
    if not packages:
        return {}
    done = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[str, dict[str, str]] = {}
    for stanza in done.stdout.strip().split("\n\n"):
        fields = _fields(stanza)
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def require(step_name: str, packages: list[str]) -> dict[str, dict[str, str]]:
    """Like :func:`candidates`, but every name must have a candidate."""
    found = candidates(packages)
    missing = [name for name in packages if name not in found]
    if missing:
        raise GuestImageError(
            f"apt has no installable version of {', '.join(missing)} (run 'apt-get update' first?)",
            step=step_name,
        )
    return found


def version_of(fields: dict[str, str]) -> PackageVersion:
    return PackageVersion(
        name=fields["Package"], version=fields["Version"], architecture=fields.get("Architecture", "")
    )


def depends_names(fields: dict[str, str], *, prefix: str = "") -> list[str]:
    """Package names in Pre-Depends and Depends (every alternative), optionally by prefix."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for alternative in re.split(r"[,|]", fields.get(field, "")):
            name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
            if name and name.startswith(prefix) and name not in names:
                names.append(name)
    return names


def kernel_image_name(meta: dict[str, str]) -> str:
    """The versioned image package a kernel metapackage (``linux-image-cloud-amd64``) depends on."""
    names = [name for name in depends_names(meta, prefix="linux-image-") if name != meta["Package"]]
    if not names:
        raise GuestImageError(f"{meta['Package']} depends on no linux-image package", step="resolve-packages")
    return names[0]


def download_and_extract(
    step_name: str, package: PackageVersion, scratch: Path, target: Path
) -> PackageVersion:
    """``apt-get download`` one exact version and unpack it with ``dpkg-deb -x`` into ``target``."""
    scratch.mkdir(parents=True, exist_ok=True)
    run(step_name, ["apt-get", *_APT_OPTS, "download", f"{package.name}={package.version}"], cwd=scratch)
    debs = sorted(scratch.glob(f"{package.name}_*.deb"))
    if len(debs) != 1:
        raise GuestImageError(
            f"expected one {package.name} .deb in {scratch}, found {len(debs)}", step=step_name
        )
    target.mkdir(parents=True, exist_ok=True)
    run(step_name, ["dpkg-deb", "-x", debs[0], target])
    fields = _fields(run(step_name, ["dpkg-deb", "-f", debs[0], "Package", "Version", "Architecture"]))
    return PackageVersion(
        name=fields["Package"], version=fields["Version"], architecture=fields["Architecture"]
    )


def installed_packages(step_name: str, root: Path) -> list[PackageVersion]:
    """The dpkg database of a bootstrapped tree, read from the host (no chroot)."""
    text = run(
        step_name,
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
        ],
    )
    packages = []
    for line in text.splitlines():
        name, version, arch, status = line.split("\t")
        if status.startswith("ii"):
            packages.append(PackageVersion(name=name, version=version, architecture=arch))
    return sorted(packages, key=lambda p: p.name)
