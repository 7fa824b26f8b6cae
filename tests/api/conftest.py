"""The API server fixtures the tests of both kinds share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client


@pytest.fixture(scope="module")
def api(kube: Any) -> Iterator[client.CustomObjectsApi]:
    with kube.api_client() as api_client:
        yield client.CustomObjectsApi(api_client)
