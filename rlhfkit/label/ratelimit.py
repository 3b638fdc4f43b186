"""Per-token request rate limit of the annotation API: one token bucket per caller.

A bucket holds at most `burst` tokens and refills at `per_minute / 60` tokens per second; each
request takes one token, and a request finding less than one is refused (429) with the time
until a token is back, t = (1 − tokens) / rate, sent as `Retry-After` (whole seconds, rounded
up). So a caller may fire `burst` requests at once and then `per_minute` a minute for ever.

Why not a library: `limits`' in-memory storage reads `time.time()` itself (no clock to inject
for tests) and expires its keys on timer threads, its shared storages are servers (Redis,
Memcached, MongoDB), and `pyrate-limiter` runs a background leaker thread; a bucket per caller
is a few lines and costs one dict lookup on the vote path. Several server processes share their
buckets through a small file (`SharedTokenBuckets`: a flock, a pread and a pwrite per request),
so the limit holds per token whatever process a request lands on.
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PER_MINUTE = 120.0
"""Sustained requests a minute per token: 2 a second, about twice the fastest pace a person keeps
up on short pairwise items (one key, then Enter), and far below what a script can send."""
DEFAULT_BURST = 60
"""Requests a token may send at once: a page load is 2 (`/me`, `/tasks/next`), a vote 1, so a
burst of 60 absorbs reload storms and quick runs of easy items."""


@dataclass(frozen=True)
class RateLimit:
    """Per-token limit of the API (annotator tokens and the admin token, each on its own)."""

    per_minute: float = DEFAULT_PER_MINUTE
    """Sustained requests per minute per token; 0 turns the limit off."""
    burst: int = DEFAULT_BURST
    """Requests a token may send at once before the sustained rate applies (bucket size)."""

    def __post_init__(self) -> None:
        if not self.per_minute >= 0 or self.burst < 1:
            raise ValueError("rate limit: per_minute must be ≥ 0 and burst ≥ 1")


def take_token(tokens: float, last: float, now: float, rate: float, burst: float) -> tuple[float, float]:
    """One request against a bucket holding `tokens` at time `last`: refill to
    b = min(burst, tokens + rate · max(0, now − last)), then take one if b ≥ 1.
    Returns (tokens left, seconds to wait): (b − 1, 0) when allowed, else (b, (1 − b) / rate).
    max(0, …): a clock stepped backwards refills nothing rather than draining the bucket."""
    tokens = min(burst, tokens + max(0.0, now - last) * rate)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class TokenBuckets:
    """One token bucket per key, in this process; `take(key)` returns 0.0 when the request may
    go ahead, else the seconds to wait. Memory: one (tokens, time) pair per key ever seen; keys
    are annotator ids, so it is bounded by the number of annotators."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = limit.per_minute / 60.0
        self.burst = float(limit.burst)
        self.clock = clock
        self._state: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()  # the server may take tokens from several threads

    def take(self, key: Hashable) -> float:
        if self.rate == 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(key, (self.burst, now))
            tokens, wait = take_token(tokens, last, now, self.rate, self.burst)
            self._state[key] = (tokens, now)
        return wait


class SharedTokenBuckets:
    """The same buckets kept in a file that several processes open: key k (an integer ≥ 0) is
    the record at byte 24·k, three doubles (tokens, time, 1 = written); a record never written
    reads as zeros (a hole) and starts full. Each `take` reads and writes its record under an
    exclusive `flock` of the file, so concurrent processes see one bucket per key. The clock
    must be shared by the processes (the default, `time.time`, is)."""

    RECORD = struct.Struct("ddd")

    def __init__(self, path: Path, limit: RateLimit, clock: Callable[[], float] = time.time) -> None:
        self.rate = limit.per_minute / 60.0
        self.burst = float(limit.burst)
        self.clock = clock
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        # flock excludes other processes, not this one's threads (they share the open file).
        self._lock = threading.Lock()

    def take(self, key: int) -> float:
        if self.rate == 0:
            return 0.0
        offset = self.RECORD.size * key
        with self._lock:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                now = self.clock()
                raw = os.pread(self.fd, self.RECORD.size, offset)
                tokens, last, written = (self.RECORD.unpack(raw) if len(raw) == self.RECORD.size
                                         else (0.0, 0.0, 0.0))
                if not written:
                    tokens, last = self.burst, now
                tokens, wait = take_token(tokens, last, now, self.rate, self.burst)
                os.pwrite(self.fd, self.RECORD.pack(tokens, now, 1.0), offset)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        return wait


def retry_after(wait_s: float) -> str:
    """`Retry-After` value: delta-seconds are whole numbers (RFC 9110 §10.2.3), rounded up so a
    client that waits exactly that long finds a token."""
    return str(max(1, math.ceil(wait_s)))
