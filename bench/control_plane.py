"""Control-plane benchmark: 500 sandboxes created at once, scheduled by the operator onto 10 agents.

Runs everything on this machine against the real CRD API server (``vmsandbox.devcluster``):

* 10 simulated node agents: each a Node (capacity annotation, ``agent=ready``) and a Lease
  renewed every 10 s, plus a **no-op VM backend**: a watcher that, for each sandbox placed on
  its node, writes ``phase: Running`` in one /status write, as an agent whose VM and container
  start in zero time would. So create-to-Running is the control plane's share of start-up.
* the operator as a separate process (``python -m vmsandbox.operator``), so its RSS and CPU
  are its own; Events on;
* first, in the same run, the baseline: a plain client making the same number of create +
  status writes with the same concurrency, i.e. the API server's own write rate here.

Prints create-to-Scheduled and create-to-Running p50/p95/p99, throughput, the operator's
writes per sandbox (from the server's request log: writes to the sandbox and Events apart), the
no-op agents' writes per sandbox, the throughput as a fraction of the server's raw write rate
(and of ``raw write rate / writes per sandbox``), and the operator's peak RSS and CPU time. The
one-at-a-time creates are split into stages from the request log (create sent, operator's first
write arrives, its status write arrives, a watch sees Scheduled) beside the server's own floor: a
single write's round trip and a watch's delivery delay, measured by a plain client.

The whole measurement runs in separate processes against the code before the current branch
(the merge base with ``--against``, default ``main``, as a temporary git worktree) and against
the new code, alternately ``--rounds`` times (so both see the machine's load as it changes);
the figures are printed old beside new, one column per run.

    python bench/control_plane.py [--sandboxes 500] [--agents 10] [--concurrency 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import baseline_tree, load, measure, tree_env, use_tree
from quantiles import percentile

TREE = use_tree()
from vmsandbox.api import NodeCapacity  # noqa: E402
from vmsandbox.api.constants import AGENT_LEASE_PREFIX, CAPACITY_ANNOTATION, NODE_LABEL  # noqa: E402
from vmsandbox.devcluster.cluster import LocalCluster  # noqa: E402

AGENT_NS = "vmsandbox-system"
SANDBOXES = "/apis/vmsandbox.io/v1alpha1/namespaces/{ns}/vmsandboxes"
MERGE = {"Content-Type": "application/merge-patch+json"}


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sandbox(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandbox",
        "metadata": {"name": name},
        "spec": {"image": "docker.io/library/busybox:1.36", "resources": {"vcpus": 1, "memoryMiB": 128}},
    }


class Client:
    """One requests session per thread (requests sessions are not thread-safe)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    def s(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = "Bearer admin"
            session.headers["User-Agent"] = "bench"
            self._local.session = session
        return session

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.s().request(method, self.url + path, timeout=kw.pop("timeout", 60), **kw)


def baseline(client: Client, ns: str, count: int, concurrency: int) -> float:
    """Writes/s of a plain client: ``count`` creates, then ``count`` status writes."""

    def create(i: int) -> None:
        resp = client.call("POST", SANDBOXES.format(ns=ns), json=sandbox(f"raw-{i:04d}"))
        assert resp.status_code == 201, resp.text

    def status(i: int) -> None:
        path = SANDBOXES.format(ns=ns) + f"/raw-{i:04d}/status"
        resp = client.call(
            "PATCH", path, json={"status": {"phase": "Scheduled", "nodeName": "x"}}, headers=MERGE
        )
        assert resp.status_code == 200, resp.text

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(create, range(count)))
        list(pool.map(status, range(count)))
    return 2 * count / (time.perf_counter() - start)


