"""Dev answers of several candidates in one batch: each row answers what its candidate answers alone."""

from __future__ import annotations

import pytest
import torch
from test_profiling import CONFLICTS, INSTRUCTIONS, examples, tiny_engine
from tiny import ARCHITECTURES, char_tokenizer, tiny_model

from pasta_rag import HeadSet, PastaModel
from pasta_rag.research.evaluation import prompt_for
from pasta_rag.research.profiling import Checkpoint, dev_answers
from pasta_rag.research.profiling import selection as selection_module
from pasta_rag.research.profiling.dev_answers import PrefixCache, Row, RowSteering, Steered, answer_rows, batches
from pasta_rag.research.profiling.selection import Candidate, DevScorer
from pasta_rag.settings import SamplingSettings
from pasta_rag.steering import SteeringState
from pasta_rag.tokens import EncodedPrompt

STEERED = [
    Steered(HeadSet.from_pairs([(0, 0), (1, 1)]), 0.01),
    Steered(HeadSet.from_pairs([(1, 0), (2, 3)]), 0.1, steer_generated=True),
    Steered(HeadSet.from_pairs([(0, 2), (2, 0), (2, 1)]), 0.03, steer_generated=True, generated_alpha=0.03**2),
]


def alone(model: PastaModel, steered: Steered, example) -> str:
    """The answer of ``model`` steered as ``steered`` says, to one example, through the engine."""
    own = PastaModel(model.model, model.tokenizer, heads=steered.heads, alpha=steered.alpha,
                     steer_generated=steered.steer_generated, generated_alpha=steered.generated_alpha, name=model.name)
    prompted = prompt_for(example, "pasta")
    return own.generate_batch([prompted.messages], steering=prompted.steering, max_new_tokens=12)[0].text


def rows_for(model: PastaModel, dev, steered=STEERED) -> tuple[list[Row], list[tuple[Steered, object]]]:
    scorer = DevScorer(model, {"dev": dev}, None, False)  # only its prompt encoding is used
    candidate = Candidate(1, 0.01, [(0, 0)], {})
    rows, asked = [], []
    for i, example in enumerate(dev):
        encoded, _ = scorer.prompt(candidate, "dev", i)
        for s in steered:
            rows.append(Row(encoded, s, SamplingSettings(max_new_tokens=12)))
            asked.append((s, example))
    return rows, asked


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_row_answers_what_its_candidate_answers_alone(architecture, monkeypatch):
    model = PastaModel(tiny_model(architecture, seed=3), char_tokenizer(), name=f"tiny-{architecture}")  # seed 3:
    dev = examples(CONFLICTS + INSTRUCTIONS)  # the tiny Gemma's answers differ between candidates
    rows, asked = rows_for(model, dev)
    cached: list[int] = []
    generate = model.model.generate

    def recording(*args, cache=None, **kwargs):
        cached.append(0 if cache is None else cache.get_seq_length())
        return generate(*args, cache=cache, **kwargs)

    monkeypatch.setattr(model.model, "generate", recording)
    for row_tokens in (1, 10_000):  # one row per batch, every row in one batch
        monkeypatch.setattr(dev_answers, "ROW_TOKENS", row_tokens)
        together = answer_rows(model, rows)
        assert together == [alone(model, s, example) for s, example in asked]
    assert len(set(together)) > 1  # the candidates answer differently: the equality is not vacuous
    # the prompt before the emphasis comes from the cache, except where a sliding window could not hold it
    assert (max(cached) > 5) == (not architecture.startswith("gemma3"))  # its window: 5 tokens


