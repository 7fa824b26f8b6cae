"""The kube layer against the real API server: both faces send the same requests and raise the
same typed error for each answer the components act on."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.polling import wait_for
from vmsandbox.api.constants import API_VERSION, KIND
from vmsandbox.devcluster import LocalCluster
from vmsandbox.devcluster.rbac import ADMIN_USER
from vmsandbox.kube import ApiError, Client, Connection, connection
from vmsandbox.kube.aio import AsyncClient
from vmsandbox.kube.patches import edit_finalizer, replace_if_unchanged
from vmsandbox.kube.paths import lease_path, sandbox_path
from vmsandbox.kube.watch import Gone, ResumingWatch, apply_event

pytestmark = pytest.mark.kube


def _sandbox(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": {"image": "busybox"}}


def _refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


def test_create_read_and_the_refusals_each_caller_acts_on(kube: LocalCluster, kube_namespace: str) -> None:
    client = kube.client()
    name = f"k-{uuid.uuid4().hex[:6]}"
    made = client.create(sandbox_path(kube_namespace), _sandbox(name))
    assert made["metadata"]["name"] == name
    assert client.get(sandbox_path(kube_namespace, name))["metadata"]["uid"] == made["metadata"]["uid"]
    assert client.get_or_none(sandbox_path(kube_namespace, "absent")) is None

    exists = _refusal(lambda: client.create(sandbox_path(kube_namespace), _sandbox(name)))
    assert (exists.status, exists.conflict, exists.retryable) == (409, True, False)
    missing = _refusal(lambda: client.get(sandbox_path(kube_namespace, "absent")))
    assert missing.not_found and not missing.conflict and "absent" in missing.message

    stale = {**made, "metadata": {**made["metadata"], "labels": {"a": "b"}}}
    client.replace(sandbox_path(kube_namespace, name), stale)
    lost = _refusal(lambda: client.replace(sandbox_path(kube_namespace, name), stale))
    assert lost.status == 409 and lost.conflict

    ops = replace_if_unchanged(made, "/metadata/labels", None, {"x": "y"})
    failed_test = _refusal(lambda: client.json_patch(sandbox_path(kube_namespace, name), ops))
    assert failed_test.status == 422 and failed_test.conflict, failed_test

    current = client.get(sandbox_path(kube_namespace, name))
    added = client.json_patch(
        sandbox_path(kube_namespace, name), edit_finalizer(current["metadata"], "x.io/f", True)
    )
    assert added["metadata"]["finalizers"] == ["x.io/f"]
    stale_guard = _refusal(
        lambda: client.json_patch(
            sandbox_path(kube_namespace, name), edit_finalizer(current["metadata"], "x.io/g", True)
        )
    )
    assert stale_guard.conflict
    removed = client.json_patch(
        sandbox_path(kube_namespace, name), edit_finalizer(added["metadata"], "x.io/f", False)
    )
    assert not removed["metadata"].get("finalizers")


def test_a_busy_server_is_retryable_with_its_retry_after(kube: LocalCluster, kube_namespace: str) -> None:
    client = kube.client()
    kube.inject_fault(method="GET", path=f"/namespaces/{kube_namespace}/leases", status=429, retryAfter=3)
    try:
        busy = _refusal(lambda: client.list_objects(lease_path(kube_namespace)))
    finally:
        kube.clear_faults()
    assert (busy.status, busy.retryable, busy.retry_after) == (429, True, 3.0)
    assert client.list_objects(lease_path(kube_namespace))["items"] == []


def test_no_answer_is_status_0_and_retryable() -> None:
    client = Client(Connection(server="http://127.0.0.1:9"), user_agent="t", timeout=2)
    refused = _refusal(lambda: client.get("/api/v1/nodes"))
    assert refused.status == 0 and refused.retryable and "no answer" in refused.message


def test_the_async_face_gives_the_same_answers(kube: LocalCluster, kube_namespace: str) -> None:
    name = f"a-{uuid.uuid4().hex[:6]}"
    sync = kube.client()

    async def run() -> tuple[dict[str, Any], ApiError, ApiError]:
        client = AsyncClient(Connection.load(kube.kubeconfig_path))
        try:
            made = await client.create(sandbox_path(kube_namespace), _sandbox(name))
            try:
                await client.create(sandbox_path(kube_namespace), _sandbox(name))
            except ApiError as exc:
                exists = exc
            try:
                await client.get(sandbox_path(kube_namespace, "absent"))
            except ApiError as exc:
                missing = exc
            return made, exists, missing
        finally:
            await client.close()

    made, exists, missing = asyncio.run(run())
    assert sync.get(sandbox_path(kube_namespace, name))["metadata"]["uid"] == made["metadata"]["uid"]
    sync_missing = _refusal(lambda: sync.get(sandbox_path(kube_namespace, "absent")))
    assert (exists.status, exists.conflict) == (409, True)
    assert (missing.status, missing.not_found, str(missing)) == (404, True, str(sync_missing))


def test_a_user_without_rights_is_refused_as_forbidden(kube: LocalCluster, kube_namespace: str) -> None:
    nobody = kube.client("nobody")
    forbidden = _refusal(lambda: nobody.list_objects(sandbox_path(kube_namespace)))
    assert forbidden.status == 403 and not forbidden.retryable and not forbidden.conflict


class _Seen:
    def __init__(self) -> None:
        self.events: list[str] = []

    def observe(self, obj: dict[str, Any]) -> None:
        self.events.append("+" + obj["metadata"]["name"])

    def forget(self, obj: dict[str, Any]) -> None:
        self.events.append("-" + obj["metadata"]["name"])


class _NamespaceWatch(ResumingWatch):
    def __init__(self, client: Client, namespace: str, seen: _Seen, restarts: list[str]) -> None:
        super().__init__(name="test-watch", timeout_seconds=2, on_restart=restarts.append)
        self.client, self.namespace, self.seen = client, namespace, seen
        self.lists = 0

    def _list(self) -> str:
        self.lists += 1
        listed = self.client.list_objects(sandbox_path(self.namespace))
        self.synced.set()
        # The first stream starts from a version the server no longer keeps.
        return "1" if self.lists == 1 else str(listed["metadata"]["resourceVersion"])

    def _events(self, resource_version: str) -> Any:
        return self.client.watch(sandbox_path(self.namespace), resource_version, self.timeout_seconds)

    def _apply(self, event: dict[str, Any]) -> str | None:
        return apply_event(event, self.seen)


def test_the_watch_lists_again_after_gone_and_resumes_after_each_closed_stream(
    kube: LocalCluster, kube_namespace: str
) -> None:
    client = kube.client()
    client.create(sandbox_path(kube_namespace), _sandbox("before"))
    with pytest.raises(Gone):
        for event in client.watch(sandbox_path(kube_namespace), "1", 5):
            apply_event(event, _Seen())
    seen, restarts = _Seen(), []
    watch = _NamespaceWatch(client, kube_namespace, seen, restarts)
    watch.start()
    try:
        wait_for("a list after 410", lambda: watch.lists == 2 and "gone" in restarts)
        wait_for("a closed 2 s stream, resumed", lambda: "closed" in restarts)
        client.create(sandbox_path(kube_namespace), _sandbox("after"))
        wait_for("the new sandbox's event", lambda: "+after" in seen.events)
        client.delete(sandbox_path(kube_namespace, "after"))
        wait_for("its deletion's event", lambda: "-after" in seen.events)
    finally:
        watch.stop()
        watch.thread.join(10)
    assert watch.lists == 2, "a closed stream resumes without listing again"
    assert "+before" not in seen.events, "objects of the list are not replayed as events"
    assert not watch.thread.is_alive()


def test_the_client_is_shared_between_threads(kube: LocalCluster, kube_namespace: str) -> None:
    client = kube.client()
    errors: list[BaseException] = []

    def make(i: int) -> None:
        try:
            client.create(sandbox_path(kube_namespace), _sandbox(f"t{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(client.list_objects(sandbox_path(kube_namespace))["items"]) == 16


def test_a_watch_by_field_selector_sees_only_its_object(kube: LocalCluster, kube_namespace: str) -> None:
    client = kube.client()
    listed = client.list_objects(sandbox_path(kube_namespace))
    for name in ("other", "mine"):
        client.create(sandbox_path(kube_namespace), _sandbox(name))
    version = str(listed["metadata"]["resourceVersion"])
    events = client.watch(sandbox_path(kube_namespace), version, 2, field_selector="metadata.name=mine")
    names = [e["object"]["metadata"]["name"] for e in events if e["type"] != "BOOKMARK"]
    assert names == ["mine"]


def test_in_a_pod_the_rotated_service_account_token_is_used(
    kube: LocalCluster, kube_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the kubelet mounts it: a token file and the cluster's CA; the kubelet replaces the
    token before it expires, and requests after that carry the new one."""
    ca = Connection.from_kubeconfig(kube.kubeconfig_path).ca_file
    assert ca is not None
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(Path(ca).read_bytes())
    (account / "token").write_text("nobody")
    url = urlsplit(kube.tls_url)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(url.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(url.port))
    monkeypatch.setattr(connection, "TOKEN_REREAD_SECONDS", 0.0)
    client = Client(Connection.in_cluster(account), user_agent="t")
    assert _refusal(lambda: client.list_objects(sandbox_path(kube_namespace))).status == 403
    (account / "token").write_text(ADMIN_USER)  # rotated
    assert client.list_objects(sandbox_path(kube_namespace))["items"] == []
