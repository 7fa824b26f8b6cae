"""nftables in-process through ``libnftables`` (ctypes), the library the ``nft`` command wraps.

Starting ``nft`` costs far more than the transaction it runs (it loads and parses its whole
environment each time): in-process, a sandbox's rules take about a millisecond. The library
ships with Debian's ``nftables`` package; where it is missing the ``nft`` command is used.
"""

from __future__ import annotations

import ctypes
import threading

#: ``NFT_CTX_OUTPUT_JSON`` in libnftables.h.
OUTPUT_JSON = 1 << 4


class Nft:
    """One libnftables context, used by one thread at a time."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run(self, script: str, *, json_output: bool = False) -> tuple[int, str, str]:
        """(status, output, errors) of one script: one transaction, as ``nft -f``."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, OUTPUT_JSON if json_output else 0)
            status = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return int(status), out.decode(errors="replace"), err.decode(errors="replace")


_shared: Nft | None = None
_shared_lock = threading.Lock()


def shared() -> Nft | None:
    """The process's context, or None when the library cannot be loaded."""
    global _shared
    with _shared_lock:
        if _shared is None:
            try:
                _shared = Nft()
            except OSError:
                return None
        return _shared
