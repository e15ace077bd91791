"""Server-side fusion of the averaged update: FedAvg and the adaptive optimizers of Reddi et al.

All strategies take the weighted mean delta ``Δ`` (the secure sum divided by the summed weight) and
return the next global weights. FedAdam, FedYogi and FedAdagrad follow Algorithm 2 of Reddi et al.,
"Adaptive Federated Optimization" (ICLR 2021), with ``m₀ = 0`` and ``v₀ = τ²``::

    m ← β₁ m + (1 − β₁) Δ
    v ← v + Δ²                                  (Adagrad)
    v ← v − (1 − β₂) Δ² sign(v − Δ²)            (Yogi)
    v ← β₂ v + (1 − β₂) Δ²                      (Adam)
    x ← x + η m / (√v + τ)

Each strategy has ``state_dict()`` / ``load_state_dict()`` so a federation can be resumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from securefl.errors import ConfigError
from securefl.registry import construct


class Strategy(ABC):
    name: str

    @abstractmethod
    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """The next global weights from the current ones and the averaged delta."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class FedAvg(Strategy):
    """``x ← x + η Δ``; with η = 1 the new model is the weighted average of the parties' models."""

    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        _positive("lr", lr)
        self.lr = float(lr)

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        return weights + self.lr * mean_delta


class _Adaptive(Strategy):
    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        _positive("lr", lr)
        _positive("tau", tau)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ConfigError(f"{self.name} {name} must be in [0, 1), got {beta!r}")
        self.lr, self.beta1, self.beta2, self.tau = float(lr), float(beta1), float(beta2), float(tau)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray: ...

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if self.m is None or self.m.shape != mean_delta.shape:
            self.m = np.zeros_like(mean_delta, dtype=np.float64)
            self.v = np.full_like(mean_delta, self.tau**2, dtype=np.float64)
        self.m = self.beta1 * self.m + (1 - self.beta1) * mean_delta
        self.v = self._second_moment(self.v, mean_delta * mean_delta)
        return weights + self.lr * self.m / (np.sqrt(self.v) + self.tau)

    def state_dict(self) -> dict[str, Any]:
        return {
            "m": None if self.m is None else self.m.copy(),
            "v": None if self.v is None else self.v.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = None if state["m"] is None else np.array(state["m"], dtype=np.float64)
        self.v = None if state["v"] is None else np.array(state["v"], dtype=np.float64)


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq


class FedYogi(_Adaptive):
    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * delta_sq * np.sign(v - delta_sq)


class FedAdam(_Adaptive):
    name = "fedadam"

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * delta_sq


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedAdam, FedYogi, FedAdagrad)}


def build_strategy(spec: str | Mapping[str, Any] | Strategy | None) -> Strategy:
    """From a config value: ``"fedavg"`` or ``{"name": "fedadam", "lr": 0.01}``."""
    if spec is None:
        return FedAvg()
    if isinstance(spec, Strategy):
        return spec
    return construct("strategy", STRATEGIES, {"name": spec} if isinstance(spec, str) else spec, "name")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
