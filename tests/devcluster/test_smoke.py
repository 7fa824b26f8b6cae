"""The session cluster answers through the front with the ``kubernetes`` client."""

from __future__ import annotations

from kubernetes import client

from vmsandbox.devcluster import LocalCluster


def test_kube_fixture_serves_namespaces(kube: LocalCluster, kube_namespace: str) -> None:
    with kube.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", kube_namespace} <= names
