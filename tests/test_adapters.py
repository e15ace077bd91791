import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

import securefl
from securefl.adapters.sklearn import arrays_to_linear, linear_to_arrays, set_linear_shape
from securefl.adapters.torch import FedProx, arrays_to_model, model_to_arrays
from securefl.errors import UpdateError


def test_torch_round_trip_skips_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    arrays = model_to_arrays(model)
    assert "1.num_batches_tracked" not in arrays and "1.running_mean" in arrays
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    arrays_to_model(other, arrays)
    for name, value in model_to_arrays(other).items():
        np.testing.assert_array_equal(value, arrays[name])


def test_torch_load_checks_names_and_shapes():
    model = torch.nn.Linear(3, 2)
    arrays = model_to_arrays(model)
    with pytest.raises(UpdateError, match=r"missing \['bias'\]"):
        arrays_to_model(model, {"weight": arrays["weight"]})
    with pytest.raises(UpdateError, match=r"'weight' has shape \(3, 2\)"):
        arrays_to_model(model, {"weight": arrays["weight"].T, "bias": arrays["bias"]})


def test_fedprox_penalty_value_and_gradient_by_hand():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    prox = FedProx(model, mu=0.5)
    assert prox.penalty().item() == 0.0
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.0]]))
    penalty = prox.penalty()
    # mu/2 * ((2-1)^2 + (0-2)^2) = 0.25 * 5
    assert penalty.item() == pytest.approx(1.25)
    penalty.backward()
    # gradient mu * (w - w_global) = 0.5 * [1, -2]
    np.testing.assert_allclose(model.weight.grad.numpy(), [[0.5, -1.0]])


def test_sklearn_linear_model_federated():
    data = load_breast_cancer()
    x = StandardScaler().fit_transform(data.data)
    y = data.target
    shards = np.array_split(np.arange(len(y)), 3)
    template = set_linear_shape(SGDClassifier(loss="log_loss"), x.shape[1], np.array([0, 1]))

    def make(idx):
        local = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01, random_state=0)

        def train(weights, info):
            set_linear_shape(local, x.shape[1], np.array([0, 1]))
            arrays_to_linear(local, weights)
            for _ in range(3):
                local.partial_fit(x[idx], y[idx], classes=np.array([0, 1]))
            return linear_to_arrays(local), len(idx), {"accuracy": local.score(x[idx], y[idx])}

        return train

    fed = securefl.Federation(
        linear_to_arrays(template),
        {f"p{i}": make(s) for i, s in enumerate(shards)},
        train_metrics=["accuracy"],
    )
    fed.run(3)
    final = arrays_to_linear(
        set_linear_shape(SGDClassifier(), x.shape[1], np.array([0, 1])), fed.global_weights
    )
    assert final.score(x, y) > 0.9


def test_sklearn_errors():
    with pytest.raises(UpdateError, match="fit it"):
        linear_to_arrays(SGDClassifier())
    with pytest.raises(UpdateError, match="exactly the arrays"):
        arrays_to_linear(SGDClassifier(), {"coef_": np.zeros(2)})
