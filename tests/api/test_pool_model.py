"""The VMSandboxPool models: defaults, bounds, the agents' annotation and the shape rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.cases import POOL_INVALID, pool, sandbox
from vmsandbox.api import parse_sandbox
from vmsandbox.api.network import NetworkMode
from vmsandbox.api.pool import (
    InvalidPool,
    PoolMode,
    PoolReport,
    parse_pool,
    parse_pool_reports,
    render_pool_reports,
    shape_mismatch,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_fill_an_empty_spec() -> None:
    p = parse_pool(pool())
    assert (p.spec.replicas, p.spec.mode) == (1, PoolMode.BOOTED)
    assert (p.spec.template.resources.vcpus, p.spec.template.resources.memory_mib) == (1, 512)
    wire = p.to_wire()
    resources = {"vcpus": 1, "memoryMiB": 512}
    spec = {"replicas": 1, "paused": False, "mode": "booted", "template": {"resources": resources}}
    assert wire["spec"] == spec


@pytest.mark.parametrize(("case", "obj", "field"), POOL_INVALID, ids=[c[0] for c in POOL_INVALID])
def test_model_rejects_with_the_field_named(case: str, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPool) as err:
        parse_pool(obj)
    assert err.value.field.startswith(field), str(err.value)


def test_reports_round_trip_and_bad_entries_are_dropped_alone() -> None:
    text = render_pool_reports({"b/p": PoolReport(uid="u2", ready=0), "a/p": PoolReport(uid="u1", ready=2)})
    assert text == '{"a/p":{"uid":"u1","ready":2},"b/p":{"uid":"u2","ready":0}}'
    assert parse_pool_reports(text)["a/p"] == PoolReport(uid="u1", ready=2)
    mixed = '{"a/p": {"uid": "u", "ready": 1}, "b/p": {"uid": "u", "ready": -3}, "c/p": "x"}'
    assert list(parse_pool_reports(mixed)) == ["a/p"]
    for bad in (None, "", "not json", "[1, 2]", "3"):
        assert parse_pool_reports(bad) == {}


def _spec(**spec: Any) -> Any:
    return parse_sandbox(sandbox(**spec)).spec


def _template(**template: Any) -> Any:
    return parse_pool(pool(template=template)).spec.template


def test_shape_matches_on_effective_values() -> None:
    kw: dict[str, Any] = {"node_hypervisor": "qemu", "default_mode": NetworkMode.RESTRICTED}
    same = {"resources": {"vcpus": 2, "memoryMiB": 256}}
    assert shape_mismatch(_spec(**same), _template(**same), **kw) is None
    # The node's default hypervisor and the cluster's default mode fill in on either side.
    assert shape_mismatch(_spec(**same, hypervisor="qemu"), _template(**same), **kw) is None
    restricted = {"network": {"mode": "restricted"}}
    assert shape_mismatch(_spec(**same), _template(**same, **restricted), **kw) is None
    # Egress rules are not part of the shape.
    egress = {"network": {"egress": {"deny": ["10.0.0.0/8"]}}}
    assert shape_mismatch(_spec(**same, **egress), _template(**same), **kw) is None


@pytest.mark.parametrize(
    ("spec", "template", "words"),
    [
        ({"resources": {"vcpus": 2}}, {}, "spec.resources (2 vCPUs, 512 MiB)"),
        ({"hypervisor": "process"}, {}, "hypervisor process differs from the pool's qemu"),
        ({}, {"hypervisor": "cloud-hypervisor"}, "hypervisor qemu differs from the pool's cloud-hypervisor"),
        ({"network": {"mode": "none"}}, {}, "network mode none differs from the pool's restricted"),
    ],
)
def test_shape_mismatch_says_why(spec: dict[str, Any], template: dict[str, Any], words: str) -> None:
    why = shape_mismatch(
        _spec(**spec), _template(**template), node_hypervisor="qemu", default_mode=NetworkMode.RESTRICTED
    )
    assert why is not None and words in why


def test_placed_mode_stands_for_a_sandbox_without_one() -> None:
    why = shape_mismatch(
        _spec(),
        _template(network={"mode": "open"}),
        node_hypervisor="qemu",
        default_mode=NetworkMode.RESTRICTED,
        placed_mode=NetworkMode.OPEN,
    )
    assert why is None


def test_the_sample_pool_and_its_claim_parse() -> None:
    docs = list(yaml.safe_load_all((ROOT / "samples" / "pool.yaml").read_text()))
    small = parse_pool(docs[0])
    claim = parse_sandbox(docs[1])
    assert claim.spec.pool == small.metadata.name
    why = shape_mismatch(
        claim.spec, small.spec.template, node_hypervisor="qemu", default_mode=NetworkMode.RESTRICTED
    )
    assert why is None, "the sample's claim must be servable by the sample's pool"