class Agents:
    """Nodes + renewed Leases, and the no-op VM backend that marks placed sandboxes Running."""

    def __init__(self, client: Client, count: int, per_node_vcpus: int) -> None:
        self.client = client
        self.names = [f"bench-node-{i:02d}" for i in range(count)]
        self._stop = threading.Event()
        cap = NodeCapacity(
            vcpus=per_node_vcpus,
            memory_mib=per_node_vcpus * 1024,
            hypervisors=["cloud-hypervisor"],
            default_hypervisor="cloud-hypervisor",
            agent_version="bench-noop",
        )
        for name in self.names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"vmsandbox.io/agent": "ready"},
                    "annotations": {CAPACITY_ANNOTATION: json.dumps(cap.to_wire())},
                },
            }
            assert client.call("POST", "/api/v1/nodes", json=node).status_code == 201
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": AGENT_LEASE_PREFIX + name, "namespace": AGENT_NS},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
            }
            path = f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NS}/leases"
            assert client.call("POST", path, json=lease).status_code == 201
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(10):
            for name in self.names:
                path = f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NS}/leases/{AGENT_LEASE_PREFIX}{name}"
                self.client.call("PATCH", path, json={"spec": {"renewTime": micro_now()}}, headers=MERGE)

    def stop(self) -> None:
        self._stop.set()


class Observer:
    """Watches the namespace; records when each sandbox is first seen Scheduled and Running.

    Doubles as the no-op VM backend: a sandbox seen Scheduled gets ``phase: Running`` written
    (by a small pool, as 10 agents would do in parallel).
    """

    def __init__(self, client: Client, ns: str, concurrency: int) -> None:
        self.client = client
        self.ns = ns
        self.scheduled: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(concurrency)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _mark_running(self, name: str, node: str) -> None:
        path = SANDBOXES.format(ns=self.ns) + f"/{name}/status"
        body = {"status": {"phase": "Running", "nodeName": node}}
        self.client.call("PATCH", path, json=body, headers=MERGE)

    def _see(self, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        phase = (obj.get("status") or {}).get("phase")
        now = time.time()  # wall clock, comparable with the request log's
        if not name:
            return
        if phase == "Scheduled" and name not in self.scheduled:
            self.scheduled[name] = now
            node = obj["metadata"]["labels"][NODE_LABEL]
            self._pool.submit(self._mark_running, name, node)
        elif phase == "Running" and name not in self.running:
            self.running[name] = now
            self.scheduled.setdefault(name, now)

    def _watch(self) -> None:
        """List, then watch from the list's resourceVersion; on any break, list again."""
        while not self._stop.is_set():
            try:
                listing = self.client.call("GET", SANDBOXES.format(ns=self.ns)).json()
                for item in listing.get("items") or []:
                    self._see(item)
                params = {"watch": "true", "resourceVersion": listing["metadata"]["resourceVersion"]}
                path = SANDBOXES.format(ns=self.ns)
                with self.client.call("GET", path, params=params, stream=True, timeout=(10, None)) as resp:
                    for line in resp.iter_lines():
                        if self._stop.is_set():
                            return
                        if line:
                            event = json.loads(line)
                            if event.get("type") in ("ADDED", "MODIFIED"):
                                self._see(event.get("object") or {})
            except (requests.RequestException, ValueError, KeyError):
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False)


def proc_stats(pid: int) -> tuple[float, float]:
    """(peak RSS MiB, CPU seconds) of a live process, from /proc."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def floor(client: Client, ns: str, rounds: int = 20) -> dict[str, float]:
    """The server's own latency, one request at a time: a write's round trip, and a create's
    and a status write's delay until a watch delivers them (all p50, ms)."""
    watched: dict[str, float] = {}

    class Seen(Observer):
        def _see(self, obj: dict[str, Any]) -> None:
            meta = obj.get("metadata") or {}
            watched.setdefault(str(meta.get("resourceVersion")), time.time())

    seen = Seen(client, ns, 1)
    time.sleep(0.5)
    rtt: list[float] = []
    create_watch: list[float] = []
    write_watch: list[float] = []

    def wait(rv: str) -> float:
        deadline = time.time() + 10
        while rv not in watched and time.time() < deadline:
            time.sleep(0.0005)
        return watched.get(rv, float("nan"))

    for i in range(rounds):
        t0 = time.time()
        resp = client.call("POST", SANDBOXES.format(ns=ns), json=sandbox(f"floor-{i:03d}"))
        assert resp.status_code == 201, resp.text
        create_watch.append(wait(resp.json()["metadata"]["resourceVersion"]) - t0)
        t1 = time.time()
        path = SANDBOXES.format(ns=ns) + f"/floor-{i:03d}/status"
        body = {"status": {"phase": "Scheduled", "nodeName": "x"}}
        resp = client.call("PATCH", path, json=body, headers=MERGE)
        t2 = time.time()
        assert resp.status_code == 200, resp.text
        rtt.append(t2 - t1)
        write_watch.append(wait(resp.json()["metadata"]["resourceVersion"]) - t1)
    seen.stop()
    return {
        "write_round_trip_ms": round(percentile(rtt, 50) * 1000, 1),
        "create_to_watch_ms": round(percentile(create_watch, 50) * 1000, 1),
        "write_to_watch_ms": round(percentile(write_watch, 50) * 1000, 1),
    }


