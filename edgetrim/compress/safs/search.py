"""SAFS stage 1: discrete search for one activation operator per site.

The default is late-acceptance hill climbing (LAHC, Burke & Bykov 2017) as the SAFS paper uses it:
history length 3, two changes per move (swap two genes, then replace one gene with a random operator),
stop once ``step > min_steps`` and the idle run exceeds ``idle_fraction * step``. Random search, a
small genetic algorithm and simulated annealing are the baselines of the SAFS appendix.

Energy is minimised. The caller supplies it (SAFS: ``1 - val_acc`` plus a small loss tie-break after a
short masked fine-tune). Energies are memoised by chromosome, and the memo is written atomically to a
state JSON after every evaluation. Resuming replays the seeded search from the start: every
chromosome already in the memo costs nothing, so the replay reaches the interruption point exactly and
then continues. An optional ``feasible`` predicate (a latency budget) rejects candidates before any
training.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrim.compress.safs.activations import OPS, SEARCH_SPACE
from edgetrim.errors import EdgetrimError
from edgetrim.io_utils import atomic_write_json

logger = logging.getLogger(__name__)

Chromosome = tuple[str, ...]
INFEASIBLE = math.inf


class SearchAlgorithm(enum.StrEnum):
    LAHC = "lahc"
    RANDOM = "random"
    GENETIC = "genetic"
    ANNEALING = "annealing"


@dataclass(frozen=True)
class SearchConfig:
    """Stage-1 search settings (defaults: the SAFS paper / reference code)."""

    algorithm: SearchAlgorithm = SearchAlgorithm.LAHC
    max_evals: int = 20  # distinct chromosomes trained (the paper's 20 search iterations)
    history_length: int = 3
    min_steps: int = 20
    idle_fraction: float = 0.02
    space: tuple[str, ...] = SEARCH_SPACE
    seed: int = 0
    init: str = "random"  # "random" (reference code) or an operator name for every gene
    ga_population: int = 5
    ga_crossover: float = 0.8
    ga_mutation: float = 0.3
    # Annealing temperatures on the energy scale of 1 - accuracy (the reference's 1e4..10 were for 1/acc).
    sa_t_max: float = 0.05
    sa_t_min: float = 0.001
    max_infeasible_tries: int = 200

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", SearchAlgorithm(self.algorithm))
        object.__setattr__(self, "space", tuple(self.space))
        if self.max_evals < 1:
            raise ValueError(f"max_evals must be >= 1, got {self.max_evals}")
        if self.history_length < 1:
            raise ValueError(f"history_length must be >= 1, got {self.history_length}")
        if not self.space:
            raise ValueError("the operator space is empty")
        unknown = [op for op in self.space if op not in OPS]
        if unknown:
            raise ValueError(f"unknown operators in the search space: {unknown}")
        if self.init != "random" and self.init not in OPS:
            raise ValueError(f"init must be 'random' or an operator name, got {self.init!r}")
        if not 0 < self.sa_t_min < self.sa_t_max:
            raise ValueError(f"need 0 < sa_t_min < sa_t_max, got {self.sa_t_min}, {self.sa_t_max}")
        if self.ga_population < 2:
            raise ValueError(f"ga_population must be >= 2, got {self.ga_population}")


@dataclass
class SearchResult:
    best: Chromosome
    best_energy: float
    evaluations: int  # distinct chromosomes trained
    steps: int
    log: list[dict[str, Any]] = field(default_factory=list)  # one row per step: chromosome, energy, accepted


# ------------------------------------------------------------------------------------- pure pieces
def lahc_accept(candidate: float, history_value: float, previous: float) -> bool:
    """LAHC acceptance: better than the value ``history_length`` steps ago, or no worse than the last."""
    return candidate < history_value or candidate <= previous


def mutate(chromosome: Sequence[str], space: Sequence[str], rng: random.Random) -> Chromosome:
    """The SAFS move: swap two random genes, then set one random gene to a random operator.

    Keeps the length; every new gene comes from ``space``; at most three positions change.
    """
    genes = list(chromosome)
    if len(genes) >= 2:
        i, j = rng.sample(range(len(genes)), 2)
        genes[i], genes[j] = genes[j], genes[i]
    k = rng.randrange(len(genes))
    genes[k] = rng.choice(list(space))
    return tuple(genes)


def random_chromosome(n: int, space: Sequence[str], rng: random.Random) -> Chromosome:
    return tuple(rng.choice(list(space)) for _ in range(n))


def crossover(a: Sequence[str], b: Sequence[str], rng: random.Random) -> Chromosome:
    """One-point crossover (the head of ``a``, the tail of ``b``)."""
    if len(a) < 2:
        return tuple(a)
    cut = rng.randrange(1, len(a))
    return tuple(a[:cut]) + tuple(b[cut:])


def chromosome_key(ch: Sequence[str]) -> str:
    return "|".join(ch)


# ---------------------------------------------------------------------------------- memoised energy
class _Evaluator:
    """Memoised energy with an evaluation budget and an atomic state file."""

    def __init__(
        self,
        energy: Callable[[Chromosome], float],
        cfg: SearchConfig,
        n_sites: int,
        feasible: Callable[[Chromosome], bool] | None,
        state_path: Path | None,
    ) -> None:
        self.energy = energy
        self.cfg = cfg
        self.n_sites = n_sites
        self.feasible = feasible
        self.state_path = state_path
        self.memo: dict[str, float] = {}
        self.seen: list[str] = []  # distinct chromosomes requested in this (replayed) search, in order
        self.log: list[dict[str, Any]] = []
        if state_path is not None and state_path.is_file():
            self._load(state_path)

    def _header(self) -> dict[str, Any]:
        return {
            "algorithm": self.cfg.algorithm.value,
            "seed": self.cfg.seed,
            "space": list(self.cfg.space),
            "n_sites": self.n_sites,
            "init": self.cfg.init,
        }

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EdgetrimError(
                f"search state {path} is not valid JSON ({exc.msg}); delete it to start over"
            ) from None
        header = self._header()
        got = {k: state.get(k) for k in header}
        if got != header:
            raise EdgetrimError(
                f"search state {path} was written by a different search ({got}); use another --out or delete it"
            )
        self.memo = {k: float(v) for k, v in state.get("memo", {}).items()}
        logger.info("resuming search from %s with %d memoised evaluations", path, len(self.memo))

    def _save(self) -> None:
        if self.state_path is None:
            return
        state = self._header() | {"memo": self.memo, "evaluations": len(self.seen), "log": self.log}
        atomic_write_json(self.state_path, state)

    @property
    def exhausted(self) -> bool:
        return len(self.seen) >= self.cfg.max_evals

    def __call__(self, ch: Chromosome) -> float:
        if self.feasible is not None and not self.feasible(ch):
            return INFEASIBLE
        key = chromosome_key(ch)
        if key not in self.seen:
            self.seen.append(key)
        if key not in self.memo:
            value = float(self.energy(ch))
            self.memo[key] = value if math.isfinite(value) else INFEASIBLE
            logger.info("eval %d/%d energy=%.4f %s", len(self.seen), self.cfg.max_evals, value, key)
            self._save()
        return self.memo[key]

    def record(self, step: int, ch: Chromosome, e: float, accepted: bool) -> None:
        self.log.append({"step": step, "chromosome": list(ch), "energy": e, "accepted": accepted})


def _initial(cfg: SearchConfig, n: int, rng: random.Random, ev: _Evaluator) -> tuple[Chromosome, float]:
    if cfg.init != "random":
        ch = (cfg.init,) * n
        return ch, ev(ch)
    for _ in range(cfg.max_infeasible_tries):
        ch = random_chromosome(n, cfg.space, rng)
        if ev.feasible is None or ev.feasible(ch):
            return ch, ev(ch)
    fallback = ("relu",) * n
    logger.warning(
        "no random chromosome met the budget in %d tries; starting from all-relu", cfg.max_infeasible_tries
    )
    return fallback, ev(fallback)


# --------------------------------------------------------------------------------------- algorithms
def _lahc(cfg: SearchConfig, n: int, rng: random.Random, ev: _Evaluator) -> SearchResult:
    current, e_cur = _initial(cfg, n, rng, ev)
    best, e_best = current, e_cur
    history = [e_cur] * cfg.history_length
    prev = e_cur
    idle = 0
    step = 0
    infeasible_run = 0
    ev.record(0, current, e_cur, True)
    while not ev.exhausted:
        candidate = mutate(current, cfg.space, rng)
        e = ev(candidate)
        if e == INFEASIBLE:
            infeasible_run += 1
            if infeasible_run > cfg.max_infeasible_tries:
                logger.warning("LAHC: %d infeasible moves in a row; stopping", infeasible_run)
                break
        else:
            infeasible_run = 0
        v = step % cfg.history_length
        accepted = lahc_accept(e, history[v], prev)
        if accepted:
            idle = 0 if e < prev else idle + 1
            current, prev = candidate, e
            if e < e_best:
                best, e_best = candidate, e
        else:
            idle += 1
            e = prev
        if e < history[v]:
            history[v] = e
        step += 1
        ev.record(step, candidate, ev.memo.get(chromosome_key(candidate), INFEASIBLE), accepted)
        if step > cfg.min_steps and idle > cfg.idle_fraction * step:
            break
        if step >= cfg.max_evals * 50:  # only memo hits for a long time: the neighbourhood is exhausted
            break
    return SearchResult(best, e_best, len(ev.seen), step, ev.log)


def _random(cfg: SearchConfig, n: int, rng: random.Random, ev: _Evaluator) -> SearchResult:
    best, e_best = _initial(cfg, n, rng, ev)
    step = 0
    tries = 0
    while not ev.exhausted and tries < cfg.max_evals * cfg.max_infeasible_tries:
        ch = random_chromosome(n, cfg.space, rng)
        tries += 1
        e = ev(ch)
        step += 1
        ev.record(step, ch, e, e < e_best)
        if e < e_best:
            best, e_best = ch, e
    return SearchResult(best, e_best, len(ev.seen), step, ev.log)


def _genetic(cfg: SearchConfig, n: int, rng: random.Random, ev: _Evaluator) -> SearchResult:
    first = _initial(cfg, n, rng, ev)
    pop = [first] + [
        (ch, ev(ch)) for ch in (random_chromosome(n, cfg.space, rng) for _ in range(cfg.ga_population - 1))
    ]
    step = 0
    stale = 0
    while not ev.exhausted and stale < cfg.max_infeasible_tries:
        before = len(ev.seen)
        pop.sort(key=lambda t: t[1])
        children: list[tuple[Chromosome, float]] = [pop[0]]  # elitism: the best survives unchanged
        while len(children) < cfg.ga_population and not ev.exhausted:
            a = min(rng.sample(pop, 2), key=lambda t: t[1])[0]  # binary tournaments
            b = min(rng.sample(pop, 2), key=lambda t: t[1])[0]
            child = crossover(a, b, rng) if rng.random() < cfg.ga_crossover else a
            if rng.random() < cfg.ga_mutation:
                child = mutate(child, cfg.space, rng)
            children.append((child, ev(child)))
            step += 1
            ev.record(step, child, children[-1][1], True)
        pop = children
        stale = stale + 1 if len(ev.seen) == before else 0
    best, e_best = min([*pop, first], key=lambda t: t[1])
    for key, e in ev.memo.items():  # the best ever seen, not only the last generation
        if key in ev.seen and e < e_best:
            best, e_best = tuple(key.split("|")), e
    return SearchResult(best, e_best, len(ev.seen), step, ev.log)


def _annealing(cfg: SearchConfig, n: int, rng: random.Random, ev: _Evaluator) -> SearchResult:
    current, e_cur = _initial(cfg, n, rng, ev)
    best, e_best = current, e_cur
    steps = cfg.max_evals
    step = 0
    tries = 0
    while not ev.exhausted and tries < cfg.max_evals * cfg.max_infeasible_tries:
        frac = min(step / max(steps - 1, 1), 1.0)
        temp = cfg.sa_t_max * (cfg.sa_t_min / cfg.sa_t_max) ** frac  # exponential cooling
        candidate = mutate(current, cfg.space, rng)
        tries += 1
        e = ev(candidate)
        accepted = e != INFEASIBLE and (e <= e_cur or rng.random() < math.exp(-(e - e_cur) / temp))
        if accepted:
            current, e_cur = candidate, e
            if e < e_best:
                best, e_best = candidate, e
        step += 1
        ev.record(step, candidate, e, accepted)
    return SearchResult(best, e_best, len(ev.seen), step, ev.log)


_ALGORITHMS = {
    SearchAlgorithm.LAHC: _lahc,
    SearchAlgorithm.RANDOM: _random,
    SearchAlgorithm.GENETIC: _genetic,
    SearchAlgorithm.ANNEALING: _annealing,
}


def search(
    energy: Callable[[Chromosome], float],
    n_sites: int,
    cfg: SearchConfig,
    *,
    feasible: Callable[[Chromosome], bool] | None = None,
    state_path: str | Path | None = None,
) -> SearchResult:
    """Minimise ``energy`` over chromosomes of ``n_sites`` operators from ``cfg.space``.

    Args:
        energy: chromosome -> energy (lower is better); called at most once per distinct chromosome.
        n_sites: number of activation sites (chromosome length).
        cfg: algorithm and budget.
        feasible: optional predicate (e.g. predicted latency <= budget); infeasible candidates get an
            infinite energy without calling ``energy``.
        state_path: JSON file written atomically after every evaluation; if it exists the search resumes.

    Example:
        >>> res = search(lambda ch: ch.count("relu"), 3, SearchConfig(max_evals=5, space=("relu", "tanh")))
        >>> res.evaluations <= 5
        True
    """
    if n_sites < 1:
        raise EdgetrimError("the model has no activation sites to search over")
    rng = random.Random(cfg.seed)
    ev = _Evaluator(energy, cfg, n_sites, feasible, Path(state_path) if state_path is not None else None)
    result = _ALGORITHMS[cfg.algorithm](cfg, n_sites, rng, ev)
    ev._save()
    return result
