"""Host memory: peak resident set size over a window, sampled by a daemon thread.

`ru_maxrss` only gives the process-lifetime peak (it would include dataset generation
before the timed window), so a thread samples /proc/self/statm instead and keeps a
resettable maximum. Device peaks come from the backend.
"""
from __future__ import annotations

import os
import resource
import sys
import threading

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_INTERVAL_S = 0.02


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the lifetime peak
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _Sampler:
    def __init__(self) -> None:
        self.peak = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            rss = current_rss_bytes()
            with self._lock:
                if rss > self.peak:
                    self.peak = rss
            threading.Event().wait(_INTERVAL_S)

    def ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
            self._thread.start()

    def reset(self) -> None:
        self.ensure_started()
        with self._lock:
            self.peak = current_rss_bytes()

    def read(self) -> int:
        with self._lock:
            self.peak = max(self.peak, current_rss_bytes())
            return self.peak


_SAMPLER = _Sampler()


def reset_host_rss_peak() -> None:
    """Start (or restart) the peak window at the current RSS."""
    _SAMPLER.reset()


def host_rss_peak_bytes() -> int:
    """Peak RSS since the last reset (sampled every 20 ms, plus the value right now)."""
    _SAMPLER.ensure_started()
    return _SAMPLER.read()
