"""How messages move: the transport interface and the in-process (embedded) implementation.

The aggregator talks to parties only through :meth:`Transport.exchange`: it hands over one request
(bytes) per party and gets back the replies that arrived before the deadline, each tagged with the
sender the transport authenticated. A network transport is another implementation of this
interface in its own file; nothing else changes.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from securefl.deadlines import DeadlineCaller, Hung

log = logging.getLogger(__name__)

Handler = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Reply:
    """A reply as the transport delivers it: authenticated sender, bytes, and how long it took."""

    sender: str
    data: bytes
    seconds: float = 0.0


@dataclass
class Traffic:
    """Bytes moved, from the aggregator's point of view."""

    bytes_up: int = 0  # parties -> aggregator
    bytes_down: int = 0  # aggregator -> parties
    messages: int = 0

    def snapshot(self) -> Traffic:
        return Traffic(self.bytes_up, self.bytes_down, self.messages)

    def since(self, earlier: Traffic) -> Traffic:
        return Traffic(
            self.bytes_up - earlier.bytes_up,
            self.bytes_down - earlier.bytes_down,
            self.messages - earlier.messages,
        )


Segments = list  # of bytes (a request's own) and ints (indices into the parts requests share)


class SharedRequests(Mapping):
    """A phase's requests, each still exactly its bytes (``requests[party]``), held as segments:
    its own bytes and indices into the large parts all of them carry byte for byte (the global
    model, the round's info). The aggregator never holds n copies of those parts; a transport that
    can move them once (Ray: once per phase into the object store) reads ``shared`` and
    ``pieces``, any other gets each request's bytes when it asks for them."""

    def __init__(self, shared: list[bytes], pieces: dict[str, Segments]) -> None:
        self.shared = shared
        self.pieces = pieces

    def __getitem__(self, party: str) -> bytes:
        return join_segments(self.pieces[party], self.shared)

    def __iter__(self) -> Iterator[str]:
        return iter(self.pieces)

    def __len__(self) -> int:
        return len(self.pieces)

    def size(self, party: str) -> int:
        """The length of ``self[party]``, without joining it."""
        return sum(len(self.shared[s]) if isinstance(s, int) else len(s) for s in self.pieces[party])


def join_segments(segments: Segments, shared: list[bytes]) -> bytes:
    """A request rebuilt from its segments, byte for byte."""
    return b"".join(shared[s] if isinstance(s, int) else s for s in segments)


class Transport(ABC):
    traffic: Traffic

    @abstractmethod
    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> list[Reply]:
        """Send each request to its party; return the replies received within ``timeout`` seconds."""


def _size(requests: Mapping[str, bytes], party: str) -> int:
    return requests.size(party) if isinstance(requests, SharedRequests) else len(requests[party])


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"a reply must be bytes, got {type(data).__name__}")
    return bytes(data)


class FaultInjector(Protocol):
    """Intercepts one request/response, for fault-injection tests and resilience drills.

    ``deliver(request)`` runs the party; the injector may skip it (the party is offline), drop,
    duplicate, delay or alter the reply. It returns the replies as ``(bytes, extra_seconds)``.
    """

    def __call__(self, party: str, request: bytes, deliver: Handler) -> list[tuple[bytes, float]]: ...


@dataclass
class InProcessTransport(Transport):
    """Parties as handlers in this process. Every message is still bytes (design invariant 4).

    ``workers > 1`` runs parties in threads; the deadline is applied to each party's own time, as
    if parties ran on separate machines. Each call runs on a worker thread: one that overruns the
    deadline is abandoned, and its party answers nothing until it returns (``securefl.deadlines``).
    """

    handlers: dict[str, Handler]
    faults: FaultInjector | None = None
    workers: int = 1
    traffic: Traffic = field(default_factory=Traffic)
    _caller: DeadlineCaller = field(default_factory=DeadlineCaller, repr=False)

    def exchange(self, requests: Mapping[str, bytes], timeout: float) -> list[Reply]:
        unknown = sorted(set(requests) - set(self.handlers))
        if unknown:
            raise KeyError(f"no route to parties {unknown}")
        for party in requests:
            self.traffic.bytes_down += _size(requests, party)
            self.traffic.messages += 1
        if self.workers > 1 and len(requests) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:  # lanes: they only wait
                batches = list(pool.map(lambda item: self._one(*item, timeout), requests.items()))
        else:  # one after another on one worker, each with its own deadline
            calls = [(party, self._answer(party, data)) for party, data in requests.items()]
            batches = [
                self._outcome(party, outcome)
                for (party, _), outcome in zip(calls, self._caller.call_many(calls, timeout), strict=True)
            ]
        replies = []
        for batch in batches:
            for reply in batch:
                if reply.seconds > timeout:
                    log.info(
                        "reply from %s after %.3fs missed the %.3fs deadline",
                        reply.sender,
                        reply.seconds,
                        timeout,
                    )
                    continue
                self.traffic.bytes_up += len(reply.data)
                self.traffic.messages += 1
                replies.append(reply)
        return replies

    def busy(self, party: str) -> bool:
        """Whether ``party`` is still inside a call abandoned at its deadline: its objects are in use
        on another thread, so the driver leaves them alone until the call returns."""
        return self._caller.busy(party)

    def _answer(self, party: str, request: bytes) -> Callable[[], list[Reply]]:
        """The call that asks ``party``: run on a worker thread (securefl.deadlines)."""
        handler = self.handlers[party]

        def run() -> list[Reply]:
            start = time.perf_counter()
            raw = [(handler(request), 0.0)] if self.faults is None else self.faults(party, request, handler)
            elapsed = time.perf_counter() - start
            # Inside the call: a handler returning something that is not bytes is a crashed party too.
            return [Reply(party, _as_bytes(data), elapsed + extra) for data, extra in raw]

        return run

    def _one(self, party: str, request: bytes, timeout: float) -> list[Reply]:
        try:  # abandoned at the deadline if it hangs
            value = self._caller.call(party, self._answer(party, request), timeout)
        except Exception as exc:
            return self._outcome(party, (False, exc))
        return self._outcome(party, (True, value))

    @staticmethod
    def _outcome(party: str, outcome: tuple[bool, object]) -> list[Reply]:
        ok, value = outcome
        if ok:
            return value
        if isinstance(value, Hung):
            log.warning("%s", value)
        else:  # a crashed party is a dropout, never a crashed federation
            log.warning("party %s crashed: %s", party, type(value).__name__)
        return []
