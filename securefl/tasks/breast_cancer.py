"""The demo task: breast-cancer diagnosis across hospitals that keep their records.

scikit-learn's bundled Wisconsin breast-cancer data (569 patients, 30 features) is split into a
held-out test set (20%, stratified) and training records dealt to ``parties`` hospitals with a
label skew drawn from a Dirichlet(0.5) distribution — some hospitals see mostly malignant cases,
some mostly benign, and their sizes differ — which is what makes federated averaging non-trivial.
Features are standardised with statistics the hospitals are assumed to have agreed on beforehand.
Each hospital trains a small MLP (30-16-1) with SGD for a few local epochs per round.

Training itself is deterministic (fixed torch generators for initialisation and batch order), so
two runs on the same split differ only by what their privacy layers do to the updates: that is how
the demo compares ``--privacy secagg`` against ``plain``. None of this touches the privacy layers,
whose randomness always comes from the OS CSPRNG.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from securefl.adapters.torch import arrays_to_model, model_to_arrays
from securefl.errors import ConfigError
from securefl.party import Client, EvalResult, TrainResult
from securefl.tasks import Task

MIN_RECORDS = 12
LOCAL_EPOCHS = 2
BATCH_SIZE = 16
LEARNING_RATE = 0.05


def build_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def split_non_iid(
    labels: np.ndarray, parties: int, rng: np.random.Generator, alpha: float = 0.5
) -> list[np.ndarray]:
    """Indices per party. Each party first gets MIN_RECORDS random records, then the rest of each
    class is dealt by Dirichlet(alpha) proportions: label skew and size skew, no empty hospital."""
    if parties * MIN_RECORDS > len(labels):
        raise ConfigError(
            f"{parties} hospitals need at least {parties * MIN_RECORDS} training records, "
            f"the data set has {len(labels)}: use at most {len(labels) // MIN_RECORDS} parties"
        )
    order = rng.permutation(len(labels))
    base, rest = order[: parties * MIN_RECORDS], order[parties * MIN_RECORDS :]
    shards = [list(chunk) for chunk in np.split(base, parties)]
    for label in np.unique(labels):
        idx = rest[labels[rest] == label]
        cuts = (np.cumsum(rng.dirichlet([alpha] * parties)) * len(idx)).astype(int)[:-1]
        for shard, part in zip(shards, np.split(idx, cuts), strict=True):
            shard.extend(part.tolist())
    return [np.sort(np.array(s)) for s in shards]


def _loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item()
        accuracy = ((logits > 0).float() == y).float().mean().item()
    return loss, accuracy


def initial_model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model()


def _hospital(x: np.ndarray, y: np.ndarray, index: int) -> Client:
    features = torch.tensor(x, dtype=torch.float32)
    targets = torch.tensor(y, dtype=torch.float32)
    model = build_model()
    batches = torch.Generator().manual_seed(index)

    def train(weights, info) -> TrainResult:
        arrays_to_model(model, weights)
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9)
        losses = []
        for _ in range(LOCAL_EPOCHS):
            for batch in torch.randperm(len(targets), generator=batches).split(BATCH_SIZE):
                optimizer.zero_grad()
                logits = model(features[batch]).squeeze(1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        return TrainResult(model_to_arrays(model), len(targets), {"loss": float(np.mean(losses))})

    def evaluate(weights, info) -> EvalResult:
        arrays_to_model(model, weights)
        loss, accuracy = _loss_and_accuracy(model, features, targets)
        return EvalResult(len(targets), {"loss": loss, "accuracy": accuracy})

    return Client(train=train, evaluate=evaluate)


def make_task(parties: int = 5, seed: int = 0) -> Task:
    """The demo federation: ``parties`` hospitals; ``seed`` fixes the data split only."""
    if not isinstance(parties, int) or parties < 1:
        raise ConfigError(f"parties must be a positive integer, got {parties!r}")
    torch.set_num_threads(1)  # tiny model: threads cost more than they give
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, stratify=data.target, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-12
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    shards = split_non_iid(y_train, parties, np.random.default_rng(seed))
    clients = {f"hospital-{i + 1}": _hospital(x_train[s], y_train[s], i) for i, s in enumerate(shards)}

    test_x = torch.tensor(x_test, dtype=torch.float32)
    test_y = torch.tensor(y_test, dtype=torch.float32)
    scorer = build_model()

    def evaluate(weights) -> dict[str, float]:
        arrays_to_model(scorer, weights)
        loss, accuracy = _loss_and_accuracy(scorer, test_x, test_y)
        return {"loss": loss, "accuracy": accuracy}

    return Task(
        name="breast-cancer",
        model=model_to_arrays(initial_model()),
        clients=clients,
        train_metrics=("loss",),
        eval_metrics=("loss", "accuracy"),
        metric_bounds={"loss": 10.0, "accuracy": 1.0},  # a hospital whose loss exceeds 10 has diverged
        weight_bound=float(max(len(s) for s in shards)),
        evaluate=evaluate,
    )
