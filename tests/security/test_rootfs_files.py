"""Files the agent reads from an image (/etc/passwd, /etc/group) are resolved inside the image's
root, must be regular files and are read with a 1 MiB cap: a symlink to a host file, a FIFO, a
device or a huge file fails the sandbox (reason ImageInvalid, naming the path) and the host file's
content never shows anywhere."""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.processes import OperatorProcess
from tests.node_agent.support import Cluster, MakeAgent, unique
from tests.security.support import Tenant, build_image, visible_text
from vmsandbox.node_agent.errors import ImageInvalid
from vmsandbox.node_agent.images import ImageConfig
from vmsandbox.node_agent.inroot import MAX_FILE_BYTES, read_in_root
from vmsandbox.node_agent.ociconfig import process_user

HUGE = 100 * 1024 * 1024
#: On the host, where an image's symlinks point: it would make the container run as uid 4242.
MARKER = f"HOSTSECRET{uuid.uuid4().hex[:8]}"
HOST_PASSWD = f"tenant:x:4242:4242:{MARKER}:/:/bin/sh\n"
HOST_GROUP = f"grp:x:4343:{MARKER}\n"


def _host_files(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "passwd").write_text(HOST_PASSWD)
    (directory / "group").write_text(HOST_GROUP)
    return directory


def _symlink(name: str, target: Callable[[Path], str]) -> Callable[[Path], None]:
    def change(rootfs: Path) -> None:
        (rootfs / "etc" / name).symlink_to(target(rootfs))

    return change


def _fifo(name: str) -> Callable[[Path], None]:
    return lambda rootfs: os.mkfifo(rootfs / "etc" / name)


