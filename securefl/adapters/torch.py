"""PyTorch models to and from named arrays, and the FedProx proximal term for training loops.

Only floating-point entries of ``state_dict()`` are exchanged (parameters and float buffers such
as BatchNorm running statistics); integer buffers such as ``num_batches_tracked`` stay local.
"""

from __future__ import annotations

import numpy as np
import torch

from securefl.codec import NamedArrays
from securefl.errors import ConfigError, UpdateError


def model_to_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's floating-point state as numpy copies, in ``state_dict`` order."""
    return {
        name: tensor.detach().cpu().numpy().copy()
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point()
    }


def arrays_to_model(module: torch.nn.Module, arrays: NamedArrays) -> torch.nn.Module:
    """Load named arrays into ``module`` in place; every floating-point entry must be given."""
    if not isinstance(arrays, dict):
        raise UpdateError("a PyTorch model needs named arrays (a dict keyed like its state_dict)")
    state = module.state_dict()
    expected = {k for k, v in state.items() if v.is_floating_point()}
    if set(arrays) != expected:
        raise UpdateError(
            f"arrays do not match the model: missing {sorted(expected - set(arrays)) or 'none'}, "
            f"unexpected {sorted(set(arrays) - expected) or 'none'}"
        )
    with torch.no_grad():
        for name in expected:
            value = torch.as_tensor(np.asarray(arrays[name]), dtype=state[name].dtype)
            if value.shape != state[name].shape:
                raise UpdateError(
                    f"{name!r} has shape {tuple(value.shape)}, the model has {tuple(state[name].shape)}"
                )
            state[name].copy_(value)
    return module


class FedProx:
    """The proximal term of FedProx (Li et al., MLSys 2020): ``μ/2 · ||w − w_global||²``.

    Create it right after loading the global weights, and add ``prox.penalty()`` to the loss::

        prox = FedProx(model, mu=0.01)
        loss = criterion(model(x), y) + prox.penalty()
    """

    def __init__(self, module: torch.nn.Module, mu: float) -> None:
        if not (isinstance(mu, (int, float)) and mu >= 0):
            raise ConfigError(f"FedProx mu must be >= 0, got {mu!r}")
        self.mu = float(mu)
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._anchor = [p.detach().clone() for p in self._params]

    def penalty(self) -> torch.Tensor:
        total = torch.zeros((), dtype=self._params[0].dtype if self._params else torch.float32)
        for param, anchor in zip(self._params, self._anchor, strict=True):
            total = total + torch.sum((param - anchor) ** 2)
        return 0.5 * self.mu * total
