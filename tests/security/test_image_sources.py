"""``oci:`` image layouts: only from directories the node's admin lists (allowedLayoutDirs), never
the image cache, never through ``..`` or a symlink out; digests read from a layout are checked
before they become paths. A refusal says the same whether or not the path exists."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.processes import OperatorProcess
from tests.node_agent.support import AgentProcess, Cluster, MakeAgent, Registry, unique
from tests.security.support import Tenant
from vmsandbox.node_agent.config import ConfigError, load_config
from vmsandbox.node_agent.images import resolve_manifest

NOT_ALLOWED = "is not in a directory this node allows images from (agent option allowedLayoutDirs)"


def _unpacked(agent: AgentProcess) -> set[str]:
    rootfs = agent.state_dir / "images" / "rootfs"
    return {p.name for p in rootfs.iterdir()} if rootfs.is_dir() else set()


@pytest.mark.kube
def test_only_layouts_in_allowed_directories_run(
    operator: OperatorProcess,
    make_agent: MakeAgent,
    cluster: Cluster,
    tenant: Tenant,
    registry: Registry,
    busybox_layout: Path,
    workdir: Path,
    tmp_path: Path,
) -> None:
    allowed = workdir / "samples"
    shutil.copytree(busybox_layout, allowed / "busybox", symlinks=True)
    outside = tmp_path / "outside"
    shutil.copytree(busybox_layout, outside / "busybox", symlinks=True)
    (allowed / "escape").symlink_to(outside / "busybox", target_is_directory=True)
    # The agent's whole work directory is allowed too: its image cache lies inside and is still refused.
    agent = make_agent(VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS=f"{allowed},{workdir}")

    fine = unique("allowed")
    tenant.cluster.create_sandbox(fine, {"image": f"oci:{allowed}/busybox:latest", "command": ["true"]})
    assert tenant.cluster.wait_phase(fine, "Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    pulled = unique("pulled")
    tenant.cluster.create_sandbox(
        pulled, {"image": f"{registry.host}/test/busybox:nocmd", "command": ["true"]}
    )
    assert tenant.cluster.wait_phase(pulled, "Succeeded", "Failed", timeout=90)["phase"] == "Succeeded"
    cache_layouts = sorted((agent.state_dir / "images" / "layouts").iterdir())
    assert cache_layouts, "the registry pull left a layout in the image cache"
    before = _unpacked(agent)

    refused = {
        "outside": str(outside / "busybox"),
        "missing": str(tmp_path / "nothing-here"),
        "dotdot": f"{allowed}/{'../' * (len(allowed.parts) - 1)}{outside.relative_to('/')}/busybox",
        "symlink": str(allowed / "escape"),
        "cache": str(cache_layouts[0]),
        "etc": "/etc",
    }
    names = {}
    for what, path in refused.items():
        names[what] = unique(what)
        tag = "image" if what == "cache" else "nocmd"
        tenant.cluster.create_sandbox(names[what], {"image": f"oci:{path}:{tag}", "command": ["true"]})
    messages = {}
    for what, path in refused.items():
        status = tenant.cluster.wait_phase(names[what], "Failed", "Succeeded", timeout=60)
        assert (status["phase"], status["reason"]) == ("Failed", "ImageNotAllowed"), (what, status)
        assert status["message"] == f"spec.image: OCI layout {path} {NOT_ALLOWED}", (what, status)
        messages[what] = status["message"].replace(path, "<path>")
    assert len(set(messages.values())) == 1, messages  # existing or not, the same answer
    # Nothing refused was unpacked: the cache holds what the two allowed sandboxes used, no more.
    assert _unpacked(agent) == before


def _rewrite_index(layout: Path, digest: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [
        {
            **index["manifests"][0],
            "digest": digest,
            "annotations": {"org.opencontainers.image.ref.name": "bad"},
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))


def _bad_config_digest(layout: Path, tag: str, digest: str) -> None:
    """A manifest whose config descriptor names ``digest``, tagged ``bad``."""
    manifest_digest, manifest = resolve_manifest(layout, tag)
    manifest["config"]["digest"] = digest
    blob = json.dumps(manifest).encode()
    hexpart = hashlib.sha256(blob).hexdigest()
    (layout / "blobs" / "sha256" / hexpart).write_bytes(blob)
    _rewrite_index(layout, f"sha256:{hexpart}")
    assert manifest_digest != f"sha256:{hexpart}"


@pytest.mark.kube
@pytest.mark.parametrize(
    ("where", "digest"),
    [
        ("index", "sha256:../../../../../etc/passwd"),
        ("index", "sha512:" + "a" * 128),
        ("config", "sha256:../../../../etc/shadow"),
        ("config", "sha256:" + "A" * 64),
    ],
)
def test_digests_read_from_a_layout_are_checked_before_they_become_paths(
    operator: OperatorProcess,
    make_agent: MakeAgent,
    tenant: Tenant,
    busybox_layout: Path,
    workdir: Path,
    where: str,
    digest: str,
) -> None:
    allowed = workdir / "samples"
    layout = allowed / "hostile"
    shutil.copytree(busybox_layout, layout, symlinks=True)
    if where == "index":
        _rewrite_index(layout, digest)
    else:
        _bad_config_digest(layout, "latest", digest)
    agent = make_agent(VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS=str(allowed))
    name = unique("digest")
    tenant.cluster.create_sandbox(name, {"image": f"oci:{layout}:bad", "command": ["true"]})
    status = tenant.cluster.wait_phase(name, "Failed", "Succeeded", timeout=60)
    assert (status["phase"], status["reason"]) == ("Failed", "ImageInvalid"), status
    assert f"{digest[:100]!r} is not a sha256 digest" in status["message"], status
    assert _unpacked(agent) == set()


@pytest.mark.parametrize(
    ("dirs", "words"),
    [
        ("/var/lib/vmsandbox/images", "the image cache is never a layout source"),
        ("/var/lib/vmsandbox", "the image cache is never a layout source"),
        ("samples", "must be absolute paths"),
        ("/srv/layouts/../../var/lib/vmsandbox", "without '..'"),
    ],
)
def test_the_agent_refuses_layout_directories_that_cover_its_state(dirs: str, words: str) -> None:
    with pytest.raises(ConfigError, match="allowedLayoutDirs") as info:
        load_config(environ={"NODE_NAME": "n", "VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS": dirs})
    assert words in str(info.value)


def test_layout_directories_default_to_none() -> None:
    assert load_config(environ={"NODE_NAME": "n"}).allowed_layout_dirs == []