def _device(name: str) -> Callable[[Path], None]:
    return lambda rootfs: os.mknod(rootfs / "etc" / name, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero


def _huge(name: str) -> Callable[[Path], None]:
    def change(rootfs: Path) -> None:
        with (rootfs / "etc" / name).open("wb") as f:
            f.truncate(HUGE)

    return change


def _etc_is_a_symlink(host: Path) -> Callable[[Path], None]:
    def change(rootfs: Path) -> None:
        (rootfs / "etc").rmdir()
        (rootfs / "etc").symlink_to(host)

    return change


def _cases(host: Path) -> dict[str, tuple[Callable[[Path], None], str, str]]:
    """case -> (edit of the image's root, USER, the path the refusal names)."""
    up = "../" * 12
    return {
        "passwd-abs-link": (_symlink("passwd", lambda r: str(host / "passwd")), "tenant", "/etc/passwd"),
        "passwd-rel-link": (
            _symlink("passwd", lambda r: up + str(host / "passwd")[1:]),
            "tenant",
            "/etc/passwd",
        ),
        "etc-link": (_etc_is_a_symlink(host), "tenant", "/etc/passwd"),
        "passwd-fifo": (_fifo("passwd"), "tenant", "/etc/passwd"),
        "passwd-device": (_device("passwd"), "tenant", "/etc/passwd"),
        "passwd-huge": (_huge("passwd"), "tenant", "/etc/passwd"),
        "passwd-fifo-numeric": (_fifo("passwd"), "1000", "/etc/passwd"),
        "group-abs-link": (_symlink("group", lambda r: str(host / "group")), "0:grp", "/etc/group"),
        "group-rel-link": (_symlink("group", lambda r: up + str(host / "group")[1:]), "0:grp", "/etc/group"),
        "group-fifo": (_fifo("group"), "0:grp", "/etc/group"),
        "group-device": (_device("group"), "0:grp", "/etc/group"),
        "group-huge": (_huge("group"), "0:grp", "/etc/group"),
    }


@pytest.mark.kube
def test_hostile_etc_files_fail_the_sandbox_and_leak_nothing(
    operator: OperatorProcess,
    make_agent: MakeAgent,
    cluster: Cluster,
    tenant: Tenant,
    workdir: Path,
    tmp_path: Path,
) -> None:
    host = _host_files(tmp_path / "host")
    layouts = workdir / "samples"
    layout = layouts / "hostile"
    images = {
        case: build_image(layout, case, change, user) for case, (change, user, _) in _cases(host).items()
    }
    images["fine"] = build_image(
        layout,
        "fine",
        lambda r: (r / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n"),
        "app",
    )
    agent = make_agent(VMSANDBOX_AGENT_ALLOWED_LAYOUT_DIRS=str(layouts))
    names = {case: unique(case.replace("-", "")[:20]) for case in images}
    for case, image in images.items():
        tenant.cluster.create_sandbox(names[case], {"image": image, "command": ["id"]})

    fine = tenant.cluster.wait_phase(names["fine"], "Succeeded", "Failed", timeout=120)
    assert fine["phase"] == "Succeeded", fine
    for case, (_, _, path) in _cases(host).items():
        status = tenant.cluster.wait_phase(names[case], "Failed", "Succeeded", timeout=120)
        assert (status["phase"], status["reason"]) == ("Failed", "ImageInvalid"), (case, status)
        assert path in status["message"], (case, status["message"])
        shown = visible_text(cluster, names[case])
        # The ids as numbers of their own: a digest's hex may contain the same digits.
        ids = re.findall(r"(?<![0-9A-Za-z])(?:4242|4343)(?![0-9A-Za-z])", shown)
        assert MARKER not in shown and ids == [], (case, ids, shown)
        assert status.get("container") is None, (case, status)  # nothing was started
    assert agent.alive()
    assert MARKER not in agent.logs()


# ---- the reader itself, every kind of file ----------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


@pytest.mark.parametrize("name", ["passwd", "group"])
@pytest.mark.parametrize("kind", ["abs-link", "rel-link", "fifo", "device", "huge", "dir"])
def test_read_in_root_refuses_or_reroots(rootfs: Path, tmp_path: Path, name: str, kind: str) -> None:
    host = _host_files(tmp_path / "host")
    target = rootfs / "etc" / name
    if kind in ("abs-link", "rel-link"):
        _symlink(
            name, lambda r: str(host / name) if kind == "abs-link" else "../" * 9 + str(host / name)[1:]
        )(rootfs)
        assert read_in_root(rootfs, f"/etc/{name}") is None  # re-rooted: the image has no such file
        return
    if kind == "dir":
        target.mkdir()
    else:
        {"fifo": _fifo, "device": _device, "huge": _huge}[kind](name)(rootfs)
    with pytest.raises(ImageInvalid) as info:
        read_in_root(rootfs, f"/etc/{name}")
    assert info.value.reason == "ImageInvalid"
    assert f"/etc/{name}" in str(info.value)
    expected = f"is larger than {MAX_FILE_BYTES} bytes" if kind == "huge" else "is not a regular file"
    assert expected in str(info.value)


def test_symlinks_inside_the_image_still_work(rootfs: Path) -> None:
    (rootfs / "data").mkdir()
    (rootfs / "data" / "passwd").write_text("app:x:1000:1001::/:/bin/sh\n")
    (rootfs / "etc" / "passwd").symlink_to("/data/passwd")
    (rootfs / "etc" / "group").symlink_to("../data/../data/../../../data/passwd")
    assert read_in_root(rootfs, "/etc/passwd") == b"app:x:1000:1001::/:/bin/sh\n"
    assert read_in_root(rootfs, "/etc/group") == b"app:x:1000:1001::/:/bin/sh\n"
    assert read_in_root(rootfs, "/etc/../../../etc/passwd") == b"app:x:1000:1001::/:/bin/sh\n"
    (rootfs / "etc" / "loop").symlink_to("loop")
    with pytest.raises(ImageInvalid, match="/etc/loop"):
        read_in_root(rootfs, "/etc/loop")


def test_a_user_the_image_does_not_define_is_an_error_never_root(rootfs: Path, tmp_path: Path) -> None:
    host = _host_files(tmp_path / "host")
    (rootfs / "etc" / "passwd").symlink_to(host / "passwd")
    for user in ("tenant", "tenant:grp", "ghost"):
        with pytest.raises(ImageInvalid, match="is not in the image's /etc/passwd") as info:
            process_user(ImageConfig(User=user), rootfs, "oci:/x")
        assert MARKER not in str(info.value)
    (rootfs / "etc" / "group").symlink_to(host / "group")
    with pytest.raises(ImageInvalid, match="is not in the image's /etc/group"):
        process_user(ImageConfig(User="0:grp"), rootfs, "oci:/x")
