"""Stage-1 search: LAHC acceptance, mutation invariants, memoisation, budgets, resume."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetrim.compress.safs.search import (
    SearchAlgorithm,
    SearchConfig,
    chromosome_key,
    lahc_accept,
    mutate,
    search,
)
from edgetrim.errors import EdgetrimError

SPACE = ("relu", "tanh", "symlog", "swish")


def test_lahc_acceptance_rule() -> None:
    assert lahc_accept(0.5, history_value=0.6, previous=0.4)  # better than the value L steps ago
    assert lahc_accept(0.4, history_value=0.3, previous=0.4)  # no worse than the previous one
    assert not lahc_accept(0.45, history_value=0.3, previous=0.4)  # worse than both
    assert not lahc_accept(0.3, history_value=0.3, previous=0.2)  # ties with history are not enough


@settings(max_examples=200, deadline=None)
@given(
    chromosome=st.lists(st.sampled_from(SPACE), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
)
def test_mutation_invariants(chromosome: list[str], seed: int) -> None:
    out = mutate(chromosome, SPACE, random.Random(seed))
    assert len(out) == len(chromosome)
    assert set(out) <= set(SPACE)
    assert sum(a != b for a, b in zip(out, chromosome, strict=True)) <= 3  # a swap (2) + a replace (1)


def _score(ch: tuple[str, ...], target: tuple[str, ...]) -> float:
    return sum(a != b for a, b in zip(ch, target, strict=True)) / len(target)


def _toy_energy(target: tuple[str, ...]):
    calls: list[tuple[str, ...]] = []

    def energy(ch: tuple[str, ...]) -> float:
        calls.append(ch)
        return _score(ch, target)

    return energy, calls


@pytest.mark.parametrize("algorithm", list(SearchAlgorithm))
def test_every_algorithm_respects_budget_and_memoises(algorithm: SearchAlgorithm) -> None:
    target = ("symlog", "swish", "tanh", "relu")
    energy, calls = _toy_energy(target)
    cfg = SearchConfig(algorithm=algorithm, max_evals=15, min_steps=10, space=SPACE, seed=1)
    res = search(energy, 4, cfg)
    assert len(calls) == len(set(calls)) <= 15  # each chromosome trained at most once
    assert res.evaluations == len(calls)
    assert res.best_energy == min(_score(c, target) for c in calls)


def test_lahc_improves_on_its_start() -> None:
    target = ("symlog",) * 6
    energy, calls = _toy_energy(target)
    res = search(energy, 6, SearchConfig(max_evals=60, min_steps=40, space=SPACE, seed=0))
    assert res.best_energy < _score(calls[0], target)


def test_infeasible_candidates_are_never_trained() -> None:
    energy, calls = _toy_energy(("symlog", "swish", "tanh"))
    res = search(energy, 3, SearchConfig(max_evals=10, space=SPACE), feasible=lambda ch: "symlog" not in ch)
    assert all("symlog" not in c for c in calls)
    assert "symlog" not in res.best


def test_resume_replays_to_the_same_result(tmp_path) -> None:
    target = ("swish", "tanh", "symlog", "relu", "swish")
    cfg = SearchConfig(max_evals=12, min_steps=8, space=SPACE, seed=3)
    full_energy, _ = _toy_energy(target)
    reference = search(full_energy, 5, cfg)

    state = tmp_path / "state.json"
    energy, calls = _toy_energy(target)

    class Interrupted(Exception):
        pass

    def flaky(ch: tuple[str, ...]) -> float:
        if len(calls) >= 5:
            raise Interrupted
        return energy(ch)

    with pytest.raises(Interrupted):
        search(flaky, 5, cfg, state_path=state)
    assert len(json.loads(state.read_text())["memo"]) == 5  # written after every evaluation

    energy2, calls2 = _toy_energy(target)
    resumed = search(energy2, 5, cfg, state_path=state)
    assert resumed.best == reference.best and resumed.best_energy == reference.best_energy
    assert not {chromosome_key(c) for c in calls2} & {chromosome_key(c) for c in calls}  # nothing retrained


def test_resume_refuses_a_different_search(tmp_path) -> None:
    state = tmp_path / "state.json"
    energy, _ = _toy_energy(("relu", "tanh"))
    search(energy, 2, SearchConfig(max_evals=3, space=SPACE, seed=0), state_path=state)
    with pytest.raises(EdgetrimError, match="different search"):
        search(energy, 2, SearchConfig(max_evals=3, space=SPACE, seed=1), state_path=state)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown operators"):
        SearchConfig(space=("relu", "cosine"))
    with pytest.raises(ValueError, match="max_evals"):
        SearchConfig(max_evals=0)
