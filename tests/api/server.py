"""Calls on the real API server that the tests of both kinds make."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vmsandbox.api.constants import GROUP, VERSION
from vmsandbox.devcluster.cluster import LocalCluster


def create(api: client.CustomObjectsApi, ns: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = api.create_namespaced_custom_object(GROUP, VERSION, ns, plural, obj)
    return result


def causes(exc: ApiException) -> list[str]:
    """The fields an Invalid error names, in the order the server gave them."""
    return [c.get("field", "") for c in json.loads(exc.body)["details"]["causes"]]


def assert_refused(
    api: client.CustomObjectsApi, ns: str, plural: str, case: str, obj: dict[str, Any], field: str
) -> None:
    """The server refuses the invalid object ``case`` (422), naming ``field`` among the causes."""
    obj = copy.deepcopy(obj)
    obj["metadata"]["name"] = f"bad-{case}"
    with pytest.raises(ApiException) as err:
        create(api, ns, plural, obj)
    assert err.value.status == 422, err.value.body
    fields = causes(err.value)
    assert any(c.startswith(field) for c in fields), (field, fields)


def table(kube: LocalCluster, ns: str, plural: str) -> dict[str, Any]:
    """What ``kubectl get`` shows: the server's Table of ``plural`` in ``ns`` (the printer columns)."""
    resp = kube.http(
        "GET",
        f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{plural}",
        headers={"Accept": "application/json;as=Table;g=meta.k8s.io;v=v1"},
    )
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result
