"""``LocalCluster``: etcd + the real apiextensions-apiserver + the front, on loopback ports.

Clients use plain http to the front with a bearer token (the token is the user name); the front
enforces RBAC, and start-up binds the admin user to ``cluster-admin``. Everything the cluster starts runs
in its own process group and dies with it: :meth:`LocalCluster.stop` (also on a failed start)
ends the processes and removes the working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import requests
import yaml

from vmsandbox.devcluster.aggregator import FRONT_PROXY_CLIENT, authentication_configmap
from vmsandbox.devcluster.apipath import HEALTH_PATH
from vmsandbox.devcluster.binaries import find_binaries
from vmsandbox.devcluster.corekinds import BUILTIN_NAMESPACES, CORE_KINDS
from vmsandbox.devcluster.errors import DevClusterError
from vmsandbox.devcluster.faults import FAULTS_PATH
from vmsandbox.devcluster.kubeconfig import render_kubeconfig
from vmsandbox.devcluster.processes import ManagedProcess, free_ports, python_env
from vmsandbox.devcluster.rbac import ADMIN_USER, APISERVER_USER, SYSTEM_USER_PREFIX, bootstrap_objects
from vmsandbox.devcluster.requestlog import REQUEST_LOG_ENV, RequestRecord, read_request_log
from vmsandbox.devcluster.tls import make_ca, make_certificate, sign_certificate
from vmsandbox.kube import Client, Connection

if TYPE_CHECKING:
    import kubernetes.client

#: Overrides the directory whose CRD YAML files are installed by default.
CRD_DIR_ENV = "VMSANDBOX_CRD_DIR"
#: Keep the working directory (logs, etcd data) after stop, for debugging.
KEEP_ENV = "VMSANDBOX_DEVCLUSTER_KEEP"
#: The cluster's own identity for start-up (in system:masters, as no binding exists yet).
SETUP_USER = f"{SYSTEM_USER_PREFIX}setup"
#: User agent of the cluster's own requests (setup, probes, ``http()``), to tell them apart in the log.
USER_AGENT = "vmsandbox-devcluster"
_START_ATTEMPTS = 3
_CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
_DISABLED_ADMISSION = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)


def default_crd_dir() -> Path | None:
    """``$VMSANDBOX_CRD_DIR``, else the repository's ``crds/`` when running from a checkout."""
    if os.environ.get(CRD_DIR_ENV):
        return Path(os.environ[CRD_DIR_ENV])
    candidate = Path(__file__).resolve().parents[2] / "crds"
    return candidate if candidate.is_dir() else None


