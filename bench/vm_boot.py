"""QEMU backend boot, the commit before a change (``--against``, default ``main``) beside the new code.

For each tree, in alternating runs so both see the same host load:

(a) bare QEMU: the driver's exact command line (same kernel, initramfs, root disk, devices and
    VM size) booting that tree's guest image, no driver, no mux proxy, no runtime; timed from
    exec until the guest agent prints ``vmsandbox-guest: ready`` on the serial console.
(b) ``vmsandbox-runtime --hypervisor qemu create`` + ``start`` of a busybox ``true`` bundle, as
    separate CLI processes (as a shim calls them), then waiting for the container's relay pid
    to exit; timed from the first exec until ``start`` returns, and until the exit ("total").
    Deleted, untimed, between runs. Its bootTimings stages come from ``state``; "outside" is what
    the total holds besides them (the two CLI processes, the sandbox's set-up in the guest, the
    relay, the start). Each tree keeps one bundle and one runtime root for the whole benchmark,
    as a node keeps its image cache: the first run of a tree is reported apart ("cold"; the new
    code makes the image's shared disk then), the others are the steady state.

Each tree uses its own guest image: the new one from ``--image-dir`` (default
``$VMSANDBOX_GUEST_IMAGE_DIR``), the old one built by the old tree's builder (cached by inputs).
Targets: the new agentReady <= 40% of its vmBoot; the new total <= 60% of the old.

    python bench/vm_boot.py [--runs 10] [--against main] [--image-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import baseline_tree, describe, load, measure, tree_env, use_tree

TREE = use_tree()
from guestboot import READY_TIMEOUT, console_until_ready, driver_settings  # noqa: E402

from vmsandbox.hypervisor.config import HypervisorConfig  # noqa: E402
from vmsandbox.hypervisor.qemu.probe import choose_accel  # noqa: E402

BUSYBOX = Path(os.environ.get("VMSANDBOX_TEST_BUSYBOX", "/bin/busybox"))
IMAGE_FILES = ("vmlinuz", "initramfs.img", "rootfs.img")


def bare_boot(config: HypervisorConfig, image: Path, work: Path, n: int) -> float:
    """Exec the driver's QEMU command line; seconds until the agent's ready line."""
    return console_until_ready(config, image, work / f"a{n}")[-1][0]


def make_bundle(work: Path) -> Path:
    bundle = work / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for name in ("proc", "sys", "dev", "tmp"):
        (rootfs / name).mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "true").symlink_to("busybox")
    config = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]},
    }
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _wait_gone(pid: int) -> None:
    """Until ``pid`` (the relay, not our child: its creator exited) has exited."""
    deadline = time.monotonic() + READY_TIMEOUT
    while Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
        if stat.rpartition(")")[2].split()[:1] == ["Z"] or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def runtime_boot(
    cli: list[str], root: Path, bundle: Path, env: dict[str, str], n: int
) -> tuple[float, float, dict[str, float]]:
    """create + start through the CLI; seconds to start and to exit, plus the runtime's stages."""
    cid = f"bench{n}"
    base = [*cli, "--hypervisor", "qemu", "--root", str(root)]
    # A file, not a pipe, for stderr: the container's relay inherits it and outlives create.
    errors = root.parent / f"runtime{n}.err"
    pid_file = root.parent / f"runtime{n}.pid"
    started = time.monotonic()
    for step in (["create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid], ["start", cid]):
        with errors.open("wb") as err:
            code = subprocess.run(
                [*base, *step], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
            ).returncode
        if code != 0:
            raise SystemExit(f"vmsandbox-runtime {step[0]} failed: {errors.read_text()[-800:]}")
    elapsed = time.monotonic() - started
    _wait_gone(int(pid_file.read_text()))
    total = time.monotonic() - started
    state = subprocess.run([*base, "state", cid], capture_output=True, env=env, check=True)
    timings: dict[str, float] = json.loads(state.stdout).get("timings", {})
    subprocess.run([*base, "delete", "--force", cid], stdin=subprocess.DEVNULL, env=env, check=True)
    return elapsed, total, timings


def measure_once(image: Path, keep: Path) -> dict[str, object]:
    """One (a) and one (b) run against the tree this process imports (``--measure``).

    ``keep`` holds the tree's bundle and runtime root from one run to the next.
    """
    config = driver_settings()
    cli = [sys.executable, "-m", "vmsandbox.runtime"]
    env = tree_env(TREE, dict(os.environ, VMSANDBOX_GUEST_IMAGE_DIR=str(image)))
    bundle = keep / "bundle" if (keep / "bundle" / "config.json").exists() else make_bundle(keep)
    work = Path(tempfile.mkdtemp(prefix="vb", dir="/tmp"))
    try:
        bare = bare_boot(config, image, work, 0)
        started, total, timings = runtime_boot(cli, keep / "root", bundle, env, 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"bare": bare, "start": started, "total": total, "timings": timings}


def old_image(tree: Path, scratch: Path) -> Path:
    """The old tree's guest image, built by its own builder (the build cache is keyed by inputs)."""
    out = scratch / "old-image"
    done = subprocess.run(
        [sys.executable, "-m", "vmsandbox.guest.image.cli", "build", "--out", str(out)],
        env=tree_env(tree),
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"building the old guest image failed: {done.stderr[-1500:]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--against", default="main", help="old code: where HEAD forked from this ref")
    parser.add_argument("--image-dir", type=Path, default=None, help="default: $VMSANDBOX_GUEST_IMAGE_DIR")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    image = args.image_dir or driver_settings().guest_image_dir
    if args.measure:
        print(json.dumps(measure_once(image, args.keep)))
        return 0
    for name in IMAGE_FILES:
        if not (image / name).is_file():
            raise SystemExit(
                f"{image / name} missing: build it with vmsandbox-guest-image build --out {image}"
            )
    config = driver_settings()
    accel = choose_accel(config, image / "vmlinuz")  # probe (or read the cached verdict) before timing
    from tests.vmm_user import ensure_vmm_user, reachable_image  # this tree's tests, not the old one's

    script = Path(__file__).resolve()
    results: dict[str, list[dict[str, object]]] = {"old": [], "new": []}
    scratch = Path(tempfile.mkdtemp(prefix="vbb", dir="/tmp"))
    scratch.chmod(0o711)  # the VMM user must reach each VM's state directory below; it lists nothing
    try:
        with baseline_tree(args.against) as old:
            # The new image where the VMM user can reach it, as the tests keep it (a home
            # directory's cache often is not).
            images = {"old": old_image(old, scratch), "new": reachable_image(image, ensure_vmm_user())}
            trees = {"old": old, "new": TREE}
            for label in trees:
                (scratch / label).mkdir()
            for n in range(args.runs):
                for label in ("old", "new"):
                    where = ["--image-dir", str(images[label]), "--keep", str(scratch / label)]
                    run = measure(script, trees[label], where)
                    results[label].append(run)
                    print(f"run {n + 1}/{args.runs} {label}: {run}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = summarize(results)
    print(f"\naccel: {accel}, {args.runs} runs each, old = {args.against}; {load()}")
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


#: The bootTimings stages; what the total holds besides them is reported as "outside".
STAGES = ("vmmStart", "vmBoot", "agentReady", "containerCreate")


def _series(runs: list[dict[str, object]], key: str) -> list[float]:
    values: list[float] = []
    for run in runs:
        if key in ("bare", "start", "total"):
            values.append(float(run[key]) * 1000)  # type: ignore[arg-type]
        elif key == "outside":
            timings = run["timings"]
            assert isinstance(timings, dict)
            staged = sum(float(timings.get(stage) or 0.0) for stage in STAGES)
            values.append(float(run["total"]) * 1000 - staged)  # type: ignore[arg-type]
        else:
            timings = run["timings"]
            assert isinstance(timings, dict)
            if timings.get(key) is not None:
                values.append(float(timings[key]))
    return values


SERIES = (
    "bare",
    "start",
    "total",
    "vmmStart",
    "vmBoot",
    "agentReady",
    "kernelToInit",
    "initToAgentReady",
    "containerCreate",
    "outside",
)


def summarize(results: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, list[float]]]:
    """Per tree, the steady-state runs (all but the first); ``<tree>-cold`` is the first run."""
    report = {
        label: {key: _series(runs[1:] or runs, key) for key in SERIES} for label, runs in results.items()
    }
    for label, runs in results.items():
        report[f"{label}-cold"] = {key: _series(runs[:1], key) for key in SERIES}
    return report


def print_report(report: dict[str, dict[str, list[float]]]) -> None:
    labels = {
        "bare": "(a) bare QEMU to agent ready",
        "start": "(b) runtime create+start",
        "total": "(b) create to container exit",
        "vmmStart": "    vmmStart",
        "vmBoot": "    vmBoot",
        "agentReady": "    agentReady",
        "kernelToInit": "    kernelToInit (guest clock)",
        "initToAgentReady": "    initToAgentReady (guest clock)",
        "containerCreate": "    containerCreate",
        "outside": "    outside them (CLIs, set-up, relay)",
    }
    print(f"{'ms':<34} {'old':<32} new")
    for key, label in labels.items():
        old, new = report["old"][key], report["new"][key]
        print(f"{label:<34} {describe(old) if old else '-':<32} {describe(new) if new else '-'}")
    for label in ("old", "new"):
        boot, ready = report[label]["vmBoot"], report[label]["agentReady"]
        if boot and ready:
            share = statistics.median(ready) / statistics.median(boot)
            print(f"{label}: agentReady / vmBoot (medians) {share:.0%}  (target <= 40%)")
    old_total, new_total = report["old"]["total"], report["new"]["total"]
    ratio = statistics.median(new_total) / statistics.median(old_total)
    print(f"new / old total create->exit (medians): {ratio:.0%}  (target <= 60%)")
    cold = {label: report[f"{label}-cold"]["total"] for label in ("old", "new")}
    if cold["old"] and cold["new"]:
        old_ms, new_ms = cold["old"][0], cold["new"][0]
        print(f"first run, create->exit (new makes the disk): old {old_ms:.0f} ms, new {new_ms:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
