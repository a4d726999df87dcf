"""apply_plan: surgery + masks on whole models, replay, wrong-model plans, coupled filters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npas_env.errors import InvalidAction, InvalidPlan
from npas_env.layers import LayerSpec, extract_layers, layers_fingerprint
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.pruning import (
    DEFAULT_PATTERNS,
    PrunedModel,
    achieved_rate,
    apply_plan,
    enforce_masks,
    mask_sparsity,
    model_pattern_set,
)
from npas_env.search_space import NPAS_RATES, SearchSpace


class GroupedNet(nn.Module):
    """Residual add, grouped conv, depthwise conv and a Linear after flatten (no pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.down = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.pw(torch.relu(self.dw(torch.relu(self.grouped(x)))))
        return self.fc(torch.flatten(torch.relu(self.down(x)), 1))


def _plan(layers: list[LayerSpec], scheme: Scheme, rate: float,
          filter_type: FilterType = FilterType.KEEP) -> PruningPlan:
    """The requested action wherever the search space allows it, else the first allowed one."""
    space = SearchSpace(prune_depthwise=True)
    decided: list[tuple[LayerSpec, LayerAction]] = []
    for spec in layers:
        schemes = space.allowed_schemes(spec, decided)
        rates = space.allowed_rates(spec, decided)
        blocks = space.allowed_block_sizes(spec)
        fts = space.allowed_filter_types(spec)
        action = LayerAction(scheme if scheme in schemes else schemes[0],
                             rate if rate in rates else rates[0],
                             (4, 4) if (4, 4) in blocks else blocks[-1],
                             filter_type if filter_type in fts else FilterType.KEEP)
        if scheme is Scheme.FILTER and action.scheme is Scheme.FILTER:
            action = LayerAction(Scheme.FILTER, rates[0] if len(rates) == 1 else rate)
        decided.append((spec, space.canonical(spec, action)))
    return PruningPlan(tuple(a for _, a in decided), tuple(s.name for s in layers), layers_fingerprint(layers))


@pytest.fixture(params=["tiny", "grouped"])
def setup(request, tiny_net, example_input):
    torch.manual_seed(0)
    model = tiny_net if request.param == "tiny" else GroupedNet().eval()
    x = example_input if request.param == "tiny" else example_input[:, :, :8, :8]
    return model, x, extract_layers(model, x)


def _check_pruned(pruned: PrunedModel, model: nn.Module, x: torch.Tensor) -> None:
    for name, mask in pruned.masks.items():
        weight = pruned.model.get_submodule(name).weight
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert (weight[~mask] == 0).all()
    with torch.no_grad():
        out = pruned.model(x)
    assert out.shape == model(x).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("scheme", [Scheme.UNSTRUCTURED, Scheme.FILTER, Scheme.PATTERN,
                                    Scheme.BLOCK_PUNCHED, Scheme.BLOCK_BASED])
@pytest.mark.parametrize("rate", [2.0, 5.0, 10.0])
def test_apply_plan_masks_and_forward(setup, scheme, rate):
    model, x, layers = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(layers, scheme, rate)
    pruned = apply_plan(model, plan, layers)
    _check_pruned(pruned, model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "original untouched"
    assert pruned.actions == tuple(SearchSpace().canonical(s, a) for s, a in zip(layers, plan, strict=True))
    pruned_names = {s.name for s, a in zip(layers, pruned.actions, strict=True) if not a.is_dense}
    assert set(pruned.masks) == pruned_names
    assert pruned.rate > 1.0 and 0.0 < pruned.sparsity < 1.0


@pytest.mark.parametrize("rate", NPAS_RATES)
def test_apply_plan_per_layer_rates_are_met(setup, rate):
    model, _, layers = setup
    pruned = apply_plan(model, _plan(layers, Scheme.UNSTRUCTURED, rate), layers)
    for name, mask in pruned.masks.items():
        assert abs(int(mask.sum()) - mask.numel() / rate) <= 0.5 + 1e-9 or int(mask.sum()) == 1, name


def test_replay_is_deterministic(setup):
    model, _, layers = setup
    plan = PruningPlan.from_json(_plan(layers, Scheme.PATTERN, 3.0).to_json())
    first, second = apply_plan(model, plan, layers), apply_plan(model, plan, layers)
    assert first.masks.keys() == second.masks.keys()
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert torch.equal(first.pattern_set, model_pattern_set(model, layers))


def test_given_pattern_set_is_used(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    patterns = DEFAULT_PATTERNS[10:12]
    pruned = apply_plan(tiny_net, _plan(layers, Scheme.PATTERN, 3.0), layers, pattern_set=patterns)
    kernels = pruned.masks["block1.conv1"].reshape(-1, 3, 3)
    assert all(any(torch.equal(k, p) for p in patterns) for k in kernels if k.any())


def test_coupled_layers_keep_the_same_filters(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    group = [s.name for s in layers if s.coupled_group is not None]
    assert len(group) >= 2
    pruned = apply_plan(tiny_net, _plan(layers, Scheme.FILTER, 2.0), layers)
    kept = [pruned.masks[name].flatten(1).all(dim=1) for name in group]
    assert all(torch.equal(kept[0], k) for k in kept[1:])
    scores = sum(tiny_net.get_submodule(n).weight.flatten(1).norm(dim=1) for n in group)
    assert scores[kept[0]].min() >= scores[~kept[0]].max()


@pytest.mark.parametrize("filter_type", [FilterType.CONV1X1, FilterType.DW_SEPARABLE, FilterType.SKIP])
def test_filter_types_replace_modules_and_key_masks(tiny_net, example_input, filter_type):
    layers = extract_layers(tiny_net, example_input)
    plan = _plan(layers, Scheme.UNSTRUCTURED, 3.0, filter_type)
    pruned = apply_plan(tiny_net, plan, layers)
    _check_pruned(pruned, tiny_net, example_input)
    new = pruned.model.get_submodule("block1.conv1")
    if filter_type is FilterType.CONV1X1:
        assert new.kernel_size == (1, 1) and "block1.conv1" in pruned.masks
    elif filter_type is FilterType.DW_SEPARABLE:
        assert isinstance(new, nn.Sequential) and "block1.conv1.1" in pruned.masks
        assert "block1.conv1.0" not in pruned.masks and new[0].weight.ne(0).all()
    else:
        assert isinstance(new, nn.Identity) and not any(k.startswith("block1.conv1") for k in pruned.masks)


def test_plan_for_another_model_raises(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    other = extract_layers(GroupedNet(), example_input[:, :, :8, :8])
    with pytest.raises(InvalidPlan, match="another model"):
        apply_plan(tiny_net, PruningPlan.dense([s.name for s in other], layers_fingerprint(other)), layers)
    renamed = PruningPlan.dense([s.name for s in layers[:-1]] + ["head"])
    with pytest.raises(InvalidPlan, match="another model.*'head'"):
        apply_plan(tiny_net, renamed, layers)


def test_layers_of_another_model_raise(tiny_net, example_input):
    other = GroupedNet()
    layers = extract_layers(other, example_input[:, :, :8, :8])
    with pytest.raises(InvalidPlan, match="layers do not describe"):
        apply_plan(tiny_net, PruningPlan.dense([s.name for s in layers]), layers)


def test_action_that_does_not_fit_names_the_layer(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    actions = [LayerAction(Scheme.PATTERN, 3.0) if s.name == "conv5" else LayerAction() for s in layers]
    plan = PruningPlan(tuple(actions), tuple(s.name for s in layers))
    with pytest.raises(InvalidAction, match="'conv5'.*3x3"):
        apply_plan(tiny_net, plan, layers)


def test_enforce_masks_rezeroes_after_update(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    pruned = apply_plan(tiny_net, _plan(layers, Scheme.BLOCK_PUNCHED, 5.0), layers)
    with torch.no_grad():
        for p in pruned.model.parameters():
            p.add_(1.0)
    enforce_masks(pruned.model, pruned.masks)
    for name, mask in pruned.masks.items():
        weight = pruned.model.get_submodule(name).weight
        assert (weight[~mask] == 0).all() and (weight[mask] != 0).any()
    with pytest.raises(InvalidPlan, match="no such module"):
        enforce_masks(pruned.model, {"nope": torch.ones(1, dtype=torch.bool)})


def test_rate_helpers():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([True, True, False, False])}
    assert achieved_rate(masks) == pytest.approx(8 / 3) and mask_sparsity(masks) == pytest.approx(5 / 8)
    assert achieved_rate({}) == 1.0 and mask_sparsity({}) == 0.0


def test_dense_plan_gives_no_masks(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    pruned = apply_plan(tiny_net, PruningPlan.dense([s.name for s in layers], layers_fingerprint(layers)), layers)
    assert pruned.masks == {} and pruned.pattern_set is None
    with torch.no_grad():
        assert torch.allclose(pruned.model(example_input), tiny_net(example_input))