def test_an_example_shared_by_candidates_computes_its_prefix_once(monkeypatch):
    model = tiny_engine("llama")
    rows, _ = rows_for(model, examples(CONFLICTS))
    computed: list[tuple[int, ...]] = []
    unsteered = dev_answers._unsteered_prefixes

    def recording(model, prefixes):
        computed.extend(prefixes)
        return unsteered(model, prefixes)

    monkeypatch.setattr(dev_answers, "_unsteered_prefixes", recording)
    cache = PrefixCache()
    answer_rows(model, rows, prefixes=cache)
    # three examples x three candidates, one prefix: every conflict prompt starts "user: Context: " before its emphasis
    assert computed == [tuple(rows[0].prompt.input_ids[: rows[0].shared])] and rows[0].shared > 5
    answer_rows(model, rows, prefixes=cache)
    assert len(computed) == 1  # kept: asked again, nothing is computed again


def test_batches_pack_rows_by_the_rest_of_their_prompt():
    def row(length: int, first: int, max_new_tokens: int = 12) -> Row:
        prompt = EncodedPrompt(list(range(length)), [i >= first for i in range(length)])
        return Row(prompt, STEERED[0], SamplingSettings(max_new_tokens=max_new_tokens))

    rows = [row(50, 40), row(30, 5), row(50, 40), row(12, 2), row(50, 40, max_new_tokens=24), row(9, 9)]
    assert [r.shared for r in rows] == [40, 5, 40, 2, 40, 8]  # no emphasis: all but the last token
    assert batches(rows, row_tokens=40, max_rows=8) == [[5, 3, 0, 2], [4], [1]]  # rests 1, 10, 10, 10 | 10 (24) | 25
    assert batches(rows, row_tokens=40, max_rows=2) == [[5, 3], [0, 2], [4], [1]]
    assert batches(rows, row_tokens=1, max_rows=8) == [[5], [3], [0], [2], [4], [1]]


def test_row_steering_biases_each_row_as_its_own_state_would():
    emphasized = torch.tensor([[False, True, True, False], [True, False, False, False], [False] * 4])
    state = RowSteering(emphasized, HeadSet.from_pairs([(0, 0)]), 0.5, 4, rows=STEERED)
    state.record_kv_offset(6, 0)
    bias = state.key_bias(6, 3, torch.device("cpu"), torch.float32)  # 4 prompt keys, 2 generated
    for i, s in enumerate(STEERED):
        own = SteeringState(emphasized[i:i + 1], s.heads, s.alpha, 4, s.steer_generated, s.generated_alpha)
        own.record_kv_offset(6, 0)
        torch.testing.assert_close(bias[i:i + 1], own.key_bias(6, 1, torch.device("cpu"), torch.float32))
    switch = state.head_switch(2, torch.device("cpu"), torch.float32)
    assert switch.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]]
    assert state.head_switch(3, torch.device("cpu"), torch.float32) is None  # no row steers layer 3


def test_the_scorer_reports_each_answer_once_and_a_new_run_reads_them_back(tmp_path, monkeypatch):
    model = tiny_engine("llama")
    dev = {"dev": examples(CONFLICTS * 3)}  # 9 examples
    pool = [Candidate(1, 0.01, [(0, 0), (1, 1)], {}), Candidate(1, 0.1, [(1, 0)], {})]
    path = tmp_path / "progress.json"
    scorer = DevScorer(model, dev, Checkpoint.open(path, model.name, 0.01), False)
    advanced: list[int] = []
    first = scorer(pool, "dev", 4, advanced.append)
    more = scorer(pool, "dev", 9, advanced.append)
    assert sum(advanced) == 2 * 9 and scorer(pool, "dev", 9, advanced.append) == more  # asked again: no news
    assert sum(advanced) == 2 * 9 and [t.n for t in first] == [4, 4]
    monkeypatch.setattr(selection_module, "answer_rows", lambda *a, **k: pytest.fail("answered again"))
    resumed: list[int] = []
    again = DevScorer(model, dev, Checkpoint.open(path, model.name, 0.01), False)(pool, "dev", 9, resumed.append)
    assert again == more and sum(resumed) == 2 * 9  # a resumed run's bar counts what the file holds

