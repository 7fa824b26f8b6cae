"""Sandbox network benchmark: set-up time a sandbox's start gains, and the throughput its path keeps.

Everything runs in network namespaces this script makes (a "node" and a "world", as in
tests/network): nothing is configured in the machine's own namespace.

Reported:

* set-up time: :meth:`NodeNetwork.attach` for 20 sandboxes in a row (lease, nftables sets and
  chains in one transaction, the namespace and veth for the process backend, or a tap for a VM),
  median and p99 (with 20 samples, the maximum), and the same for ``detach``; the baseline is a
  start without a network, which spends none of it. Target: median <= 20 ms. Measured IPv4 only
  and with an IPv6 prefix (``ipv4+ipv6``) in the same run, in blocks ordered A B B A (two
  bridges and two tables, one per family setting).
* TCP throughput from a process-backend sandbox to the world (veth, isolated bridge port,
  routing, the policy table, masquerade, the uplink veth) beside the plain path from the node
  namespace over the uplink veth alone, in the same run, alternating, 5 rounds of 2 s each,
  one connection, Python sender and receiver on both paths. Target: sandbox >= 70% of plain.
* with ``--qemu GUEST_IMAGE_DIR``: one QEMU guest (TCG here) on a tap sends 32 MiB to the
  world with busybox ``nc``; the receiver's rate is reported, without a target.

    python bench/network.py [--rounds 5] [--qemu DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from baseline import use_tree

REPO = use_tree()

from tests.network.conftest import (  # noqa: E402
    DNS,
    PUBLIC,
    SUBNET,
    Topology,
    _setup,
    require_network_tools,
    teardown_topology,
)

SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(4); print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    total = 0
    while chunk := conn.recv(1 << 20):
        total += len(chunk)
    conn.sendall(str(total).encode()); conn.close()
"""

SEND = """
import socket, sys, time
seconds = float(sys.argv[2]); data = b"x" * (1 << 20)
sock = socket.create_connection((sys.argv[1], 5001)); t0 = time.monotonic()
while time.monotonic() - t0 < seconds:
    sock.sendall(data)
sock.shutdown(socket.SHUT_WR); total = int(sock.recv(64)); elapsed = time.monotonic() - t0
print(total * 8 / elapsed / 1e9)
"""

QEMU_SINK = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5002)); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); total = 0; t0 = 0.0
while chunk := conn.recv(1 << 20):
    t0 = t0 or time.monotonic(); total += len(chunk)
print(total, time.monotonic() - t0, flush=True)
"""

SETUP = """
import ipaddress, json, sys, time
from pathlib import Path
from vmsandbox.node_agent.network import NetworkSettings, NodeNetwork
from vmsandbox.node_agent.network.startup import derived_prefix6
state, subnet, bridge = Path(sys.argv[1]), ipaddress.IPv4Network(sys.argv[2]), sys.argv[3]
count, dns = int(sys.argv[4]), (sys.argv[5],)
families = {"ipv4": None, "ipv4+ipv6": derived_prefix6(subnet)}
nodes = {
    family: NodeNetwork(NetworkSettings(subnet=subnet, state_dir=state / family, bridge=f"{bridge}{n}",
                                        table=f"vmsandbox{n}", resolvers=dns, prefix6=prefix6))
    for n, (family, prefix6) in enumerate(families.items())
}
out = {f"{family} {kind}": {"attach": [], "detach": []} for family in families for kind in ("netns", "tap")}
for node in nodes.values():
    node.reconcile([])
# Blocks of half the sandboxes in the order A B B A, so both families see the same machine (in a
# block each start follows another, as in a burst; the kernel's deferred work from one start
# lands on the next, so sandbox-by-sandbox alternation would charge one family for the other).
half = count // 2
for kind in ("netns", "tap"):
    for block, family in enumerate(["ipv4", "ipv4+ipv6", "ipv4+ipv6", "ipv4"]):
        node, owners = nodes[family], [f"{kind}-{block}-{i}" for i in range(half)]
        for step in ("attach", "detach"):
            for owner in owners:
                t0 = time.perf_counter()
                if step == "attach":
                    node.attach(owner, "restricted", ["10.99.0.2/32"], [], kind)
                else:
                    node.detach(owner)
                out[f"{family} {kind}"][step].append((time.perf_counter() - t0) * 1000)
