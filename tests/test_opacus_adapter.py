"""Record-level DP-SGD: one accountant across rounds, refusal before training, a record-unit ledger."""

import warnings

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus import PrivacyEngine

from securefl.adapters.opacus import PrivateTraining
from securefl.adapters.torch import model_to_arrays
from securefl.errors import BudgetExhausted
from securefl.privacy.audit import audit
from securefl.privacy.guard import Budget
from securefl.privacy.ledger import Ledger

warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")


def _setup(budget=None, ledger=None):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    model = torch.nn.Linear(8, 2)
    return PrivateTraining(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.utils.data.DataLoader(data, batch_size=32),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        budget=budget,
        ledger=ledger,
        party="p0",
    )


def _one_round(private, round):
    private.begin_round(private.weights(), epochs=1)
    for x, y in private.loader:
        private.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(private.model(x), y).backward()
        private.optimizer.step()
    return private.end_round(round)


def test_epsilon_covers_every_round_unlike_a_new_engine_per_round():
    private = _setup()
    first = _one_round(private, 0)
    for round in range(1, 4):
        last = _one_round(private, round)
    assert last > first * 1.5  # four rounds spend clearly more than one
    # What a fresh engine per round would report: the last round only.
    fresh = PrivacyEngine(accountant="prv").accountant
    fresh.history = [(1.0, private.sample_rate, len(private.loader))]
    assert fresh.get_epsilon(1e-5) == pytest.approx(first, rel=0.05)
    assert private.epsilon() == pytest.approx(private.engine.accountant.get_epsilon(1e-5), abs=0.02)


def test_refuses_before_training_and_records_it(tmp_path):
    ledger = Ledger(tmp_path / "p0.jsonl", Ed25519PrivateKey.generate())
    private = _setup(Budget(5.0, 1e-5), ledger)
    rounds = 0
    with pytest.raises(BudgetExhausted, match="record-level budget"):
        for round in range(20):
            _one_round(private, round)
            rounds += 1
    before = model_to_arrays(private.base_model)
    assert 1 <= rounds < 20 and private.epsilon() <= 5.0
    assert all((before[k] == v).all() for k, v in model_to_arrays(private.base_model).items())
    result = audit(tmp_path / "p0.jsonl", ledger.signer)
    assert result.valid, result.problems
    assert result.unit == "record" and result.releases == rounds and result.refusals == 1
    assert result.epsilon["prv"] == pytest.approx(private.epsilon(), abs=1e-9)
