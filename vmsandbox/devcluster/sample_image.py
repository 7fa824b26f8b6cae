"""A busybox OCI image built from Debian's busybox-static, so samples run with no registry.

``vmsandbox dev`` and the demo seed it where ``samples/hello-local.yaml`` points; tests use it
as their image. It holds ``/bin/busybox`` with its applets linked, ``/etc/passwd`` and
``/etc/group``, ``PATH=/bin`` and ``Cmd ["sh"]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vmsandbox.devcluster.errors import DevClusterError

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "cat", "sleep", "true", "false", "ls", "uname", "env", "id", "kill", "wc", "head")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
#: The directory ``vmsandbox dev`` lets sandboxes take ``oci:`` layouts from (allowedLayoutDirs).
SAMPLES_DIR = Path("/var/lib/vmsandbox-samples")
#: Where samples/hello-local.yaml expects the layout.
SAMPLE_LAYOUT = SAMPLES_DIR / "busybox"


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DevClusterError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}", step="sample image")


def fill_busybox_rootfs(rootfs: Path, applets: Iterable[str] = APPLETS) -> None:
    """What makes ``rootfs`` a busybox image: the binary, ``applets`` linked to it, passwd and group."""
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in applets:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)


def build_busybox_layout(layout: Path, tag: str = "latest", cmd: str = "sh") -> Path:
    """Create (or add ``tag`` to) an OCI layout at ``layout`` holding busybox; returns ``layout``."""
    if not BUSYBOX.exists() or not shutil.which("umoci"):
        raise DevClusterError("needs Debian's busybox-static and umoci", step="sample image")
    if not (layout / "index.json").exists():
        layout.parent.mkdir(parents=True, exist_ok=True)
        _run("umoci", "init", "--layout", str(layout))
    with tempfile.TemporaryDirectory(prefix="vmsandbox-sample-") as tmp:
        work = Path(tmp) / "bundle"
        _run("umoci", "new", "--image", f"{layout}:{tag}")
        _run("umoci", "unpack", "--rootless", "--image", f"{layout}:{tag}", str(work))
        fill_busybox_rootfs(work / "rootfs")
        _run("umoci", "repack", "--image", f"{layout}:{tag}", str(work))
    _run(
        "umoci",
        "config",
        "--image",
        f"{layout}:{tag}",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/",
    )
    _run("umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", cmd)
    _run("umoci", "gc", "--layout", str(layout))
    return layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmsandbox.devcluster.sample_image", description=__doc__)
    parser.add_argument("--layout", type=Path, default=SAMPLE_LAYOUT)
    parser.add_argument("--tag", default="1.36")
    args = parser.parse_args(argv)
    print(build_busybox_layout(args.layout, args.tag))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
