"""The kube layer's pure parts: connection loading, the typed error, paths, leases, patches."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsandbox.kube import ApiError, ConfigError, Connection, connection, wire
from vmsandbox.kube.events import EventBuffer, event_body
from vmsandbox.kube.expectations import VersionGate
from vmsandbox.kube.leases import lease_spec
from vmsandbox.kube.patches import edit_finalizer, pointer
from vmsandbox.kube.paths import pool_path, sandbox_path, subresource_path
from vmsandbox.kube.retry import retry_hint


def _service_account(tmp_path: Path, token: str) -> Path:
    (tmp_path / "token").write_text(token + "\n")
    return tmp_path


def test_in_cluster_reads_the_service_account_and_rereads_a_rotated_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setattr(connection, "TOKEN_REREAD_SECONDS", 0.0)
    account = _service_account(tmp_path, "first")
    conn = Connection.in_cluster(account)
    assert conn.server == "https://[fd00::1]:6443" and conn.ca_file is None
    assert conn.headers() == {"Authorization": "Bearer first"}
    (account / "token").write_text("second")
    assert conn.bearer_token() == "second"


def test_outside_a_pod_without_a_kubeconfig_the_error_names_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(ConfigError) as caught:
        Connection.load(tmp_path / "missing")
    assert str(caught.value).startswith("kubeconfig: ")
    with pytest.raises(ConfigError, match="not running in a pod"):
        Connection.in_cluster(tmp_path)


def test_a_kubeconfig_gives_server_credentials_and_tls(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443/',"
        " insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: secret}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    conn = Connection.load(config)
    assert (conn.server, conn.token, conn.insecure) == ("https://127.0.0.1:6443", "secret", True)
    ctx = conn.ssl_context()
    assert ctx is not None and not ctx.check_hostname
    assert Connection(server="http://x").ssl_context() is None


@pytest.mark.parametrize(
    ("status", "method", "conflict", "retryable"),
    [
        (409, "PUT", True, False),
        (422, "PATCH", True, False),
        (422, "PUT", False, False),
        (404, "GET", False, False),
        (429, "GET", False, True),
        (503, "PATCH", False, True),
        (0, "GET", False, True),
        (403, "POST", False, False),
    ],
)
def test_each_answer_has_one_meaning(status: int, method: str, conflict: bool, retryable: bool) -> None:
    exc = ApiError(method, "/p", status, "m")
    assert (exc.conflict, exc.retryable) == (conflict, retryable)
    assert retry_hint(exc) == (0.0 if retryable else None)


def test_an_answer_is_decoded_once_for_both_faces() -> None:
    req = wire.request("GET", "/x", params={"labelSelector": "a=b"})
    assert req.url("https://s") == "https://s/x?labelSelector=a%3Db"
    assert wire.decode(req, 200, {}, '{"kind": "X"}') == {"kind": "X"}
    with pytest.raises(ApiError) as caught:
        wire.decode(req, 429, {"Retry-After": "4"}, '{"kind": "Status", "message": "slow down"}')
    assert (caught.value.retry_after, caught.value.message) == (4.0, "slow down")
    with pytest.raises(ApiError, match="not JSON"):
        wire.decode(req, 200, {}, "<html>")


def test_paths_quote_every_name() -> None:
    assert (
        sandbox_path("ns", "a/b", "status")
        == "/apis/vmsandbox.io/v1alpha1/namespaces/ns/vmsandboxes/a%2Fb/status"
    )
    assert pool_path() == "/apis/vmsandbox.io/v1alpha1/vmsandboxpools"
    assert subresource_path("n s", "x", "exec").startswith("/apis/subresources.vmsandbox.io/")
    assert "n%20s" in subresource_path("n s", "x", "exec")
    assert pointer("metadata", "labels", "vmsandbox.io/node") == "/metadata/labels/vmsandbox.io~1node"


def test_a_lease_keeps_its_acquire_time_and_counts_a_new_holder() -> None:
    first = lease_spec("a", 40, "t1")
    assert (first["acquireTime"], first["leaseTransitions"]) == ("t1", 0)
    renewed = lease_spec("a", 40, "t2", first)
    assert (renewed["acquireTime"], renewed["renewTime"], renewed["leaseTransitions"]) == ("t1", "t2", 0)
    taken = lease_spec("b", 40.4, "t3", renewed)
    assert (taken["acquireTime"], taken["leaseTransitions"], taken["leaseDurationSeconds"]) == ("t3", 1, 40)


def test_a_finalizer_edit_is_guarded_by_the_list_it_was_computed_from() -> None:
    assert edit_finalizer({}, "f", True) == [
        {"op": "test", "path": "/metadata/finalizers", "value": None},
        {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
    ]
    assert edit_finalizer({"finalizers": ["g", "f"]}, "f", False)[1] == {
        "op": "remove",
        "path": "/metadata/finalizers/1",
    }


def test_an_event_names_its_object_and_is_bounded() -> None:
    pool = {
        "apiVersion": "vmsandbox.io/v1alpha1",
        "kind": "VMSandboxPool",
        "metadata": {"name": "p", "uid": "u"},
    }
    body = event_body(pool, "Warning", "R", "m" * 5000, component="c", host="h")
    assert body["involvedObject"]["kind"] == "VMSandboxPool" and body["metadata"]["namespace"] == "default"
    assert len(body["message"]) == 1024 and body["metadata"]["name"].startswith("p.")
    sandbox = {"metadata": {"name": "s", "namespace": "n"}}
    first, second = (event_body(sandbox, "Normal", "R", "m", component="c", host="h") for _ in range(2))
    assert first["involvedObject"]["kind"] == "VMSandbox"
    assert first["metadata"]["name"] != second["metadata"]["name"], "each Event gets its own name"


def test_the_gate_drops_what_predates_a_write_and_lapses() -> None:
    now = [0.0]
    gate = VersionGate(ttl=30, clock=lambda: now[0])
    assert gate.watched("k", "v1")
    gate.own("k", "v3")
    assert not gate.watched("k", "v2")
    assert gate.watched("k", "v3") and gate.watched("k", "v4")
    gate.own("k", "v9")  # the watch never brings it (a lost event)
    assert not gate.watched("k", "v5")
    now[0] = 31.0
    assert gate.watched("k", "v6")


def test_the_gate_drops_a_listed_copy_the_watch_moved_meanwhile() -> None:
    gate = VersionGate()
    gate.begin_list()
    assert gate.watched("moved", "v2")
    assert not gate.listed("moved", "v1")
    assert gate.listed("still", "v7")
    gate.own("written", "v4")  # the client's own write while the list was on its way
    assert not gate.listed("written", "v3")
    gate.end_list()
    assert gate.listed("moved", "v1"), "outside a list every item counts"


def test_the_event_buffer_counts_repeats_keeps_urgent_first_and_drops_the_oldest_held() -> None:
    drops: list[int] = []
    buffer = EventBuffer(component="c", host="h", limit=3, on_drop=lambda: drops.append(1))
    box = {"metadata": {"name": "s", "namespace": "n", "uid": "u"}}
    buffer.file(box, "Scheduled", "placed", warning=False, hold=True)
    buffer.file(box, "Scheduled", "placed", warning=False, hold=True)
    buffer.file(box, "NodeLost", "lost", warning=True, hold=False)
    buffer.file(box, "Pulled", "image", warning=False, hold=True)
    assert len(buffer) == 3 and not drops
    buffer.file(box, "Started", "ran", warning=False, hold=False)
    assert len(buffer) == 3 and drops == [1] and buffer.dropped == 1, "the oldest held one made room"
    taken = [buffer.take() for _ in range(4)]
    assert [f.event["reason"] if f else None for f in taken] == ["NodeLost", "Started", "Pulled", None]
    assert taken[0] is not None and taken[0].event["type"] == "Warning"


def test_a_repeated_event_raises_the_count_of_the_one_waiting() -> None:
    buffer = EventBuffer(component="c", host="h", limit=10)
    box = {"metadata": {"name": "s", "namespace": "n", "uid": "u"}}
    for _ in range(3):
        buffer.file(box, "BackOff", "restarting", warning=True, hold=False)
    filed = buffer.take()
    assert filed is not None and filed.event["count"] == 3 and buffer.take() is None