def stages(records: list[Any], created: dict[str, float], scheduled: dict[str, float]) -> dict[str, float]:
    """Where one-at-a-time create-to-Scheduled goes (p50 ms), from the request log's arrival times."""
    first: dict[str, float] = {}
    status: dict[str, float] = {}
    for r in records:
        if (
            r.user_agent.startswith("vmsandbox-operator/")
            and r.method == "PATCH"
            and r.resource == "vmsandboxes"
        ):
            target = status if r.subresource == "status" else first
            target.setdefault(r.name, r.time)
    names = [n for n in created if n in first and n in status and n in scheduled]
    parts = {
        "create_to_first_write_ms": [first[n] - created[n] for n in names],
        "first_write_to_status_write_ms": [status[n] - first[n] for n in names],
        "status_write_to_watch_ms": [scheduled[n] - status[n] for n in names],
    }
    return {k: round(percentile(v, 50) * 1000, 1) for k, v in parts.items()}


def start_operator(kube: LocalCluster) -> tuple[subprocess.Popen[bytes], int, Path]:
    metrics_port = free_port()
    env = tree_env(
        TREE,
        {
            **os.environ,
            "VMSANDBOX_OPERATOR_NAMESPACE": AGENT_NS,
            "VMSANDBOX_OPERATOR_IDENTITY": "bench-operator",
            "VMSANDBOX_OPERATOR_METRICS_HOST": "127.0.0.1",
            "VMSANDBOX_OPERATOR_METRICS_PORT": str(metrics_port),
            "VMSANDBOX_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        },
    )
    log = (kube.workdir or Path("/tmp")) / "bench-operator.log"
    with log.open("wb") as log_file:
        op = subprocess.Popen(
            [sys.executable, "-m", "vmsandbox.operator", "--kubeconfig", str(kube.kubeconfig_path)],
            env=env,
            cwd=TREE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
            if "vmsandbox_operator_leader 1.0" in text:
                return op, metrics_port, log
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or op.poll() is not None:
            print(log.read_text()[-3000:], file=sys.stderr)
            op.kill()
            raise SystemExit("operator did not become leader")
        time.sleep(0.2)


def events_posted(kube: LocalCluster, since: int, want: int, timeout: float) -> int:
    """The operator's Event POSTs in the request log from line ``since``, once ``want`` are there
    (or the count stopped growing for 3 s, or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    count, changed = -1, time.monotonic()
    while True:
        now = len(
            [
                r
                for r in kube.requests_made(since)
                if r.resource == "events" and r.user_agent.startswith("vmsandbox-operator/")
            ]
        )
        if now != count:
            count, changed = now, time.monotonic()
        if count >= want or time.monotonic() > deadline or time.monotonic() - changed > 3:
            return count
        time.sleep(0.005)


def is_write(r: Any) -> bool:
    return r.method in ("POST", "PATCH", "PUT", "DELETE") and r.resource in ("vmsandboxes", "events")


def measure_tree(args: argparse.Namespace) -> dict[str, Any]:
    """The whole measurement against the tree this process imports (``--measure``)."""
    n = args.sandboxes
    with LocalCluster() as kube:
        client = Client(kube.url)
        for ns in ("bench-raw", "bench-floor", "bench"):
            kube.http(
                "POST",
                "/api/v1/namespaces",
                json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )
        raw_rate = baseline(client, "bench-raw", n, args.concurrency)
        for i in range(n):  # gone before the operator starts, so it only sees the measured sandboxes
            client.call("DELETE", SANDBOXES.format(ns="bench-raw") + f"/raw-{i:04d}")
        server_floor = floor(client, "bench-floor")
        for i in range(20):
            client.call("DELETE", SANDBOXES.format(ns="bench-floor") + f"/floor-{i:03d}")

        per_node = -(-n // args.agents) + 4  # room for every sandbox, spread across all agents
        agents = Agents(client, args.agents, per_node)
        op, _, _ = start_operator(kube)
        try:
            time.sleep(1.0)  # let the initial watch settle
            rss0, cpu0 = proc_stats(op.pid)
            since = len(kube.requests_made())
            observer = Observer(client, "bench", args.concurrency)
            time.sleep(0.5)
            created: dict[str, float] = {}

            def create(i: int) -> None:
                name = f"sb-{i:04d}"
                created[name] = time.time()
                resp = client.call("POST", SANDBOXES.format(ns="bench"), json=sandbox(name))
                assert resp.status_code == 201, resp.text

            t0 = time.time()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(create, range(n)))
            create_done = time.time() - t0
            deadline = time.monotonic() + 300
            while len(observer.running) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            rss1, cpu1 = proc_stats(op.pid)
            burst_events = events_posted(kube, since, n, 120)  # the burst's Events land first
            # Then one at a time: the latency floor when the server is not saturated by the burst.
            # Each is created once the previous one's Event has landed (or 2 s have passed).
            singles: dict[str, float] = {}
            for i in range(args.singles):
                name = f"one-{i:03d}"
                created[name] = singles[name] = time.time()
                resp = client.call("POST", SANDBOXES.format(ns="bench"), json=sandbox(name))
                assert resp.status_code == 201, resp.text
                while name not in observer.scheduled and time.time() - created[name] < 30:
                    time.sleep(0.0005)
                events_posted(kube, since, burst_events + i + 1, 2)
                time.sleep(0.02)  # and the no-op agent's Running write
            observer.stop()
            agents.stop()
            records = kube.requests_made(since)
        finally:
            op.send_signal(signal.SIGTERM)
            try:
                op.wait(20)
            except subprocess.TimeoutExpired:
                op.kill()

    total = n + len(singles)
    burst = [k for k in created if k.startswith("sb-")]
    sched = [observer.scheduled[k] - created[k] for k in burst if k in observer.scheduled]
    run = [observer.running[k] - created[k] for k in burst if k in observer.running]
    single = [observer.scheduled[k] - singles[k] for k in singles if k in observer.scheduled]
    last = max(observer.scheduled[k] for k in burst if k in observer.scheduled)
    throughput = len(sched) / (last - t0)
    operator = [r for r in records if r.user_agent.startswith("vmsandbox-operator/") and is_write(r)]
    sandbox_writes = [r for r in operator if r.resource == "vmsandboxes"]
    agent_writes = [r for r in records if r.user_agent == "bench" and is_write(r) and r.method == "PATCH"]
    writes_per_sandbox = len(operator) / total
    all_writes = [r for r in records if is_write(r)]
    total_per_sandbox = len(all_writes) / total
    breakdown = Counter(f"{r.method} {r.resource}/{r.subresource or '-'} {r.status}" for r in operator)

    def q3(values: list[float]) -> dict[str, float]:
        return {q: round(percentile(values, p) * 1000, 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}

    return {
        "sandboxes": n,
        "agents": args.agents,
        "scheduled": len(sched),
        "running": len(run),
        "create_seconds": round(create_done, 3),
        "create_to_scheduled_ms": q3(sched),
        "create_to_running_ms": q3(run),
        "one_at_a_time_create_to_scheduled_ms": q3(single),
        "one_at_a_time_stages_ms": stages(records, singles, observer.scheduled),
        "server_floor_ms": server_floor,
        "throughput_per_s": round(throughput, 1),
        "raw_write_rate_per_s": round(raw_rate, 1),
        "throughput_vs_raw_write_rate": round(throughput / raw_rate, 3),
        "operator_writes_per_sandbox": round(writes_per_sandbox, 2),
        "operator_sandbox_writes_per_sandbox": round(len(sandbox_writes) / total, 2),
        "operator_events_per_sandbox": round((len(operator) - len(sandbox_writes)) / total, 2),
        "agent_writes_per_sandbox": round(len(agent_writes) / total, 2),
        "throughput_vs_raw_ceiling": round(throughput / (raw_rate / writes_per_sandbox), 3),
        "all_writes_per_sandbox": round(total_per_sandbox, 2),
        "operator_peak_rss_mib": round(rss1, 1),
        "operator_rss_before_mib": round(rss0, 1),
        "operator_cpu_seconds": round(cpu1 - cpu0, 2),
        "operator_writes": dict(breakdown.most_common()),
    }


ROWS = (
    ("operator writes per sandbox (all)", ("operator_writes_per_sandbox",)),
    ("  to the sandbox (target <= 2)", ("operator_sandbox_writes_per_sandbox",)),
    ("  Events", ("operator_events_per_sandbox",)),
    ("agent writes per sandbox (no-op agent)", ("agent_writes_per_sandbox",)),
    ("one at a time create->Scheduled p50 ms", ("one_at_a_time_create_to_scheduled_ms", "p50")),
    ("one at a time create->Scheduled p99 ms", ("one_at_a_time_create_to_scheduled_ms", "p99")),
    ("  create -> operator's first write", ("one_at_a_time_stages_ms", "create_to_first_write_ms")),
    ("  first write -> status write", ("one_at_a_time_stages_ms", "first_write_to_status_write_ms")),
    ("  status write -> seen by a watch", ("one_at_a_time_stages_ms", "status_write_to_watch_ms")),
    ("  server: one write's round trip", ("server_floor_ms", "write_round_trip_ms")),
    ("  server: create -> seen by a watch", ("server_floor_ms", "create_to_watch_ms")),
    ("  server: write -> seen by a watch", ("server_floor_ms", "write_to_watch_ms")),
    ("burst create->Scheduled p50 ms", ("create_to_scheduled_ms", "p50")),
    ("burst create->Scheduled p99 ms", ("create_to_scheduled_ms", "p99")),
    ("burst create->Running p50 ms", ("create_to_running_ms", "p50")),
    ("burst throughput sandboxes/s", ("throughput_per_s",)),
    ("raw server write rate writes/s", ("raw_write_rate_per_s",)),
    ("throughput / raw write rate", ("throughput_vs_raw_write_rate",)),
    ("throughput / (raw rate / op writes)", ("throughput_vs_raw_ceiling",)),
    ("operator CPU seconds (burst)", ("operator_cpu_seconds",)),
    ("operator peak RSS MiB", ("operator_peak_rss_mib",)),
)


def cell(result: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = result
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return "-" if value is None else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandboxes", type=int, default=500)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16, help="client threads creating sandboxes")
    parser.add_argument("--singles", type=int, default=40, help="then this many created one at a time")
    parser.add_argument("--against", default="main", help="old code: where HEAD forked from this ref")
    parser.add_argument("--rounds", type=int, default=2, help="old and new measured alternately, this often")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_tree(args)))
        return 0
    script = Path(__file__).resolve()
    sizes = [
        *("--sandboxes", str(args.sandboxes), "--agents", str(args.agents)),
        *("--concurrency", str(args.concurrency), "--singles", str(args.singles)),
    ]
    runs: list[tuple[str, dict[str, Any]]] = []  # (column title, result), old and new alternating
    with baseline_tree(args.against) as old:
        for round_ in range(1, args.rounds + 1):
            for label, tree in (("old", old), ("new", TREE)):
                print(f"measuring {label} #{round_} ({tree}) ...", file=sys.stderr, flush=True)
                runs.append((f"{label} #{round_}", measure(script, tree, sizes)))
    print(
        f"control plane: {args.sandboxes} sandboxes at once onto {args.agents} no-op agents, "
        f"then {args.singles} one at a time; old = {args.against}; {load()}"
    )
    print(f"{'':<42}" + "".join(f"{title:>10}" for title, _ in runs))
    for title, path in ROWS:
        print(f"{title:<42}" + "".join(f"{cell(result, path):>10}" for _, result in runs))
    print("targets: operator writes to the sandbox <= 2; one at a time create->Scheduled p50 <= 30 ms")
    for title, result in runs:
        print(f"{title} operator writes:", json.dumps(result["operator_writes"]))
    results = dict(runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(result["scheduled"] == args.sandboxes for result in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
