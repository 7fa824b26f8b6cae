"""The code before a change measured beside the new, in the same benchmark run.

``with baseline_tree("main") as old:`` checks out, detached, as a git worktree in a temporary
directory (removed afterwards), the commit the current branch forked from ``main`` at (their merge
base: the code before this branch's work, even when main has moved on since). A benchmark then runs its own
measuring part once per tree and round (:func:`measure`), alternating old and new so both see
the same machine load. The measuring part calls :func:`use_tree` before importing vmsandbox, so
it imports the tree it was given; it prints its result as JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TREE_ENV = "VMSANDBOX_BENCH_TREE"


def use_tree() -> Path:
    """Put the tree under measurement first on sys.path; call before importing vmsandbox."""
    tree = Path(os.environ.get(TREE_ENV) or REPO)
    sys.path.insert(0, str(tree))
    return tree


def tree_env(tree: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python processes (and their children) import ``tree``'s vmsandbox.

    Run them with ``cwd=tree`` too: ``python -m`` puts the working directory first on sys.path.
    """
    env = dict(os.environ if base is None else base)
    env[TREE_ENV] = str(tree)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """A detached worktree of the merge base of ``ref`` and HEAD, removed on exit."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "merge-base", ref, "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="bench-base-"))
    tree = scratch / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), commit], check=True
    )
    print(f"baseline: merge base of {ref} and HEAD, {commit[:12]}, in {tree}", file=sys.stderr, flush=True)
    try:
        for package in (tree / "vmsandbox", Path(os.environ.get(TREE_ENV) or REPO) / "vmsandbox"):
            compile_package(package)
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def compile_package(package: Path) -> None:
    """Write ``package``'s bytecode, as an installed package has it. Both trees get it: where
    PYTHONDONTWRITEBYTECODE is set, a tree without it compiles every module in every process
    (about 40 ms per runtime CLI call), and one with only some of it would be favoured."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def measure(script: Path, tree: Path, args: list[str], env: dict[str, str] | None = None) -> Any:
    """Run ``script --measure ARGS`` against ``tree``; its last stdout line, parsed as JSON."""
    done = subprocess.run(
        [sys.executable, str(script), "--measure", *args],
        env=tree_env(tree, env),
        cwd=tree,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{script.name} --measure against {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def describe(samples: list[float]) -> str:
    """``median X  p99 Y`` (ms), the form every benchmark prints old beside new."""
    return f"median {statistics.median(samples):8.1f}  p99 {percentile(samples, 0.99):8.1f}"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"
