"""An image pull begun while a sandbox's finalizer is being written, so the two round trips overlap.

The finalizer must be on the object before anything of the sandbox exists on the node; the image
is not the sandbox's (the cache is shared and keyed by digest), so it may come first. The pull is
the same :meth:`Images.ensure` the launch would make, with its checks and its pull policy; the
launch takes its result, hold included, instead of pulling again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vmsandbox.api.spec import PullPolicy
from vmsandbox.node_agent.images import Image


class Puller(Protocol):
    def ensure(self, reference: str, policy: PullPolicy) -> Image: ...

    def release(self, digest: str) -> None: ...


@dataclass(eq=False)
class Prefetch:
    """One :meth:`Puller.ensure` on a thread of its own, started at construction; :meth:`take` hands
    over its image and its hold, :meth:`drop` releases the hold of a result nobody will take.

    ``bind`` runs first on the pull's thread (the worker names its sandbox in the log there).
    """

    images: Puller
    reference: str
    policy: PullPolicy
    bind: Callable[[], None] = lambda: None
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _image: Image | None = field(default=None, init=False, repr=False)
    _error: Exception | None = field(default=None, init=False, repr=False)
    _dropped: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        threading.Thread(target=self._run, name="image-prefetch", daemon=True).start()

    def _run(self) -> None:
        self.bind()
        try:
            image = self.images.ensure(self.reference, self.policy)
        except Exception as exc:  # handed to whoever takes it, as ensure() would raise it
            self._error = exc
        else:
            with self._lock:
                if self._dropped:
                    self.images.release(image.digest)
                else:
                    self._image = image
        finally:
            self._done.set()

    def serves(self, reference: str, policy: PullPolicy) -> bool:
        """Whether this pull is the one the launch would make (the spec has not changed since)."""
        return (reference, policy) == (self.reference, self.policy)

    def take(self) -> Image:
        """The image (the caller now holds it, as after ensure()), or ensure()'s error."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._image is not None
        image, self._image = self._image, None
        return image

    def drop(self) -> None:
        """Nobody will take the result: its hold is released now or when the pull ends."""
        with self._lock:
            self._dropped = True
            image, self._image = self._image, None
        if image is not None:
            self.images.release(image.digest)
