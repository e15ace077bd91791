"""scikit-learn linear models to and from named arrays (``coef_`` and ``intercept_``).

Works for fitted linear estimators (LogisticRegression, SGDClassifier, Ridge, LinearRegression…):
each party fits locally starting from the global coefficients (``warm_start=True`` or
``partial_fit``), and the coefficients are averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from securefl.codec import NamedArrays
from securefl.errors import UpdateError

_FIELDS = ("coef_", "intercept_")


def linear_to_arrays(model: Any) -> dict[str, np.ndarray]:
    """``{"coef_": ..., "intercept_": ...}`` of a fitted linear model, as float64 copies."""
    missing = [f for f in _FIELDS if not hasattr(model, f)]
    if missing:
        raise UpdateError(
            f"{type(model).__name__} has no {missing}: fit it (or call set_linear_shape) before federating"
        )
    return {f: np.array(getattr(model, f), dtype=np.float64, ndmin=1) for f in _FIELDS}


def arrays_to_linear(model: Any, arrays: NamedArrays) -> Any:
    """Set ``coef_`` and ``intercept_`` of ``model`` from named arrays."""
    if not isinstance(arrays, dict) or set(arrays) != set(_FIELDS):
        raise UpdateError(f"a linear model needs exactly the arrays {list(_FIELDS)}")
    for field in _FIELDS:
        current = getattr(model, field, None)
        value = np.array(arrays[field], dtype=np.float64)
        if current is not None and np.shape(current) != value.shape:
            raise UpdateError(f"{field} has shape {value.shape}, the model has {np.shape(current)}")
        setattr(model, field, value)
    return model


def set_linear_shape(model: Any, n_features: int, classes: np.ndarray) -> Any:
    """Give an unfitted classifier zero coefficients so it can start from a global model."""
    classes = np.asarray(classes)
    rows = 1 if len(classes) == 2 else len(classes)
    model.coef_ = np.zeros((rows, n_features))
    model.intercept_ = np.zeros(rows)
    model.classes_ = classes
    return model
