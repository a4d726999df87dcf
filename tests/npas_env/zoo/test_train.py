from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from npas_env.errors import InvalidConfig, InvalidData
from npas_env.zoo import TrainRecipe, evaluate_accuracy, make_sgd, train_epochs


def _loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)


def test_train_learns_and_calls_hook() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    calls: list[int] = []
    before = evaluate_accuracy(model, _loader())
    result = train_epochs(model, _loader(), epochs=10, optimizer=make_sgd(model, 0.5),
                          after_step=lambda: calls.append(1))
    assert result.ok and result.steps == 40 and len(calls) == 40 and result.epochs == 10
    assert evaluate_accuracy(model, _loader()) >= max(before, 0.9)
    assert model.training  # mode restored


def test_max_batches_caps_each_epoch() -> None:
    model = nn.Linear(4, 2)
    result = train_epochs(model, _loader(), epochs=2, max_batches=1)
    assert result.steps == 2 and result.epochs == 2
    assert evaluate_accuracy(model, _loader(), max_batches=1) in {i / 8 for i in range(9)}


def test_nan_loss_is_a_result_not_a_crash() -> None:
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.fill_(math.nan)
    result = train_epochs(model, _loader(), epochs=3)
    assert not result.ok and "non-finite" in result.error and result.steps == 0
    assert math.isnan(result.mean_loss)
    assert evaluate_accuracy(model, _loader()) == 0.0  # NaN logits count as wrong


def test_bad_loaders_raise_invalid_data() -> None:
    with pytest.raises(InvalidData, match="no samples"):
        evaluate_accuracy(nn.Linear(4, 2), [])
    with pytest.raises(InvalidData, match=r"\(inputs, labels\)"):
        train_epochs(nn.Linear(4, 2), [torch.zeros(2, 4)])


def test_recipe_validates_and_schedules() -> None:
    with pytest.raises(InvalidConfig, match="epochs must be >= 1"):
        TrainRecipe(epochs=0, lr=0.1)
    with pytest.raises(InvalidConfig, match="lr must be > 0"):
        TrainRecipe(epochs=1, lr=0.0)
    recipe = TrainRecipe(epochs=2, lr=1.0, warmup_epochs=1)
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=recipe.lr)
    sched = recipe.scheduler(opt, steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup
    assert lrs[4] == pytest.approx(1.0) and lrs[4] > lrs[5] > lrs[6] > lrs[7] > 0  # cosine decay
