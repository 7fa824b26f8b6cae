"""Where the guest agent's start goes under QEMU, stage by stage, beside the same work on the host.

Boots the guest image (``--image-dir``, default ``$VMSANDBOX_GUEST_IMAGE_DIR``) on the QEMU
driver's exact command line with a probe initramfs: the image's own, followed by a second
archive whose ``/init`` is this tree's init script with a probe run just before it starts the
agent. The probe runs the guest's interpreter in the new root four times, timing each on the
guest's clock: ``python3 -I -S -c pass`` twice, then the agent's start-path imports twice. The
first of a pair pays what only a first run pays (reading the files from the root disk and, under
TCG, translating every guest instruction it runs for the first time); the second pays for the
work itself. Half the boots (``preread``) first read the interpreter's files into the page cache
in one ``cat``, which splits the first run's cost between the disk and the translation. After
the probe the agent starts as it always does; its time to the ready line is measured as well.

The reference in the same run is the host running the same interpreter commands (Debian's
python3.11 on both sides when the host is Debian 12): the guest-to-host ratio of the second runs
is what emulation multiplies the work by. Medians and the p90 (nearest rank) of ``--runs`` boots
per variant, variants alternating.

    python bench/guest_start.py [--runs 5] [--image-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import use_tree

TREE = use_tree()
from guestboot import console_until_ready, driver_settings  # noqa: E402
from quantiles import percentile  # noqa: E402

from vmsandbox.guest.image import cpio  # noqa: E402
from vmsandbox.guest.image.initramfs import init_script  # noqa: E402

#: The agent's start-path imports, as the image's launcher makes them (tests/runtime/test_wire.py).
START_IMPORTS = "import vmsandbox.guest.__main__, vmsandbox.guest.mux"
#: What the interpreter's first run reads, relative to the new root: the binary, its libraries
#: and the compiled modules.
PREREAD = (
    "usr/bin/python3.11 lib/x86_64-linux-gnu/libc.so.6 lib/x86_64-linux-gnu/libm.so.6 "
    "lib/x86_64-linux-gnu/libz.so.1 lib/x86_64-linux-gnu/libexpat.so.1 lib64/ld-linux-x86-64.so.2 "
    "etc/ld.so.cache usr/lib/python3.11/__pycache__/* usr/lib/python3.11/encodings/__pycache__/* "
    "usr/lib/vmsandbox/python/vmsandbox/__pycache__/* usr/lib/vmsandbox/python/vmsandbox/guest/__pycache__/*"
)
#: Shell run by the probe init just before it starts the agent (init.sh's own helpers and names).
PROBE = r"""
probe_stamp() {
    stamp "$NEWROOT"
    say "probe $1 uptime=$UPTIME"
}
probe_python() {
    chroot "$NEWROOT" "$PYTHON" -I -S -c "$1" || die "probe: the interpreter failed on: $1"
}
probe_stamp begin
if [ "@PREREAD@" = 1 ]; then
    (cd "$NEWROOT" && cat @FILES@ >/dev/null 2>&1)
    probe_stamp preread
fi
probe_python pass
probe_stamp python_first
probe_python pass
probe_stamp python_again
probe_python "import sys; sys.path.insert(0, '$AGENT_PATH'); @IMPORTS@"
probe_stamp imports_first
probe_python "import sys; sys.path.insert(0, '$AGENT_PATH'); @IMPORTS@"
probe_stamp imports_again
"""
VARIANTS = ("cold", "preread")
_STAMP = re.compile(r"vmsandbox-init: (?:stage=(\w+)|probe (\w+)).*uptime=([\d.]+)")


def probe_initramfs(image: Path, out: Path, preread: bool) -> Path:
    """The image's initramfs followed by an archive holding the probing ``/init``."""
    ours = init_script()
    script = ours.decode()
    if "\nstart_agent\n" not in script:
        raise SystemExit("this tree's init script has no start_agent step to probe before")
    packed = (image / "initramfs.img").read_bytes()
    if ours not in gzip.decompress(packed):
        raise SystemExit(f"{image} was not built from this tree's init script; rebuild it")
    probe = (
        PROBE.replace("@PREREAD@", "1" if preread else "0")
        .replace("@FILES@", PREREAD)
        .replace("@IMPORTS@", START_IMPORTS)
    )
    probed = script.replace("\nstart_agent\n", f"\n{probe}\nstart_agent\n")
    archive = io.BytesIO()
    cpio.write_newc(archive, [cpio.regular("init", probed.encode(), 0o755)])
    out.write_bytes(packed + gzip.compress(archive.getvalue(), mtime=0))
    return out


