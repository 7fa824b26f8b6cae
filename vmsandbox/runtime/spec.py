"""Reading and checking a bundle's config.json before anything is created.

The models only validate: unknown properties are allowed (the spec says to ignore them) and
the JSON document itself, unknown properties included, is what reaches the guest. Every
refusal names the offending field, e.g. ``config.json: process.cwd: must be an absolute path``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from vmsandbox.runtime.errors import InvalidBundle, InvalidConfig

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def _repeated(types: Iterable[str]) -> list[str]:
    """The types named more than once, sorted: a list the spec says holds each type at most once."""
    seen = list(types)
    return sorted({t for t in seen if seen.count(t) > 1})


def _semver(value: str) -> str:
    if not SEMVER.match(value):
        raise ValueError(f"{value!r} is not a SemVer 2.0.0 version")
    return value


def _env_entry(value: str) -> str:
    key, sep, _ = value.partition("=")
    if not sep or not key:
        raise ValueError(f"{value!r} is not of the form KEY=value")
    return value


AbsPath = Annotated[str, AfterValidator(_absolute)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Root(_Open):
    path: str = Field(min_length=1)
    readonly: bool = False


class User(_Open):
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)
    umask: int | None = Field(default=None, ge=0)
    additionalGids: list[Annotated[int, Field(ge=0)]] | None = None


class ConsoleSize(_Open):
    height: int = Field(ge=0)
    width: int = Field(ge=0)


class Rlimit(_Open):
    type: str = Field(pattern=r"^RLIMIT_[A-Z]+$")
    soft: int = Field(ge=0)
    hard: int = Field(ge=0)


class Process(_Open):
    terminal: bool = False
    consoleSize: ConsoleSize | None = None
    cwd: AbsPath
    args: list[str] = Field(min_length=1)
    env: list[Annotated[str, AfterValidator(_env_entry)]] | None = None
    user: User | None = None
    rlimits: list[Rlimit] | None = None
    noNewPrivileges: bool | None = None
    oomScoreAdj: int | None = None

    def model_post_init(self, context: Any) -> None:
        if duplicates := _repeated(r.type for r in self.rlimits or []):
            raise ValueError(f"duplicate rlimit types {duplicates}")


class Mount(_Open):
    destination: str = Field(min_length=1)
    type: str | None = None
    source: str | None = None
    options: list[str] | None = None


class Namespace(_Open):
    type: Literal["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"]
    path: AbsPath | None = None


class Linux(_Open):
    namespaces: list[Namespace] | None = None
    cgroupsPath: str | None = None

    def model_post_init(self, context: Any) -> None:
        if duplicates := _repeated(ns.type for ns in self.namespaces or []):
            raise ValueError(f"namespaces: duplicate types {duplicates}")


def _annotations(value: dict[str, str]) -> dict[str, str]:
    if "" in value:
        raise ValueError("annotation keys must not be empty")
    return value


class Spec(_Open):
    """The parts of an OCI runtime config this runtime checks before creating anything."""

    ociVersion: Annotated[str, AfterValidator(_semver)]
    root: Root
    #: Required at create (like kata): the relay and the guest need to know what will run.
    process: Process
    hostname: str | None = None
    mounts: list[Mount] | None = None
    annotations: Annotated[dict[str, str], AfterValidator(_annotations)] | None = None
    linux: Linux | None = None


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(document)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "missing":
        return "required but missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


class LoadedSpec(BaseModel):
    """The checked spec, the raw document sent to the guest, and the resolved root path."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: Spec
    document: dict[str, Any]
    rootfs: Path


def load_spec(bundle: Path) -> LoadedSpec:
    config = bundle / "config.json"
    try:
        raw = config.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidBundle(f"{config} does not exist") from exc
    except OSError as exc:
        raise InvalidBundle(f"cannot read {config}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise InvalidConfig(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidConfig("the document must be a JSON object")
    try:
        spec = Spec.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidConfig(_message(dict(first)), step=f"config.json: {_field(first['loc'])}") from exc
    rootfs = Path(spec.root.path)
    if not rootfs.is_absolute():
        rootfs = bundle / rootfs
    if not rootfs.is_dir():
        raise InvalidConfig(f"{rootfs} is not a directory", step="config.json: root.path")
    return LoadedSpec(spec=spec, document=document, rootfs=rootfs.resolve())


def resolve_bundle(bundle: Path | str | None) -> Path:
    """The bundle as an absolute path with symlinks resolved; defaults to the current directory."""
    path = Path(bundle) if bundle else Path.cwd()
    if not path.exists():
        raise InvalidBundle(f"{path} does not exist")
    if not path.is_dir():
        raise InvalidBundle(f"{path} is not a directory")
    return path.resolve()
