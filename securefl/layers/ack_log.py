"""The sums a threshold Paillier key share has acknowledged, kept beside its share file.

``paillier-threshold`` binds one decryptable sum to each unchanged update: a party acknowledges a
sum only of its contribution trained on some model (its *base*), and from then on attests no
other sum of an update trained on that base. Otherwise two decryptable sums of the same update
over two contributor sets reveal its difference to whoever decrypts them (an aggregator with
t − 1 colluding holders).

That rule must hold for the key share, not for one party object. Found by an attacker of the
Flower integration: a new session built a new party with no acknowledgements, which trained the
same update on the same initial model and acknowledged a second sum of it over other
contributors; the aggregator and one colluder recovered an honest party's update from the two
releases. So the acknowledgements live in ``<share file>.acks`` (``securefl.durable``: JSON lines,
fsynced before the acknowledgement is signed, 0600, no symlinks), read again before every
attestation and acknowledgement: every party object of that share — in any session, in this
process or after a restart — sees them. Within one round the party object's own state decides
first, as before. Later attackers added three rules, all enforced here or from here: a share
acknowledges sums in one session only, ever (two interleaved sessions could each train it on a
clear model of the aggregator's choosing); once it has acknowledged, it trains on no other clear
model (``_ThresholdParty.check_clear_model``: a copy with other bytes trains to the same update);
and after a restart its last acknowledged sum is read from here, so an exposed sum is completed —
and the same acknowledgement can be signed again, so a sum short of its quorum only because the
reply carrying it was lost is completed too (found by an attacker: an honest party whose
acknowledgement was lost, then restarted, could not acknowledge again, and three parties with
t = 2 stalled for ever).
"""

from __future__ import annotations

import re
from pathlib import Path

from securefl.durable import append_entry, damaged, read_entries
from securefl.errors import ProtocolError

_WHAT = "acknowledgement log"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AckLog:
    """The (base, session, round, sum) of every sum this key share acknowledged."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries()  # a damaged log is refused when the party is built, not mid-round

    def _entries(self, raw: list[tuple[int, object]] | None = None) -> list[tuple[str, str, int, str]]:
        out = []
        for number, entry in read_entries(self.path, _WHAT) if raw is None else raw:
            try:
                base, session, round_, digest = entry["base"], entry["session"], entry["round"], entry["sum"]
                names = entry.get("contributors", [""])  # absent in lines written before they were
                if not (
                    isinstance(base, str)
                    and _HEX64.fullmatch(base)
                    and isinstance(session, str)
                    and type(round_) is int
                    and isinstance(digest, str)
                    and isinstance(names, list)
                    and names
                    and all(isinstance(n, str) for n in names)
                ):
                    raise TypeError
            except (KeyError, TypeError):
                raise damaged(self.path, _WHAT, number) from None
            out.append((base, session, round_, digest))
        return out

    def bound_sum(self, session: str, round_: int, digest: str) -> tuple[str, tuple[str, ...]] | None:
        """(base, contributors) of the sum of ``session``'s ``round_`` with this digest that this
        share acknowledged, if its log line names the contributors (lines written before they were
        recorded do not): what a restarted party needs to acknowledge that same sum again."""
        raw = read_entries(self.path, _WHAT)
        self._entries(raw)  # every line well formed, or the log is damaged
        for _, entry in raw:
            if (entry.get("session"), entry.get("round"), entry.get("sum")) != (session, round_, digest):
                continue
            names = entry.get("contributors")
            return None if names is None else (entry["base"], tuple(names))
        return None

    def entries(self) -> list[tuple[str, str, int, str]]:
        """Every (base, session, round, sum) acknowledged, first first."""
        return self._entries()

    def last_of(self, session: str) -> tuple[int, str] | None:
        """The (round, sum) this share acknowledged last in ``session`` (None: none there)."""
        mine = [(round_, digest) for _, other, round_, digest in self._entries() if other == session]
        return mine[-1] if mine else None

    def acknowledged_on(self, base: str) -> tuple[str, int] | None:
        """The (session, round) of a sum this share acknowledged of an update trained on ``base``."""
        for recorded, session, round_, _ in self._entries():
            if recorded == base:
                return session, round_
        return None

    def record(
        self, base: str, session: str, round_: int, digest: str, contributors: tuple[str, ...] = ()
    ) -> None:
        """Durably bind ``base`` to this one sum before the acknowledgement is signed; ProtocolError
        if a sum of another session, round or content was acknowledged on it (re-acknowledging the
        same sum, as when an exposed sum is completed later, is allowed). The check and the append
        are one step under the file's lock: two party objects of the share acknowledging at once
        (two sessions hosted concurrently, two processes) cannot both bind the base."""

        def decide(raw: list[tuple[int, object]]) -> bool:
            for recorded, other_session, other_round, other_digest in self._entries(raw):
                if other_session != session:
                    # One session per share, ever: two sessions could each train on a clear model
                    # the aggregator chose (M0, and a copy with other bytes) before either was
                    # acknowledged, and both sums would then bind different bases (found by an
                    # attacker interleaving two sessions' rounds).
                    raise ProtocolError(other_session_refusal(other_session, other_round))
                if recorded == base:
                    if (other_session, other_round, other_digest) == (session, round_, digest):
                        return False  # already bound to this very sum
                    raise ProtocolError(refusal(other_session, other_round))
            return True

        entry = {"base": base, "round": round_, "session": session, "sum": digest}
        if contributors:
            # The acknowledgement signs them too: with them, a party restarted after its reply was
            # lost can sign the same acknowledgement again (bound_sum) and the sum can complete.
            entry["contributors"] = list(contributors)
        append_entry(self.path, entry, _WHAT, decide)


def refusal(session: str, round_: int) -> str:
    return (
        f"this key share already acknowledged a sum of an update trained on this same model (session "
        f"{session}, round {round_ + 1}); a second sum of it over other parties would reveal their "
        "difference, so it attests none: a new federation with this key needs a new key ceremony"
    )


def other_session_refusal(session: str, round_: int) -> str:
    return (
        f"this key share acknowledged sums in another session (session {session}, round {round_ + 1}) "
        "and acknowledges sums in one session only: two sessions could each have trained it on a clear "
        "model of the aggregator's choosing; a new federation with this key needs a new key ceremony"
    )


def clear_refusal(session: str, round_: int) -> str:
    return (
        f"this key share has acknowledged sums before (first in session {session}, round {round_ + 1}), "
        "so it trains on no other model in the clear: the aggregator chooses such a model, and one near "
        "an earlier model would free the same update for a second sum. Its federation continues from "
        "sealed models only; a new federation with this key needs a new key ceremony"
    )