def stages(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Milliseconds per stage: guest clock up to the agent's exec, host clock from there to ready."""
    marks: dict[str, float] = {}
    agent_host = None
    for host_seconds, line in lines:
        found = _STAMP.search(line)
        if found:
            marks[found.group(1) or found.group(2)] = float(found.group(3)) * 1000
            if found.group(1) == "agent":
                agent_host = host_seconds
    if agent_host is None:
        raise SystemExit("the console shows no agent stage: " + " | ".join(line for _, line in lines[-5:]))
    out = {
        "kernel to init": marks["init"],
        "modules": marks["modules"] - marks["init"],
        "root disk and overlay": marks["rootfs"] - marks["modules"],
        "python first run": marks["python_first"] - marks.get("preread", marks["begin"]),
        "python again": marks["python_again"] - marks["python_first"],
        "imports first run (with interpreter)": marks["imports_first"] - marks["python_again"],
        "imports again (with interpreter)": marks["imports_again"] - marks["imports_first"],
        "agent exec to ready (host clock)": (lines[-1][0] - agent_host) * 1000,
    }
    if "preread" in marks:
        out["preread of the interpreter's files"] = marks["preread"] - marks["begin"]
    return out


def host_reference(runs: int) -> dict[str, list[float]]:
    """The same interpreter commands on the host, the first of each discarded (warm, as "again")."""
    python = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
    commands = {
        "python again": "pass",
        "imports again (with interpreter)": f"import sys; sys.path.insert(0, {str(TREE)!r}); {START_IMPORTS}",
    }
    out: dict[str, list[float]] = {name: [] for name in commands}
    for name, code in commands.items():
        for n in range(runs + 1):
            started = time.monotonic()
            subprocess.run([python, "-I", "-S", "-c", code], check=True)
            if n:
                out[name].append((time.monotonic() - started) * 1000)
    return out


def _row(values: list[float]) -> str:
    if not values:
        return f"{'—':>8} {'':>13}"
    return f"{statistics.median(values):8.0f} p90 {percentile(values, 90):7.0f}"


def print_report(results: dict[str, list[dict[str, float]]], host: dict[str, list[float]]) -> None:
    names = list(results["preread"][0])
    print(f"{'ms':40} {'cold':>22} {'preread':>22} {'host':>22}")
    for name in names:
        cells = [_row([run[name] for run in results[v] if name in run]) for v in VARIANTS]
        print(f"{name:40} {cells[0]:>22} {cells[1]:>22} {_row(host.get(name, [])):>22}")
    for name, values in host.items():
        guest = [run[name] for v in VARIANTS for run in results[v]]
        print(f"guest / host, {name}: {statistics.median(guest) / statistics.median(values):.0f}x")


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image-dir", type=Path, default=None, help="default: $VMSANDBOX_GUEST_IMAGE_DIR")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    image = args.image_dir or Path(os.environ.get("VMSANDBOX_GUEST_IMAGE_DIR", ""))
    if not (image / "vmlinuz").exists():
        raise SystemExit("no guest image: pass --image-dir or set VMSANDBOX_GUEST_IMAGE_DIR")
    config = driver_settings()
    with tempfile.TemporaryDirectory(prefix="gs", dir="/tmp") as scratch:
        work = Path(scratch)
        initramfs = {v: probe_initramfs(image, work / f"{v}.img", v == "preread") for v in VARIANTS}
        results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for n in range(args.runs):
            for variant in VARIANTS:
                lines = console_until_ready(config, image, work / f"{variant}{n}", initramfs[variant])
                results[variant].append(stages(lines))
                print(f"run {n + 1}/{args.runs} {variant}: {results[variant][-1]}", flush=True)
    host = host_reference(args.runs)
    print()
    print(f"{args.runs} boots per variant; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print_report(results, host)
    if args.json:
        args.json.write_text(json.dumps({"guest": results, "host": host}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