for node in nodes.values():
    node.shutdown()
print(json.dumps(out))
"""


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 2), "p99": round(p99, 2), "n": len(ordered)}


def setup_times(topo: Topology, count: int) -> dict[str, Any]:
    argv = topo.in_node(
        sys.executable, "-c", SETUP, str(topo.state_dir), SUBNET, topo.bridge, str(count), DNS
    )
    raw = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return {kind: {step: _summary(v) for step, v in steps.items()} for kind, steps in raw.items()}


def _send(prefix: list[str], seconds: float) -> float:
    argv = [*prefix, sys.executable, "-c", SEND, PUBLIC, str(seconds)]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def _start_sink(topo: Topology, script: str) -> IO[str]:
    """Starts ``script`` on the world's public address and waits for it to say it is ready; it
    stops with the topology. Returns its output, for what it reports at the end."""
    sink = subprocess.Popen(
        ["ip", "netns", "exec", topo.world, sys.executable, "-c", script, PUBLIC],
        stdout=subprocess.PIPE,
        text=True,
    )
    topo.procs.append(sink)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    return sink.stdout


def throughput(topo: Topology, rounds: int, seconds: float) -> dict[str, Any]:
    _start_sink(topo, SINK)
    topo.net("reconcile")
    sandbox = topo.attach("bench-tcp")
    plain, through = [], []
    for _ in range(rounds):
        plain.append(_send(["nsenter", f"--net={topo.node_ns}"], seconds))
        through.append(_send(["nsenter", f"--net={sandbox['netns']}"], seconds))
    topo.net("detach", "bench-tcp")
    ratio = statistics.median(through) / statistics.median(plain)
    return {
        "plain_veth_gbit_s": _summary(plain),
        "sandbox_gbit_s": _summary(through),
        "ratio": round(ratio, 3),
        "target_ratio": 0.7,
    }


def qemu_throughput(topo: Topology, image_dir: Path, tmp: Path) -> dict[str, Any]:
    from tests.runtime.support import pod_bundle, short_root

    sink = _start_sink(topo, QEMU_SINK)
    send = f"busybox dd if=/dev/zero bs=65536 count=512 2>/dev/null | busybox nc -w 5 {PUBLIC} 5002"
    bundle = pod_bundle(tmp / "qemu-bundle", send)
    root = short_root()
    try:
        argv = [
            "env",
            f"VMSANDBOX_GUEST_IMAGE_DIR={image_dir}",
            sys.executable,
            str(REPO / "tests/network/run_sandbox.py"),
        ]
        argv += [str(topo.state_dir), SUBNET, topo.bridge, str(root), str(bundle), "bench-qemu", "restricted"]
        argv += ["--hypervisor", "qemu"]
        subprocess.run(topo.in_node(*argv), capture_output=True, text=True, check=True)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    total, seconds = sink.readline().split()
    return {"bytes": int(total), "gbit_s": round(int(total) * 8 / float(seconds) / 1e9, 3), "target": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--qemu", type=Path, help="guest image directory: also measure a QEMU guest")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    require_network_tools()
    suffix = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="vbn") as tmp:
        topo = Topology(
            node=f"vbn-{suffix}", world=f"vbw-{suffix}", bridge=f"vb{suffix}", state_dir=Path(tmp)
        )
        try:
            _setup(topo)
            result = {
                "setup_ms": setup_times(topo, args.count),
                "setup_target_median_ms": 20,
                "tcp": throughput(topo, args.rounds, args.seconds),
            }
            if args.qemu is not None:
                result["qemu_tcg_guest_to_world"] = qemu_throughput(topo, args.qemu, Path(tmp))
        finally:
            teardown_topology(topo)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
