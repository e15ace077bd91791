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
from securefl.layers import Clip, Plain, PrivacyStack, Quantize
from securefl.party import Client, EvalResult, TrainResult
from securefl.roundinfo import RoundInfo
from securefl.selection import AllParties, FixedCount, Poisson

__version__ = "0.1.0"

__all__ = [
    "AllParties",
    "ArraySpec",
    "Client",
    "Clip",
    "ConfigError",
    "EvalResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "Federation",
    "FixedCount",
    "History",
    "Plain",
    "Poisson",
    "PrivacyStack",
    "ProtocolError",
    "Quantize",
    "RoundFailed",
    "RoundInfo",
    "RoundReport",
    "SecureFLError",
    "TrainResult",
    "UpdateError",
    "VectorLayout",
    "WireError",
    "__version__",
    "build_stack",
]
