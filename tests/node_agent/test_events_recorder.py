"""The agent's Event recorder: off the workers' path, repeats counted, a refusal never stops it."""

from __future__ import annotations

import threading
from typing import Any

from vmsandbox.kube import ApiError
from vmsandbox.node_agent.events import EventRecorder


class _SlowKube:
    """Holds the first post until released; refuses the Events whose reason is ``Refused``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.posted: list[tuple[str, str, int]] = []

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.release.wait(10)
        if body["reason"] == "Refused":
            raise ApiError("POST", "/events", 403, "forbidden")
        self.posted.append((namespace, body["reason"], body["count"]))


def test_repeats_wait_as_one_event_and_a_refusal_is_survived() -> None:
    kube = _SlowKube()
    recorder = EventRecorder(kube, "node-1")  # type: ignore[arg-type]
    box = {"metadata": {"name": "s", "namespace": "n", "uid": "u"}}
    recorder.record(box, "Pulling", "first")  # taken at once, held by the slow post
    for _ in range(3):
        recorder.record(box, "BackOff", "restarting", warning=True)
    recorder.record(box, "Refused", "x")
    recorder.record(box, "Started", "ran")
    kube.release.set()
    recorder.flush(10)
    assert kube.posted == [("n", "Pulling", 1), ("n", "BackOff", 3), ("n", "Started", 1)]
