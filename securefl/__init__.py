"""securefl: federated learning in which the aggregator never sees an individual update.

Parties keep their data and their training loops; their updates reach the aggregator only through
a stack of privacy layers ending in a secure sum. Start with :class:`Federation`.
"""

from securefl.aggregator import RoundReport
from securefl.codec import ArraySpec, VectorLayout
from securefl.errors import (
    ConfigError,
    ProtocolError,
    RoundFailed,
    SecureFLError,
    UpdateError,
    WireError,
)
from securefl.federation import Federation, History, build_stack
from securefl.fusion import FedAdagrad, FedAdam, FedAvg, FedYogi
from securefl.layers import (
    CKKS,
    Clip,
    DPNoise,
    Paillier,
    PaillierThreshold,
    Plain,
    PrivacyStack,
    Quantize,
    SecAgg,
    SecAggPlus,
)
from securefl.party import Client, EvalResult, TrainResult
from securefl.privacy.guard import Budget, PrivacyGuard, guard_for
from securefl.privacy.ledger import open_ledger
from securefl.roundinfo import RoundInfo
from securefl.selection import AllParties, FixedCount, Poisson

__version__ = "0.2.0"

__all__ = [
    "CKKS",
    "AllParties",
    "ArraySpec",
    "Budget",
    "Client",
    "Clip",
    "ConfigError",
    "DPNoise",
    "EvalResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "Federation",
    "FixedCount",
    "History",
    "Paillier",
    "PaillierThreshold",
    "Plain",
    "Poisson",
    "PrivacyGuard",
    "PrivacyStack",
    "ProtocolError",
    "Quantize",
    "RoundFailed",
    "RoundInfo",
    "RoundReport",
    "SecAgg",
    "SecAggPlus",
    "SecureFLError",
    "TrainResult",
    "UpdateError",
    "VectorLayout",
    "WireError",
    "__version__",
    "build_stack",
    "guard_for",
    "open_ledger",
]
