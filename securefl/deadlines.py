"""Calls into a party with a deadline that a hung party cannot stretch.

A simulated party runs in the process that hosts it (this one, or a Ray actor), so a ``train`` that
never returns would block its host: every later party of the host, and the aggregator waiting for
them, for ever (found by an attacker: one hanging party dropped every party of its actor for the
life of the federation; in process, it blocked the driver). Python cannot stop a thread, so a call
that overruns its deadline is abandoned, with the thread running it, and the host goes on with a
fresh worker; the party answers nothing until that call has returned (it is still inside it, and
its state is not safe to enter twice). One hung party costs itself and one deadline, once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from securefl.errors import ConfigError

_Box = list  # [(True, value)] or [(False, exception)] once the call returned


# The longest deadline any caller may set: a week, far below what a thread wait accepts
# (threading.TIMEOUT_MAX; beyond it a wait raises, and inf did — found by an attacker).
MAX_DEADLINE = 7 * 24 * 3600.0


def check_deadline(value: object, what: str) -> float:
    """``value`` as a deadline in seconds: a positive finite number of at most MAX_DEADLINE."""
    if type(value) not in (int, float) or not 0 < value <= MAX_DEADLINE:
        raise ConfigError(
            f"{what} must be positive seconds, at most {MAX_DEADLINE:g} (a week), got {value!r}"
        )
    return float(value)


_IDLE_SECONDS = 5.0  # an idle worker exits after this long: a federation leaves no thread behind


class _Worker:
    """A daemon thread running submitted calls one after another (daemon: an abandoned call never
    keeps the process from exiting). Idle for ``_IDLE_SECONDS`` while still in its owner's idle
    list, it leaves the list and exits (found running the suite: a worker per federation that never
    exited piled up thousands of threads)."""

    def __init__(self, owner: _Pool) -> None:
        self._owner = owner
        self.abandoned = False  # its call overran: it exits once that call returns, never reused
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="securefl-party-call", daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                call, box, done = self._tasks.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self.abandoned or self._owner._retire(self):
                    return
                continue  # a caller took it from the idle list: its task is on the way
            try:
                box.append((True, call()))
            except BaseException as exc:  # handed to the caller, who decides what it means
                box.append((False, exc))
            finally:
                done.set()
                call = box = done = None  # hold nothing of a finished call (a model, a request) while idle
            if self.abandoned:  # (found by an attacker: abandoned workers lived for ever, one a hang)
                return

    def submit(self, call: Callable[[], Any]) -> tuple[_Box, threading.Event]:
        box: _Box = []
        done = threading.Event()
        self._tasks.put((call, box, done))
        return box, done


class _Pool:
    """The idle workers of this process, shared by every caller (every federation, every actor):
    a worker that finished a call waits here for the next one, whoever makes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self)

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _retire(self, worker: _Worker) -> bool:
        """Whether an idle ``worker`` may exit: only while no caller has taken it."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


_POOL = _Pool()


class Hung(Exception):
    """The call overran its deadline and was abandoned (or the party is still inside one)."""


class _Run:
    """Calls run one after another on one worker, the one in progress visible to the caller that
    watches its deadline (one hand-off a batch, not one a call: a hand-off per call made the test
    suite a quarter slower)."""

    def __init__(self, calls: list[tuple[str, Callable[[], Any]]]) -> None:
        self.calls = calls
        self.outcomes: list[tuple[bool, Any] | None] = [None] * len(calls)
        self.returned = [threading.Event() for _ in calls]
        self.finished = threading.Event()
        self.lock = threading.Lock()
        self.current, self.started = -1, 0.0
        self.cancelled = False

    def __call__(self) -> None:
        try:
            for index, (_, call) in enumerate(self.calls):
                with self.lock:
                    if self.cancelled:  # the caller gave up on the one before and moved on
                        return
                    self.current, self.started = index, time.monotonic()
                try:
                    self.outcomes[index] = (True, call())
                except BaseException as exc:  # handed to the caller, who decides what it means
                    self.outcomes[index] = (False, exc)
                finally:
                    self.returned[index].set()
        finally:
            self.finished.set()

    def overdue(self, timeout: float) -> tuple[int | None, float]:
        """(index of the call in progress if it overran ``timeout`` — it is then cancelled —, or
        None with the seconds to wait before looking again)."""
        with self.lock:
            index, started = self.current, self.started
            if index < 0:
                return None, timeout  # not started yet: it will have its own full time
            left = started + timeout - time.monotonic()
            if left > 0 or self.returned[index].is_set():
                return None, max(left, 0.0)
            self.cancelled = True
            return index, 0.0


class DeadlineCaller:
    """Runs calls for parties with a time limit on workers of the process-wide pool; shared by the
    lanes of one host (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside: dict[str, threading.Event] = {}  # party -> the abandoned call it is still in

    def busy(self, party: str) -> bool:
        """Whether ``party`` is still inside a call that was abandoned."""
        with self._lock:
            done = self._inside.get(party)
            if done is not None and done.is_set():
                del self._inside[party]
                return False
            return done is not None

    def call_many(self, calls: list[tuple[str, Callable[[], Any]]], timeout: float) -> list[tuple[bool, Any]]:
        """Each ``(party, call)`` in turn, each with its own ``timeout``, on one worker: a list of
        ``(True, value)`` or ``(False, exception)``, the exception :class:`Hung` for a call that
        overran (the rest go on on a fresh worker) or a party still inside an earlier one."""
        timeout = min(timeout, MAX_DEADLINE)
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(calls)
        todo = []
        for index, (party, _) in enumerate(calls):
            if self.busy(party):
                outcomes[index] = (
                    False,
                    Hung(f"party {party} is still inside a call that overran its deadline"),
                )
            else:
                todo.append(index)
        while todo:
            run = _Run([calls[i] for i in todo])
            worker = _POOL.take()
            worker.submit(run)
            overran = None
            while overran is None and not run.finished.is_set():
                overran, wait = run.overdue(timeout)
                if overran is None:
                    run.finished.wait(wait or 0.001)
            done = len(todo) if overran is None else overran
            for k in range(done):
                outcomes[todo[k]] = run.outcomes[k]
            if overran is None:
                _POOL.give_back(worker)
                break
            worker.abandoned = True
            party = calls[todo[overran]][0]
            with self._lock:
                self._inside[party] = run.returned[overran]
            outcomes[todo[overran]] = (
                False,
                Hung(f"party {party} did not return within {timeout:g} s; its call is abandoned"),
            )
            todo = todo[overran + 1 :]
        for ok, value in outcomes:
            if not ok and not isinstance(value, Exception):
                raise value  # KeyboardInterrupt, SystemExit: not a party's failure
        return outcomes

    def call(self, party: str, call: Callable[[], Any], timeout: float) -> Any:
        """``call()``'s value, or its exception re-raised; Hung if it did not return within
        ``timeout`` seconds (its worker is then left to it) or the party is still in an earlier one."""
        if self.busy(party):
            raise Hung(f"party {party} is still inside a call that overran its deadline")
        worker = _POOL.take()
        box, done = worker.submit(call)
        if not done.wait(min(timeout, MAX_DEADLINE)):
            worker.abandoned = True
            with self._lock:
                self._inside[party] = done
            raise Hung(f"party {party} did not return within {timeout:g} s; its call is abandoned")
        _POOL.give_back(worker)
        ok, value = box[0]
        if ok:
            return value
        raise value