def load_crds(source: Path | Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """CRD manifests from a directory (its ``*.yaml``/``*.yml`` files) or from files; names the bad file."""
    if isinstance(source, Path):
        if not source.is_dir():
            raise DevClusterError(f"{source} is not a directory", step="install CRDs")
        files = sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
    else:
        files = list(source)
    manifests: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            raise DevClusterError(f"cannot read {path}: {exc}", step="install CRDs") from exc
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
                raise DevClusterError(
                    f"{path}: expected a CustomResourceDefinition, got {kind}", step="install CRDs"
                )
            manifests.append((path, doc))
    return manifests


class LocalCluster:
    """A local control plane; use as a context manager, or call :meth:`start` and :meth:`stop`.

    ``crd_dir`` defaults to :func:`default_crd_dir`; pass ``None`` to install none.
    ``request_log`` (default ``$VMSANDBOX_DEVCLUSTER_REQUEST_LOG``, else a file in the working
    directory) receives one JSON line per client request.
    """

    def __init__(
        self,
        crd_dir: Path | str | None = "default",
        *,
        bin_dir: Path | None = None,
        build: bool = True,
        request_log: Path | None = None,
        workdir: Path | None = None,
        startup_timeout: float = 90.0,
        fault_injection: bool = False,
    ) -> None:
        self.crd_dir: Path | None = (
            default_crd_dir() if crd_dir == "default" else (Path(crd_dir) if crd_dir else None)
        )
        self._bin_dir = bin_dir
        self._build = build
        self._request_log = request_log or (
            Path(os.environ[REQUEST_LOG_ENV]) if os.environ.get(REQUEST_LOG_ENV) else None
        )
        self._workdir_arg = workdir
        self.startup_timeout = startup_timeout
        self.fault_injection = fault_injection
        self.workdir: Path | None = None
        self.processes: list[ManagedProcess] = []
        self._owns_workdir = False
        self._front_port = 0
        self._front_tls_port = 0
        self._ca: Path | None = None
        self._requestheader_ca: tuple[Path, Path] | None = None
        self._api_port = 0
        self._front_argv: list[str] = []
        self._front_index = 0
        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {SETUP_USER}"
        self._http.headers["User-Agent"] = USER_AGENT

    # -- public surface ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The front's base URL: what clients use."""
        self._require_started()
        return f"http://127.0.0.1:{self._front_port}"

    @property
    def tls_url(self) -> str:
        """The front over https (what kubeconfigs name: client-go sends tokens only over TLS)."""
        self._require_started()
        return f"https://127.0.0.1:{self._front_tls_port}"

    @property
    def apiserver_url(self) -> str:
        """The real server's own https URL (self-signed; authenticates through the front)."""
        self._require_started()
        return f"https://127.0.0.1:{self._api_port}"

    @property
    def requestheader_ca(self) -> tuple[Path, Path]:
        """(certificate, key) of the CA that signs the front's front-proxy client certificate."""
        self._require_started()
        assert self._requestheader_ca is not None
        return self._requestheader_ca

    @property
    def kubeconfig_path(self) -> Path:
        self._require_started()
        assert self.workdir is not None
        return self.workdir / "kubeconfig"

    @property
    def request_log_path(self) -> Path:
        self._require_started()
        assert self.workdir is not None
        return self._request_log or self.workdir / "requests.jsonl"

    def requests_made(self, since: int = 0) -> list[RequestRecord]:
        """Client requests recorded so far (from record number ``since``)."""
        return read_request_log(self.request_log_path, since=since)

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig whose requests are made (and logged) as ``user``."""
        assert self.workdir is not None
        path = self.workdir / f"kubeconfig-{user.replace(':', '_').replace('/', '_')}"
        path.write_text(render_kubeconfig(self.tls_url, user, ca=self._ca))
        path.chmod(0o600)
        return path

    def api_client(self, user: str = ADMIN_USER) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client configured from this cluster's kubeconfig (for ``user``)."""
        from kubernetes import config

        path = self.kubeconfig_path if user == ADMIN_USER else self.kubeconfig_for(user)
        return config.new_client_from_config(config_file=str(path))

    def client(self, user: str = ADMIN_USER) -> Client:
        """The project's own client (:mod:`vmsandbox.kube`) for ``user``, as the components use it."""
        path = self.kubeconfig_path if user == ADMIN_USER else self.kubeconfig_for(user)
        return Client(Connection.load(path), user_agent=f"vmsandbox-test/{user}")

    def http(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """A raw request to the front as the admin user (for tests and probes)."""
        return self._http.request(method, self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def inject_fault(self, **rule: Any) -> dict[str, Any]:
        """Make matching requests fail at the front (see :mod:`vmsandbox.devcluster.faults`)."""
        resp = self.http("POST", FAULTS_PATH, json=rule)
        if resp.status_code != 201:
            raise DevClusterError(f"{resp.status_code} {resp.text}", step="inject fault")
        result: dict[str, Any] = resp.json()
        return result

    def faults(self) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = self.http("GET", FAULTS_PATH).json()["rules"]
        return rules

    def clear_faults(self) -> None:
        self.http("DELETE", FAULTS_PATH)

    def stop_front(self) -> None:
        """Stop the front: every client sees connection refused, as in an API server outage."""
        front = self._process("front")
        front.stop()
        self._front_index = self.processes.index(front)
        self.processes.remove(front)

    def start_front(self) -> None:
        """Start the front again on its ports (after :meth:`stop_front`); returns once it answers."""
        front = self._spawn("front", self._front_argv, env=python_env())
        self._wait("front health", front, lambda: self._probe(self.url + HEALTH_PATH))
        self.processes.insert(self._front_index, self.processes.pop())  # stopped in the same order

    def _process(self, name: str) -> ManagedProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise DevClusterError(f"no {name} process", step=name)

    def install_crds(self, source: Path | Iterable[Path], timeout: float = 30.0) -> list[str]:
        """Creates (or replaces) each CRD, waits until it is Established and served; returns the names."""
        return self._install(load_crds(source), timeout)

    def _install(self, crds: list[tuple[Path, dict[str, Any]]], timeout: float = 30.0) -> list[str]:
        names = [self._apply_crd(manifest, f"install CRD {path.name}") for path, manifest in crds]
        for name in names:
            self._wait_crd_served(name, timeout)
        return names

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Starts everything, or (on any failure) stops what was started and raises."""
        if self.processes:
            raise DevClusterError("already started", step="start")
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start()
                return
            except DevClusterError:
                # Ports are picked free but bound later: another process may take one meanwhile.
                clash = any("address already in use" in p.log_tail(50) for p in self.processes)
                self._teardown()
                if not clash or attempt == _START_ATTEMPTS:
                    self._http.close()
                    raise
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stops the apiserver, front and etcd (in that order) and removes the working directory."""
        self._teardown()
        self._http.close()

    def _teardown(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes = []
        if self.workdir is not None and self._owns_workdir and not os.environ.get(KEEP_ENV):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- start-up steps ------------------------------------------------------------------------

    def _start(self) -> None:
        self._http.headers["Authorization"] = f"Bearer {SETUP_USER}"
        # Bad CRD files fail here, before anything starts.
        crds = load_crds(self.crd_dir) if self.crd_dir is not None else []
        bin_dir = self._bin_dir or find_binaries(build=self._build)
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="vmsandbox-devcluster-"))
            self._owns_workdir = True
        work = self.workdir
        (work / "logs").mkdir(exist_ok=True)
        etcd_port, peer_port, self._api_port, self._front_port, self._front_tls_port = free_ports(5)
        cert, key = make_certificate(work / "front-tls")
        self._ca = cert
        self._requestheader_ca = make_ca(work / "front-proxy", "front-proxy")
        proxy_cert, proxy_key = sign_certificate(
            self._requestheader_ca, work / "front-proxy", FRONT_PROXY_CLIENT, client=True
        )
        api_port = self._api_port
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        upstream = f"https://127.0.0.1:{api_port}"

        (work / "apiserver.kubeconfig").write_text(render_kubeconfig(self.tls_url, APISERVER_USER, ca=cert))
        self.kubeconfig_path.write_text(render_kubeconfig(self.tls_url, ADMIN_USER, ca=cert))
        self.kubeconfig_path.chmod(0o600)

        etcd = self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=devcluster",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=devcluster=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._front_argv = [
            sys.executable,
            "-m",
            "vmsandbox.devcluster.front",
            f"--port={self._front_port}",
            f"--upstream={upstream}",
            f"--request-log={self.request_log_path}",
            f"--tls-port={self._front_tls_port}",
            f"--tls-cert={cert}",
            f"--tls-key={key}",
            f"--proxy-client-cert={proxy_cert}",
            f"--proxy-client-key={proxy_key}",
            *(["--fault-injection"] if self.fault_injection else []),
        ]
        front = self._spawn("front", self._front_argv, env=python_env())
        self._wait("etcd health", etcd, lambda: self._probe(f"{etcd_url}/health", auth=False))
        kubeconfig = work / "apiserver.kubeconfig"
        apiserver = self._spawn(
            "apiserver",
            [
                str(bin_dir / "apiextensions-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={work / 'certs'}",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--authentication-skip-lookup",
                "--enable-priority-and-fairness=false",
                f"--disable-admission-plugins={','.join(_DISABLED_ADMISSION)}",
            ],
        )
        self._wait("front health", front, lambda: self._probe(self.url + HEALTH_PATH))
        self._wait("apiserver /livez", apiserver, lambda: self._probe(self.url + "/livez"))
        self._wait("apiserver serving CRDs", apiserver, lambda: self._probe(self.url + _CRD_API + "?limit=1"))
        for kind in CORE_KINDS:
            self._apply_crd(kind.crd(), f"install look-alike CRD {kind.crd_name}")
        for kind in CORE_KINDS:
            self._wait_crd_served(kind.crd_name, self.startup_timeout)
        for obj in bootstrap_objects():
            self._create(obj, "create default RBAC objects")
        self._http.headers["Authorization"] = f"Bearer {ADMIN_USER}"
        for namespace in BUILTIN_NAMESPACES:
            self._create_namespace(namespace)
        self._create(authentication_configmap(self._requestheader_ca[0]), "publish the requestheader CA")
        # Ready once its informers (Services, via the look-alike CRD) have synced.
        self._wait("apiserver /readyz", apiserver, lambda: self._probe(self.url + "/readyz"))
        self._install(crds)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        assert self.workdir is not None
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log", env=env)
        self.processes.append(proc)
        return proc

    def _probe(self, url: str, auth: bool = True) -> bool:
        try:
            if auth:
                return self._http.get(url, timeout=2).status_code == 200
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _wait(self, what: str, proc: ManagedProcess, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if check():
                return
            if not proc.alive():
                raise DevClusterError(
                    f"{proc.name} exited with status {proc.returncode} before {what}:\n{proc.log_tail()}",
                    step=f"start {proc.name}",
                )
            time.sleep(0.1)
        raise DevClusterError(
            f"{what} not reached within {self.startup_timeout:.0f}s; {proc.name} log:\n{proc.log_tail()}",
            step=f"start {proc.name}",
        )

    def _apply_crd(self, manifest: dict[str, Any], step: str) -> str:
        name = str(manifest.get("metadata", {}).get("name", ""))
        resp = self.http("POST", _CRD_API, json=manifest)
        if resp.status_code == 409:
            current = self.http("GET", f"{_CRD_API}/{name}")
            if current.ok:
                manifest = json.loads(json.dumps(manifest))
                manifest.setdefault("metadata", {})["resourceVersion"] = current.json()["metadata"][
                    "resourceVersion"
                ]
                resp = self.http("PUT", f"{_CRD_API}/{name}", json=manifest)
        if not resp.ok:
            raise DevClusterError(
                f"{name or '<unnamed>'}: HTTP {resp.status_code}: {_message(resp)}", step=step
            )
        return name

    def _wait_crd_served(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not found"
        while time.monotonic() < deadline:
            resp = self.http("GET", f"{_CRD_API}/{name}")
            if resp.ok:
                crd = resp.json()
                conditions = {c["type"]: c for c in (crd.get("status") or {}).get("conditions") or []}
                if conditions.get("Established", {}).get("status") == "True":
                    spec = crd["spec"]
                    version = next(v["name"] for v in spec["versions"] if v.get("served"))
                    if self._probe(
                        f"{self.url}/apis/{spec['group']}/{version}/{spec['names']['plural']}?limit=1"
                    ):
                        return
                    last = "established but not yet served"
                else:
                    names = conditions.get("NamesAccepted", {})
                    if names.get("status") == "False":
                        # A name conflict with another CRD does not resolve itself.
                        raise DevClusterError(f"{name}: {names.get('message', '')}", step="install CRDs")
                    failing = [c for c in conditions.values() if c.get("status") == "False"]
                    last = "; ".join(f"{c['type']}: {c.get('message', '')}" for c in failing) or "pending"
            time.sleep(0.1)
        raise DevClusterError(f"{name} not established within {timeout:.0f}s ({last})", step="install CRDs")

    def _create_namespace(self, name: str) -> None:
        self._create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, "create namespaces"
        )

    def _create(self, obj: dict[str, Any], step: str) -> None:
        """Creates an object of an emulated kind (one that exists already is kept)."""
        group_version, plural = obj["apiVersion"], f"{obj['kind'].lower()}s"
        prefix = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        if obj["metadata"].get("namespace"):
            prefix += f"/namespaces/{obj['metadata']['namespace']}"
        name = obj["metadata"]["name"]
        resp = self.http("POST", f"{prefix}/{plural}", json=obj)
        if resp.status_code not in (201, 409):
            raise DevClusterError(f"{name}: HTTP {resp.status_code}: {_message(resp)}", step=step)

    def _require_started(self) -> None:
        if self.workdir is None or not self._front_port:
            raise DevClusterError("the cluster is not started", step="devcluster")


def _message(resp: requests.Response) -> str:
    with contextlib.suppress(ValueError):
        body = resp.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return resp.text[:500]
