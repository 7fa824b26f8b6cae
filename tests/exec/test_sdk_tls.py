"""The SDK's TLS contexts: built once per setting and reused by every exec and file transfer, and
built again when a file they were loaded from changes."""

from __future__ import annotations

import os
from pathlib import Path

from vmsandbox.devcluster.tls import make_ca
from vmsandbox.sdk.remote import Agent


def test_one_context_per_setting_until_its_ca_file_changes(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path / "one", "test-ca")
    first = Agent("https://127.0.0.1:1", verify=str(ca)).sslopt()["context"]
    assert Agent("https://127.0.0.1:2", verify=str(ca)).sslopt()["context"] is first
    assert first.verify_mode.name == "CERT_REQUIRED" and first.check_hostname
    insecure = Agent("https://127.0.0.1:1", verify=False).sslopt()["context"]
    assert insecure is not first and insecure.verify_mode.name == "CERT_NONE"
    other, _ = make_ca(tmp_path / "two", "other-ca")
    os.replace(other, ca)  # a rotated CA bundle at the same path
    again = Agent("https://127.0.0.1:1", verify=str(ca)).sslopt()["context"]
    assert again is not first
    assert [c["subject"] for c in again.get_ca_certs()] == [((("commonName", "other-ca-ca"),),)]
