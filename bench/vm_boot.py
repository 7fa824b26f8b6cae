"""Boot overhead of the QEMU backend over QEMU's own boot of the same guest.

(a) bare QEMU: the driver's exact command line (same kernel, initramfs, root disk, devices and
    VM size), no driver, no mux proxy, no runtime; timed from exec until the guest agent prints
    ``vmsandbox-guest: ready`` on the serial console.
(b) ``vmsandbox-runtime --hypervisor qemu create`` + ``start`` of a busybox ``true`` bundle, as
    separate CLI processes (as a shim calls them); timed from the first exec until ``start``
    returns. Deleted, untimed, between runs.

Runs alternate a, b, a, b... so both see the same host load. Prints medians, p95 and the ratio
of medians (b)/(a); the target is <= 1.15.

    python bench/vm_boot.py [--runs 10] [--image-dir DIR] [--json OUT]
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

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vmsandbox.hypervisor.base import VMSpec  # noqa: E402
from vmsandbox.hypervisor.config import HypervisorConfig  # noqa: E402
from vmsandbox.hypervisor.qemu.driver import READY_MARKER, VMPaths, qemu_argv  # noqa: E402
from vmsandbox.hypervisor.qemu.probe import choose_accel  # noqa: E402

READY_TIMEOUT = 300.0
BUSYBOX = Path(os.environ.get("VMSANDBOX_TEST_BUSYBOX", "/bin/busybox"))


class Summary(BaseModel):
    runs: int
    median_s: float
    p95_s: float
    min_s: float
    max_s: float


class Report(BaseModel):
    accel: str
    bare_qemu: Summary
    runtime_create_start: Summary
    ratio_of_medians: float
    #: The driver's share alone: (b)'s own vmmStart + vmBoot + agentReady against (a).
    driver_boot_median_s: float
    driver_boot_ratio: float
    runtime_stage_medians_ms: dict[str, float]


def summarize(samples: list[float]) -> Summary:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Summary(
        runs=len(samples),
        median_s=statistics.median(samples),
        p95_s=p95,
        min_s=ordered[0],
        max_s=ordered[-1],
    )


def bare_boot(config: HypervisorConfig, image: Path, work: Path, n: int) -> float:
    """Exec the driver's QEMU command line; seconds until the agent's ready line."""
    state = work / f"a{n}"
    state.mkdir()
    paths = VMPaths(state_dir=state)
    spec = VMSpec(
        vm_id=f"bench-a{n}",
        state_dir=state,
        kernel=image / "vmlinuz",
        initramfs=image / "initramfs.img",
        root_disk=image / "rootfs.img",
    )
    argv = qemu_argv(config.qemu_binary, spec, choose_accel(config, image / "vmlinuz"), paths)
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            if paths.console.exists() and READY_MARKER in paths.console.read_bytes():
                return time.monotonic() - started
            if proc.poll() is not None:
                raise SystemExit(
                    f"bare QEMU exited with {proc.returncode}: {paths.console.read_text()[-800:]}"
                )
            if time.monotonic() - started > READY_TIMEOUT:
                raise SystemExit("bare QEMU: no ready line within the timeout")
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(state, ignore_errors=True)


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


def runtime_boot(
    cli: list[str], root: Path, bundle: Path, env: dict[str, str], n: int
) -> tuple[float, dict[str, float]]:
    """create + start through the CLI; seconds, plus the runtime's own per-stage timings."""
    cid = f"bench{n}"
    base = [*cli, "--hypervisor", "qemu", "--root", str(root)]
    # A file, not a pipe, for stderr: the container's relay inherits it and outlives create.
    errors = root.parent / f"runtime{n}.err"
    started = time.monotonic()
    for step in (["create", "--bundle", str(bundle), cid], ["start", cid]):
        with errors.open("wb") as err:
            code = subprocess.run(
                [*base, *step], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
            ).returncode
        if code != 0:
            raise SystemExit(f"vmsandbox-runtime {step[0]} failed: {errors.read_text()[-800:]}")
    elapsed = time.monotonic() - started
    state = subprocess.run([*base, "state", cid], capture_output=True, env=env, check=True)
    timings: dict[str, float] = json.loads(state.stdout).get("timings", {})
    subprocess.run([*base, "delete", "--force", cid], stdin=subprocess.DEVNULL, env=env, check=True)
    return elapsed, timings


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image-dir", type=Path, default=None, help="default: $VMSANDBOX_GUEST_IMAGE_DIR")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    config = HypervisorConfig.from_env()
    image = args.image_dir or config.guest_image_dir
    for name in ("vmlinuz", "initramfs.img", "rootfs.img"):
        if not (image / name).is_file():
            raise SystemExit(
                f"{image / name} missing: build it with vmsandbox-guest-image build --out {image}"
            )
    script = shutil.which("vmsandbox-runtime")
    cli = [script] if script else [sys.executable, "-m", "vmsandbox.runtime"]
    env = dict(os.environ, VMSANDBOX_GUEST_IMAGE_DIR=str(image))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    accel = choose_accel(config, image / "vmlinuz")  # probe (or read the cached verdict) before timing

    work = Path(tempfile.mkdtemp(prefix="vb", dir="/tmp"))
    try:
        bundle = make_bundle(work)
        root = work / "root"
        bare: list[float] = []
        runtime: list[float] = []
        stages: list[dict[str, float]] = []
        for n in range(args.runs):
            bare.append(bare_boot(config, image, work, n))
            elapsed, timings = runtime_boot(cli, root, bundle, env, n)
            runtime.append(elapsed)
            stages.append(timings)
            print(
                f"run {n + 1}/{args.runs}: bare {bare[-1]:.2f}s  runtime {elapsed:.2f}s  {timings}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    keys = sorted({key for timing in stages for key in timing})
    driver_boot = statistics.median(
        sum(t.get(k, 0.0) for k in ("vmmStart", "vmBoot", "agentReady")) / 1000 for t in stages
    )
    report = Report(
        accel=accel,
        bare_qemu=summarize(bare),
        runtime_create_start=summarize(runtime),
        ratio_of_medians=statistics.median(runtime) / statistics.median(bare),
        driver_boot_median_s=driver_boot,
        driver_boot_ratio=driver_boot / statistics.median(bare),
        runtime_stage_medians_ms={k: statistics.median(t.get(k, 0.0) for t in stages) for k in keys},
    )
    print(f"\naccel: {report.accel}, {args.runs} runs each")
    for label, summary in (
        ("(a) bare QEMU to agent ready", report.bare_qemu),
        ("(b) runtime create+start", report.runtime_create_start),
    ):
        print(
            f"{label:<32} median {summary.median_s:7.2f}s  p95 {summary.p95_s:7.2f}s  "
            f"min {summary.min_s:7.2f}s  max {summary.max_s:7.2f}s"
        )
    verdict = "meets" if report.ratio_of_medians <= 1.15 else "misses"
    print(f"ratio (b)/(a) of medians: {report.ratio_of_medians:.3f} ({verdict} the 1.15 target)")
    print(
        f"driver boot to agent ready inside (b): median {report.driver_boot_median_s:.2f}s, "
        f"ratio to (a) {report.driver_boot_ratio:.3f}"
    )
    print(f"runtime stage medians (ms): {report.runtime_stage_medians_ms}")
    if args.json:
        args.json.write_text(report.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
