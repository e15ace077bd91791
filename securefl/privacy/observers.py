"""Who sees what, and the ε that holds against each: the observer classes of a DP federation.

One federation's releases give a different guarantee to different observers, because amplification
by sampling holds only against those who do not know who was sampled (protocols/dp.md § Observers):

* ``released-model`` — sees only the released models. The released average divides by the
  realized count, whose noise scale gives it away, so this observer knows the count: each release
  is accounted at k/n (below), like ``count``.
* ``count`` — sees how many parties each round selected (the ledger's ``parties_selected``, a
  round report, the operator's logs, the released model itself). Given the count k of n, a party
  was in the round with probability k/n, not q: each release is accounted at k/n (Poisson selection
  and Gaussian noise; otherwise at 1) — but never below ``participants``' figure: k/n needs who is
  summed, given how many, to be uniform, and dropouts can depend on who the party is (colluders
  drop at will), which can make the count say whether the target is in.
* ``participants`` — the federation's parties, alone or colluding (with ``distributed`` noise, in
  coalitions of at most ``colluders`` summed parties, 1 by default: each member knows its own share
  of the noise and takes it out of the sum; ``DPNoise(colluders=c)`` sizes the shares so that c
  members leave the calibrated noise): the selected parties are handed
  the round's selection, so they may know whether the target took part. A party's data is used only
  in the rounds it is selected in, so against them the target's ε is the composition of *its* rounds
  without amplification; the guarantee is the worst party's: the ``m`` rounds of the party selected
  most often (with mixed mechanisms, the ``m`` costliest releases — an upper bound).
* ``aggregator`` — chooses the parties and hears from them, so it knows the selection too: the same
  account as ``participants`` for ``local`` noise, and for ``distributed`` noise under a sum that
  hides each input (secagg, secagg+). With ``central`` noise it reads the sum before noising it, and
  with ``distributed`` noise under ``plain`` it reads each input with only its share of the noise:
  the recorded mechanism does not protect against it (``None``).

The classes are named here (a light module: the CLI and the config check names without loading
an accountant); :mod:`securefl.privacy.accounts` computes each class's ε.
"""

from __future__ import annotations

from securefl.errors import ConfigError

MODEL, COUNT, PARTICIPANTS, AGGREGATOR = "released-model", "count", "participants", "aggregator"
OBSERVERS = (MODEL, COUNT, PARTICIPANTS, AGGREGATOR)
# In the words of the HTML report and `securefl audit`: whom each figure protects against.
DESCRIPTIONS = {
    MODEL: "anyone who sees only the released models (their users, the public)",
    COUNT: "anyone who also sees how many parties took part in each round (readers of this ledger, "
    "round reports, the operator's logs)",
    PARTICIPANTS: "the other parties of the federation, alone or colluding: they are told who takes part "
    "in the rounds they are in",  # (audit adds the coalition bound of distributed noise)
    AGGREGATOR: "the aggregator, which chooses the parties of each round and receives their updates",
}


def check_observer(observer: str | None) -> str | None:
    if observer is not None and observer not in OBSERVERS:
        raise ConfigError(f"unknown observer class {observer!r}; choose one of {', '.join(OBSERVERS)}")
    return observer
