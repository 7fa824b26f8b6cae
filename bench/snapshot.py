"""Pause, resume, snapshot and restore of one VM, per backend, with a cold boot as the baseline.

Each run of a backend: cold boot to a guest agent that answers (the baseline, same run, same
host load), pause, resume, snapshot (pause + write), restore into a new VM up to a guest agent
that answers, then stop both. Reported: medians and p95 in ms, the snapshot's size (apparent
and allocated on disk), and restore / cold boot.

* ``qemu``: the real guest image under QEMU (TCG here: the guest's memory image is written and
  read in full; ``-incoming`` migration from a file).
* ``cloud-hypervisor``: the stand-in VMM (no guest memory: its "memory" file is sparse and its
  restore starts a fresh guest agent), so its figures show the driver's and API's own cost only.

:func:`measure` is the series other benchmarks call (``bench/warm.py`` can import it).

    python bench/snapshot.py [--runs 5] [--backends qemu,cloud-hypervisor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from baseline import use_tree

use_tree()

from standin import use_standin  # noqa: E402

from tests.cloud_hypervisor.standin.kernel_image import fake_bzimage  # noqa: E402
from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame  # noqa: E402
from vmsandbox.hypervisor import driver_for  # noqa: E402
from vmsandbox.hypervisor.base import HypervisorDriver, VMHandle, VMSpec  # noqa: E402
from vmsandbox.hypervisor.config import HypervisorConfig  # noqa: E402

METRICS = ("cold_boot", "pause", "resume", "snapshot", "restore", "snapshot_mib", "snapshot_alloc_mib")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _ping(driver: HypervisorDriver, handle: VMHandle) -> None:
    with driver.connect(handle, timeout=60) as sock:
        sock.settimeout(60)
        send_frame(sock, Ping())
        assert isinstance(recv_reply(sock), Pong)


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _sizes(directory: Path) -> tuple[float, float]:
    files = [p for p in directory.iterdir() if p.is_file()]
    apparent = sum(p.stat().st_size for p in files)
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    return apparent / 2**20, allocated / 2**20


def one_run(driver: HypervisorDriver, spec: VMSpec, work: Path, run: int) -> dict[str, float]:
    """One VM through cold boot, pause/resume, snapshot and a restore; everything stopped after."""
    result: dict[str, float] = {}
    started = time.monotonic()
    source = driver.boot(spec)
    restored: VMHandle | None = None
    snap = work / f"snap-{run}"
    try:
        _ping(driver, source)
        result["cold_boot"] = _ms(started)
        started = time.monotonic()
        driver.pause(source)
        result["pause"] = _ms(started)
        started = time.monotonic()
        driver.resume(source)
        result["resume"] = _ms(started)
        _ping(driver, source)
        started = time.monotonic()
        driver.snapshot(source, snap)
        result["snapshot"] = _ms(started)
        result["snapshot_mib"], result["snapshot_alloc_mib"] = _sizes(snap)
        driver.stop(source)
        target = spec.model_copy(update={"vm_id": f"{spec.vm_id}r", "state_dir": work / f"r{run}"})
        started = time.monotonic()
        restored = driver.restore(target, snap)
        _ping(driver, restored)
        result["restore"] = _ms(started)
    finally:
        driver.stop(source)
        if restored is not None:
            driver.stop(restored)
        shutil.rmtree(snap, ignore_errors=True)
    return result


def measure(backend: str, runs: int, work: Path, config: HypervisorConfig) -> dict[str, list[float]]:
    """``runs`` runs of :func:`one_run` on ``backend``: each metric's samples."""
    driver = driver_for(backend, config)
    samples: dict[str, list[float]] = {metric: [] for metric in METRICS}
    for run in range(runs):
        spec = VMSpec(
            vm_id=f"s{run}", state_dir=work / f"{backend[:2]}{run}", memory_mib=512, agent_timeout=120
        )
        if backend == "qemu":
            spec.kernel = config.guest_image_dir / "vmlinuz"
            spec.initramfs = config.guest_image_dir / "initramfs.img"
            spec.root_disk = config.guest_image_dir / "rootfs.img"
        else:
            spec.kernel = fake_bzimage(work / "vmlinuz")
        for metric, value in one_run(driver, spec, work, run).items():
            samples[metric].append(value)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, object]:
    out: dict[str, object] = {m: {"median": statistics.median(v), "p95": p95(v)} for m, v in samples.items()}
    out["restore_over_cold_boot"] = statistics.median(samples["restore"]) / statistics.median(
        samples["cold_boot"]
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="qemu,cloud-hypervisor")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = use_standin("snb")
    config = HypervisorConfig.load()
    report: dict[str, object] = {"runs": args.runs}
    try:
        for backend in args.backends.split(","):
            summary = summarize(measure(backend, args.runs, work, config))
            report[backend] = summary
            print(f"{backend}:")
            for metric in METRICS:
                entry = summary[metric]
                assert isinstance(entry, dict)
                unit = "MiB" if metric.endswith("mib") else "ms"
                print(f"  {metric:<20} median {entry['median']:9.1f} {unit}  p95 {entry['p95']:9.1f}")
            print(f"  restore / cold boot  {summary['restore_over_cold_boot']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
