import json

import pytest

from pasta_rag import HeadSet, HeadSetError
from pasta_rag.heads import PURPOSES, as_head_set, shipped_head_set


def test_reference_format_round_trip(tmp_path):
    heads = HeadSet.from_json({"3": [1, 0], "7": [2]})
    assert heads.pairs() == [(3, 0), (3, 1), (7, 2)]
    path = tmp_path / "heads.json"
    heads.save(path)
    assert json.loads(path.read_text()) == {"3": [0, 1], "7": [2]}
    assert HeadSet.load(path) == heads


def test_list_of_layers_means_all_their_heads():
    heads = HeadSet.from_json([1, 2]).resolve(num_layers=4, num_heads=3)
    assert heads.pairs() == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert len(heads) == 6


def test_wrapped_form_keeps_metadata():
    heads = HeadSet.from_json({"heads": {"0": [1]}, "metadata": {"alpha": 0.01}})
    assert heads.metadata == {"alpha": 0.01}
    assert heads.to_json() == {"heads": {"0": [1]}, "metadata": {"alpha": 0.01}}


@pytest.mark.parametrize(
    ("data", "message"),
    [({"9": [0]}, "layer 9, but the model has layers 0..3"), ({"1": [5]}, r"head\(s\) \[5\] of layer 1"), ([4], "layer 4")],
)
def test_out_of_range_is_a_clear_error(data, message):
    with pytest.raises(HeadSetError, match=message):
        HeadSet.from_json(data).resolve(num_layers=4, num_heads=3)


@pytest.mark.parametrize("data", ["layers", {"x": [1]}, {"1": "2"}, ["1"]])
def test_malformed_is_a_clear_error(data):
    with pytest.raises(HeadSetError):
        HeadSet.from_json(data)


def test_files_that_are_missing_or_broken(tmp_path):
    with pytest.raises(HeadSetError, match="does not exist"):
        as_head_set(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HeadSetError, match="not valid JSON"):
        as_head_set(tmp_path / "bad.json")


@pytest.mark.parametrize(("name", "layers", "heads"), [("smollm2-135m-instruct", 30, 9), ("gemma3-270m", 18, 4)])
def test_shipped_head_sets_fit_their_models(name, layers, heads):
    for purpose in PURPOSES:
        shipped = shipped_head_set(name, purpose)
        assert shipped is not None and "method" in shipped.metadata, purpose
        assert len(shipped.resolve(layers, heads)) > 0
        # stated, never inherited: a set without it would take the model's (its context set's) choice
        assert isinstance(shipped.metadata.get("steer_generated"), bool), purpose
        generated_alpha = shipped.metadata["generated_alpha"]  # likewise: null means the set's own alpha
        assert generated_alpha is None or 0 < generated_alpha < shipped.metadata["alpha"], purpose
    assert shipped_head_set(name) == shipped_head_set(name, "context")
    assert shipped_head_set(name, "context") != shipped_head_set(name, "instructions")
    assert shipped_head_set("no-such-model") is None
    with pytest.raises(HeadSetError, match="purpose 'chat'"):
        shipped_head_set(name, "chat")
