"""The repository's Dockerfile read with PyPI ``dockerfile-parse``, split into its stages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chart.helm import REPO, missing

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    name: str
    value: str

    @property
    def flags_and_body(self) -> tuple[list[str], str]:
        """``RUN --mount=... cmd`` -> (["--mount=..."], "cmd")."""
        flags: list[str] = []
        body = self.value
        while body.startswith("--"):
            flag, _, body = body.partition(" ")
            flags.append(flag)
            body = body.lstrip()
        return flags, body


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def runs(self) -> list[str]:
        return [i.flags_and_body[1] for i in self.all("RUN")]

    def args(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for arg in self.all("ARG"):
            key, sep, default = arg.value.partition("=")
            out[key.strip()] = default if sep else None
        return out


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert found, f"no stage {name!r} in {[s.name for s in self.stages]}"
        return found[0]


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    try:
        from dockerfile_parse import DockerfileParser
    except ImportError:
        missing("dockerfile-parse is not installed (pip install -e '.[test]')")
    parser = DockerfileParser(path=str(path))
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        name, value = item["instruction"], item["value"]
        if name == "COMMENT":
            continue
        if name == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", value.strip(), re.IGNORECASE)
            assert match, value
            stages.append(Stage(name=match.group(2) or str(len(stages)), base=match.group(1)))
        elif not stages:
            assert name == "ARG", f"{name} before the first FROM"
            key, sep, default = value.partition("=")
            global_args[key.strip()] = default if sep else None
        else:
            stages[-1].instructions.append(Instruction(name, value))
    if not stages:
        pytest.fail(f"{path}: no FROM")
    return Dockerfile(global_args, stages)
