"""Reading the machine's mirror from deb822 sources files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmsandbox.guest.image.errors import GuestImageError
from vmsandbox.guest.image.sources import base_suite, machine_sources, parse_deb822

SOURCES = """\
Types: deb deb-src
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Enabled: no
"""


def test_binary_enabled_stanzas_become_mmdebstrap_mirror_lines() -> None:
    sources = parse_deb822(SOURCES)
    assert len(sources) == 1
    assert sources[0].one_line() == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm main contrib",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm-updates main contrib",
    ]
    assert base_suite(sources) == "bookworm"


def test_machine_sources_reads_every_sources_file(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(SOURCES)
    (tmp_path / "b.sources").write_text("Types: deb\nURIs: http://m/x\nSuites: trixie-security\n")
    (tmp_path / "c.list").write_text("deb http://ignored/ bookworm main\n")
    sources = machine_sources(tmp_path)
    assert [s.uris for s in sources] == [("http://mirror.example/debian",), ("http://m/x",)]
    assert sources[1].components == ("main",)


def test_no_sources_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="no enabled 'Types: deb' stanza") as info:
        machine_sources(tmp_path)
    assert info.value.step == "apt-sources"


def test_the_real_machine_has_a_mirror() -> None:
    if not list(Path("/etc/apt/sources.list.d").glob("*.sources")):
        pytest.skip("this machine keeps no deb822 apt sources")
    assert base_suite(machine_sources())
