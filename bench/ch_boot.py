"""Boot-to-agent and stop of the Cloud Hypervisor driver against the stand-in, with the process
backend booting the same guest agent as the baseline (same process, runs interleaved).

Series:

* ``process``: :class:`ProcessDriver` boot (starts the guest agent) + ping + stop: the baseline;
* ``ch+agent``: :class:`CloudHypervisorDriver` against the stand-in, which starts that same agent
  through the process backend and bridges hybrid vsock to it: the baseline plus the VMM launch,
  the REST calls, OpenAPI validation in the stand-in and the vsock bridge;
* ``ch+echo``: the same with the stand-in's echo guest: the driver's own cost (launch, ping
  polling, create/boot/info, hybrid-vsock handshake) without any agent start-up.

Also the round trip of ``GET vmm.ping`` on one keep-alive connection.

What it does not measure: a real VMM or guest kernel (the stand-in is Python; a real
``cloud-hypervisor`` answers ``vmm.ping`` within milliseconds of exec and boots a minimal guest
in ~100-300 ms). Numbers are medians and p95 in ms.

    python bench/ch_boot.py [--runs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from baseline import use_tree

use_tree()

from standin import use_standin  # noqa: E402

from tests.cloud_hypervisor.standin.kernel_image import fake_bzimage  # noqa: E402
from vmsandbox.guest.protocol import Ping, Pong, recv_reply, send_frame  # noqa: E402
from vmsandbox.hypervisor.base import HypervisorDriver, VMSpec  # noqa: E402
from vmsandbox.hypervisor.cloud_hypervisor import CloudHypervisorDriver  # noqa: E402
from vmsandbox.hypervisor.cloud_hypervisor.client import CloudHypervisorClient  # noqa: E402
from vmsandbox.hypervisor.config import HypervisorConfig  # noqa: E402
from vmsandbox.hypervisor.process import ProcessDriver  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_run(driver: HypervisorDriver, spec: VMSpec, agent: bool) -> dict[str, float]:
    started = time.monotonic()
    handle = driver.boot(spec)
    with driver.connect(handle) as sock:
        if agent:
            sock.settimeout(10)
            send_frame(sock, Ping())
            assert isinstance(recv_reply(sock), Pong)
    ready = time.monotonic()
    driver.stop(handle)
    done = time.monotonic()
    return {
        "boot_to_agent": (ready - started) * 1000,
        "stop": (done - ready) * 1000,
        "vmm_start": handle.timings.vmm_start,
        "vm_boot": handle.timings.vm_boot,
        "agent_ready": handle.timings.agent_ready,
    }


def ping_round_trips(work: Path, calls: int) -> list[float]:
    os.environ["CH_STANDIN_GUEST"] = "echo"
    driver = CloudHypervisorDriver(HypervisorConfig())
    spec = VMSpec(vm_id="ping", state_dir=work / "ping", kernel=work / "vmlinuz", agent_timeout=30)
    handle = driver.boot(spec)
    try:
        with CloudHypervisorClient(Path(handle.endpoints["api_socket"])) as client:
            samples = []
            for _ in range(calls):
                started = time.monotonic()
                client.ping()
                samples.append((time.monotonic() - started) * 1000)
        return samples
    finally:
        driver.stop(handle)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = use_standin("chb")
    kernel = fake_bzimage(work / "vmlinuz")
    config = HypervisorConfig()
    series: dict[str, tuple[Callable[[], HypervisorDriver], str | None, bool]] = {
        "process": (lambda: ProcessDriver(config), None, True),
        "ch+agent": (lambda: CloudHypervisorDriver(config), "agent", True),
        "ch+echo": (lambda: CloudHypervisorDriver(config), "echo", False),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in series}
    try:
        for run in range(args.runs):
            for name, (make, guest, agent) in series.items():
                if guest is not None:
                    os.environ["CH_STANDIN_GUEST"] = guest
                spec = VMSpec(
                    vm_id=f"b{run}", state_dir=work / f"{name}-{run}", kernel=kernel, agent_timeout=30
                )
                results[name].append(one_run(make(), spec, agent))
        pings = ping_round_trips(work, 200)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, object] = {"runs": args.runs}
    print(f"{'series':<10} {'metric':<14} {'median':>9} {'p95':>9}")
    for name, runs in results.items():
        for metric in ("boot_to_agent", "stop", "vmm_start", "vm_boot", "agent_ready"):
            values = [r[metric] for r in runs]
            med, high = statistics.median(values), p95(values)
            summary[f"{name}.{metric}"] = {"median": med, "p95": high}
            print(f"{name:<10} {metric:<14} {med:9.1f} {high:9.1f}")
    base = statistics.median(r["boot_to_agent"] for r in results["process"])
    for name in ("ch+agent", "ch+echo"):
        ratio = statistics.median(r["boot_to_agent"] for r in results[name]) / base
        summary[f"{name}.boot_ratio_vs_process"] = ratio
        print(f"{name} boot_to_agent / process boot_to_agent: {ratio:.2f}")
    summary["vmm.ping"] = {"median": statistics.median(pings), "p95": p95(pings)}
    ping_median, ping_p95 = statistics.median(pings), p95(pings)
    print(f"GET vmm.ping keep-alive round trip: median {ping_median:.2f} ms, p95 {ping_p95:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
