"""A missing host tool skips a test, and fails it where the tools are promised (CI)."""

from __future__ import annotations

import pytest

from tests.tools import REQUIRE_ENV, require_tools


def test_a_missing_tool_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="vmsandbox-no-such-tool is not installed"):
        require_tools("sh", "vmsandbox-no-such-tool")


def test_a_missing_tool_fails_where_tools_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"vmsandbox-no-such-tool.*{REQUIRE_ENV} is set"):
        require_tools("vmsandbox-no-such-tool")


def test_present_tools_pass_and_sbin_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ENV, "1")
    monkeypatch.setenv("PATH", "/nonexistent")
    require_tools("mkfs.ext4")  # in /sbin on Debian, found though PATH lacks it
