"""The machine's Debian mirror, read from apt's deb822 ``.sources`` files, for ``mmdebstrap``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vmsandbox.guest.image.errors import GuestImageError

SOURCES_DIR = Path("/etc/apt/sources.list.d")


class AptSource(BaseModel):
    """One ``Types: deb`` stanza."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""

    def one_line(self) -> list[str]:
        """The stanza as one-line ``deb`` entries, the form mmdebstrap takes as mirror arguments."""
        options = f"[signed-by={self.signed_by}] " if self.signed_by and "\n" not in self.signed_by else ""
        return [
            f"deb {options}{uri} {suite} {' '.join(self.components)}"
            for uri in self.uris
            for suite in self.suites
        ]


def parse_deb822(text: str) -> list[AptSource]:
    """Binary (``deb``) stanzas that are enabled; comments and ``deb-src`` are skipped."""
    sources: list[AptSource] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        if not fields.get("uris") or not fields.get("suites"):
            continue
        sources.append(
            AptSource(
                uris=tuple(fields["uris"].split()),
                suites=tuple(fields["suites"].split()),
                components=tuple(fields.get("components", "main").split()),
                signed_by=fields.get("signed-by", ""),
            )
        )
    return sources


def machine_sources(directory: Path = SOURCES_DIR) -> list[AptSource]:
    """All enabled binary sources of the machine, in file order."""
    sources: list[AptSource] = []
    for path in sorted(directory.glob("*.sources")):
        sources.extend(parse_deb822(path.read_text()))
    if not sources:
        raise GuestImageError(f"no enabled 'Types: deb' stanza in {directory}/*.sources", step="apt-sources")
    return sources


def base_suite(sources: list[AptSource]) -> str:
    """The release codename: the first suite without a ``-updates``/``-security`` style suffix."""
    for source in sources:
        for suite in source.suites:
            if "-" not in suite and "/" not in suite:
                return suite
    raise GuestImageError("no base suite (e.g. 'bookworm') among the apt sources", step="apt-sources")
