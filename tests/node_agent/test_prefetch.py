"""The image pull begun beside the finalizer's write: its result and hold go to the launch, or
are released when nobody takes them, and its error reaches the launch as ensure()'s would."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.polling import wait_for
from vmsandbox.api.spec import PullPolicy
from vmsandbox.node_agent.errors import ImagePullFailed
from vmsandbox.node_agent.images import Image, ImageConfig
from vmsandbox.node_agent.prefetch import Prefetch


class Pulls:
    """Counts holds as the image cache does; each pull waits for ``go`` when one is given."""

    def __init__(self, go: threading.Event | None = None, error: Exception | None = None) -> None:
        self.go = go
        self.error = error
        self.holds: Counter[str] = Counter()
        self.calls: list[tuple[str, PullPolicy]] = []
        self.released: list[str] = []

    def ensure(self, reference: str, policy: PullPolicy) -> Image:
        self.calls.append((reference, policy))
        if self.go is not None:
            assert self.go.wait(10)
        if self.error is not None:
            raise self.error
        self.holds["sha256:aa"] += 1
        return Image(
            reference=reference, digest="sha256:aa", rootfs=Path("/nonexistent"), config=ImageConfig()
        )

    def release(self, digest: str) -> None:
        self.holds[digest] -= 1
        self.released.append(digest)


def test_take_hands_over_the_image_and_its_hold() -> None:
    pulls = Pulls()
    prefetch = Prefetch(pulls, "reg/app:1", PullPolicy.ALWAYS)
    image = prefetch.take()
    assert image.digest == "sha256:aa" and pulls.holds["sha256:aa"] == 1
    assert pulls.calls == [("reg/app:1", PullPolicy.ALWAYS)], "one pull"
    assert prefetch.serves("reg/app:1", PullPolicy.ALWAYS)
    assert not prefetch.serves("reg/app:2", PullPolicy.ALWAYS)
    assert not prefetch.serves("reg/app:1", PullPolicy.IF_NOT_PRESENT)


def test_dropped_after_the_pull_releases_at_once() -> None:
    pulls = Pulls()
    prefetch = Prefetch(pulls, "reg/app:1", PullPolicy.ALWAYS)
    wait_for("the pull holds the image", lambda: pulls.holds["sha256:aa"] == 1)
    prefetch.drop()
    assert pulls.holds["sha256:aa"] == 0 and pulls.released == ["sha256:aa"]


def test_dropped_during_the_pull_releases_when_it_ends() -> None:
    go = threading.Event()
    pulls = Pulls(go)
    prefetch = Prefetch(pulls, "reg/app:1", PullPolicy.ALWAYS)
    prefetch.drop()
    assert pulls.released == []
    go.set()
    wait_for("the hold released when the pull ended", lambda: pulls.released == ["sha256:aa"])
    threading.Event().wait(0.05)
    assert pulls.holds["sha256:aa"] == 0 and pulls.released == ["sha256:aa"], "released once"


def test_a_failed_pull_reaches_the_taker() -> None:
    pulls = Pulls(error=ImagePullFailed("manifest unknown"))
    prefetch = Prefetch(pulls, "reg/app:1", PullPolicy.ALWAYS)
    with pytest.raises(ImagePullFailed, match="manifest unknown"):
        prefetch.take()
    prefetch.drop()  # nothing held: nothing released
    assert pulls.holds["sha256:aa"] == 0
