"""create refuses bad ids, bundles and configs with the field named, and leaves nothing behind.

These failures happen before any VM is booted; each test also checks that the id stays free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import BundleFactory
from tests.runtime.support import Schemas, base_config
from vmsandbox.runtime import Runtime
from vmsandbox.runtime.errors import IdInUse, InvalidBundle, InvalidConfig, InvalidId, RuntimeError_
from vmsandbox.runtime.podtype import pod_role


def _refused(rt: Runtime, container_id: str, bundle: Path | str, **kwargs: Any) -> RuntimeError_:
    with pytest.raises(RuntimeError_) as info:
        rt.create(container_id, bundle, **kwargs)
    assert rt.list() == []
    assert [p.name for p in rt.root.iterdir()] == [] if rt.root.exists() else True
    return info.value


def test_missing_id(rt: Runtime, make_bundle: BundleFactory) -> None:
    err = _refused(rt, "", make_bundle(["true"]))
    assert isinstance(err, InvalidId)
    assert "missing container id" in str(err)


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "-lead", ".hidden", "a b", "semi;colon", "ünï", "x" * 256], ids=lambda s: s[:12]
)
def test_bad_id_characters(rt: Runtime, make_bundle: BundleFactory, bad: str) -> None:
    outside = rt.root.parent / "x"
    existed = outside.exists()  # the root lives in a shared /tmp: judge by change, not existence
    before = sorted(p.name for p in outside.iterdir()) if outside.is_dir() else None
    err = _refused(rt, bad, make_bundle(["true"]))
    assert isinstance(err, InvalidId)
    assert str(err).startswith("container id:")
    assert outside.exists() == existed
    assert (sorted(p.name for p in outside.iterdir()) if outside.is_dir() else None) == before


def test_id_reserved_atomically(rt: Runtime, make_bundle: BundleFactory) -> None:
    """A directory already holding the id (a concurrent create) makes create fail without touching it."""
    (rt.root / "taken").mkdir(parents=True)
    with pytest.raises(IdInUse, match="already exists"):
        rt.create("taken", make_bundle(["true"]))
    assert (rt.root / "taken").is_dir()
    (rt.root / "taken").rmdir()


def test_missing_bundle(rt: Runtime, tmp_path: Path) -> None:
    err = _refused(rt, "c", tmp_path / "nope")
    assert isinstance(err, InvalidBundle)
    assert "does not exist" in str(err) and str(err).startswith("bundle:")


def test_bundle_not_a_directory(rt: Runtime, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    err = _refused(rt, "c", file)
    assert isinstance(err, InvalidBundle)
    assert "is not a directory" in str(err)


def test_missing_config_json(rt: Runtime, tmp_path: Path) -> None:
    err = _refused(rt, "c", tmp_path)
    assert isinstance(err, InvalidBundle)
    assert "config.json does not exist" in str(err)


def test_malformed_json(rt: Runtime, make_bundle: BundleFactory) -> None:
    bundle = make_bundle(["true"])
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    err = _refused(rt, "c", bundle)
    assert isinstance(err, InvalidConfig)
    assert "not valid JSON" in str(err)


def test_bundle_defaults_to_cwd(rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = _refused(rt, "c", None)  # type: ignore[arg-type]
    assert f"{tmp_path}/config.json does not exist" in str(err)


def _drop_process(c: dict[str, Any]) -> None:
    del c["process"]


def _set(path: str, value: Any) -> Any:
    def edit(c: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (_drop_process, "process", "required but missing"),
        (_set("process.cwd", "relative"), "process.cwd", "absolute"),
        (_set("process.args", []), "process.args", "at least 1"),
        (_set("process.env", ["NOEQUALS"]), "process.env[0]", "KEY=value"),
        (_set("process.user", {"uid": "0", "gid": 0}), "process.user.uid", "integer"),
        (_set("process.terminal", "yes"), "process.terminal", "boolean"),
        (_set("annotations", {"com.example/n": 1}), "annotations.com.example/n", "string"),
        (_set("annotations", {"": "empty key"}), "annotations", "must not be empty"),
        (_set("ociVersion", "1.0"), "ociVersion", "SemVer"),
        (_set("root.path", "no-such-dir"), "root.path", "not a directory"),
        (_set("linux.namespaces", [{"type": "pid"}, {"type": "pid"}]), "linux", "duplicate"),
        (_set("linux.namespaces", [{"type": "bogus"}]), "linux.namespaces[0].type", "pid"),
        (_set("mounts", [{"destination": ""}]), "mounts[0].destination", "at least 1"),
    ],
)
def test_invalid_config_names_the_field(
    rt: Runtime, make_bundle: BundleFactory, edit: Any, field: str, words: str
) -> None:
    err = _refused(rt, "c", make_bundle(["true"], edit=edit))
    assert isinstance(err, InvalidConfig)
    assert err.step == f"config.json: {field}"
    assert words in err.detail


def test_missing_root(rt: Runtime, make_bundle: BundleFactory) -> None:
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    del config["root"]
    (bundle / "config.json").write_text(json.dumps(config))
    err = _refused(rt, "c", bundle)
    assert err.step == "config.json: root"


@pytest.mark.parametrize(
    "annotations",
    [
        {"io.kubernetes.cri.container-type": "pause"},
        {"io.kubernetes.cri-o.ContainerType": "weird"},
        {"io.kubernetes.docker.type": ""},
    ],
)
def test_unknown_container_type(rt: Runtime, make_bundle: BundleFactory, annotations: dict[str, str]) -> None:
    err = _refused(rt, "c", make_bundle(["true"], annotations=annotations))
    assert "unknown container type" in str(err)
    assert err.step.startswith("config.json: annotations.io.kubernetes.")


@pytest.mark.parametrize(
    ("key", "value"),
    [("io.vmsandbox.vm.vcpus", "0"), ("io.vmsandbox.vm.vcpus", "65"), ("io.vmsandbox.vm.memory-mib", "lots")],
)
def test_vm_size_annotation_out_of_bounds(
    rt: Runtime, make_bundle: BundleFactory, key: str, value: str
) -> None:
    err = _refused(rt, "c", make_bundle(["true"], annotations={key: value}))
    assert err.step == f"config.json: annotations.{key}"
    assert repr(value) in str(err)


def test_pod_container_needs_sandbox_id(rt: Runtime, make_bundle: BundleFactory) -> None:
    err = _refused(
        rt, "c", make_bundle(["true"], annotations={"io.kubernetes.cri.container-type": "container"})
    )
    assert "needs its sandbox id" in str(err)


def test_pod_container_of_unknown_sandbox(rt: Runtime, make_bundle: BundleFactory) -> None:
    annotations = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "ghost"}
    err = _refused(rt, "c", make_bundle(["true"], annotations=annotations))
    assert err.step == "sandbox" and "'ghost' does not exist" in err.detail


def test_console_socket_without_terminal(rt: Runtime, make_bundle: BundleFactory, tmp_path: Path) -> None:
    err = _refused(rt, "c", make_bundle(["true"]), console_socket=tmp_path / "sock")
    assert err.step == "console" and "process.terminal is false" in err.detail


def test_terminal_without_console_socket(rt: Runtime, make_bundle: BundleFactory) -> None:
    err = _refused(rt, "c", make_bundle(["sh"], edit=_set("process.terminal", True)))
    assert err.step == "console" and "--console-socket is required" in err.detail


# ---- container type: kata's key order, no VM needed ------------------------------------


@pytest.mark.parametrize(
    ("annotations", "kind", "sandbox"),
    [
        ({}, "sandbox", "me"),
        ({"io.kubernetes.cri.container-type": "sandbox"}, "sandbox", "me"),
        ({"io.kubernetes.docker.type": "podsandbox"}, "sandbox", "me"),
        (
            {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "s1"},
            "container",
            "s1",
        ),
        (
            {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "s2"},
            "container",
            "s2",
        ),
        ({"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": "s3"}, "container", "s3"),
        # containerd's key wins over CRI-O's, whatever the latter says.
        (
            {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri-o.ContainerType": "container",
                "io.kubernetes.cri-o.SandboxID": "x",
            },
            "sandbox",
            "me",
        ),
        # A sandbox id is taken from the first key present, in the same order.
        (
            {
                "io.kubernetes.cri-o.ContainerType": "container",
                "io.kubernetes.cri.sandbox-id": "first",
                "io.kubernetes.cri-o.SandboxID": "second",
            },
            "container",
            "first",
        ),
    ],
)
def test_pod_role_from_annotations(annotations: dict[str, str], kind: str, sandbox: str) -> None:
    role = pod_role("me", annotations)
    assert (role.kind, role.sandbox_id) == (kind, sandbox)


def test_base_config_is_schema_valid(schemas: Schemas) -> None:
    """The configs the lifecycle tests feed create are valid per the official schema."""
    assert schemas.errors("config-schema.json", base_config(["true"])) == []
    bad = base_config(["true"])
    bad["linux"]["namespaces"] = [{"type": "bogus"}]
    assert schemas.errors("config-schema.json", bad) != []
