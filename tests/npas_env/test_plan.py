from __future__ import annotations

import pytest

from npas_env import FilterType, InvalidAction, InvalidPlan, LayerAction, PruningPlan, Scheme


def test_layer_action_validates():
    with pytest.raises(InvalidAction, match=">= 1"):
        LayerAction(Scheme.UNSTRUCTURED, 0.5)
    with pytest.raises(InvalidAction, match=">= 1"):
        LayerAction(Scheme.UNSTRUCTURED, float("nan"))
    with pytest.raises(InvalidAction, match="block_size"):
        LayerAction(Scheme.BLOCK_PUNCHED, 2.0)
    with pytest.raises(InvalidAction, match="valid schemes"):
        LayerAction("nope", 2.0)  # type: ignore[arg-type]
    assert LayerAction(Scheme.FILTER, 1.0).is_dense


def test_plan_json_round_trip(tmp_path):
    plan = PruningPlan((LayerAction(Scheme.BLOCK_PUNCHED, 4.0, (8, 16)),
                        LayerAction(Scheme.PATTERN, 5.0, filter_type=FilterType.KEEP),
                        LayerAction(filter_type=FilterType.SKIP)), ("a", "b", "c"), "abc123")
    path = tmp_path / "plan.json"
    plan.save(path)
    again = PruningPlan.load(path)
    assert again == plan and again.key() == plan.key()


@pytest.mark.parametrize("text, match", [
    ("not json", "not valid JSON"),
    ('{"format": "other"}', "not an npas plan"),
    ('{"format": "npas-plan/1", "layers": 3}', "must be a list"),
    ('{"format": "npas-plan/1", "layers": [{"rate": 2}]}', "needs a 'name'"),
    ('{"format": "npas-plan/1", "layers": [{"name": "a", "rate": 0.1}]}', "layer 'a'"),
    ('{"format": "npas-plan/1", "layers": [{"name": "a", "colour": 1}]}', "unknown keys"),
])
def test_bad_plan_files_are_clear(text, match):
    with pytest.raises(InvalidPlan, match=match):
        PruningPlan.from_json(text)


def test_unreadable_plan_file(tmp_path):
    with pytest.raises(InvalidPlan, match="cannot read"):
        PruningPlan.load(tmp_path / "missing.json")


def test_action_text_names_whole_matrix_blocks() -> None:
    """Block (0, 0) means one block per weight matrix (structured), not a 0x0 block."""
    from npas_env.plan import LayerAction, Scheme

    assert str(LayerAction(Scheme.BLOCK_PUNCHED, 2.5, (0, 0))) == "block_punched 2.5x whole-matrix blocks"
    assert str(LayerAction(Scheme.BLOCK_BASED, 3.0, (8, 16))) == "block_based 3x 8x16"
