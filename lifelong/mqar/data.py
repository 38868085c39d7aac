"""The MQAR generator (multi-query associative recall, Arora et al. 2023, "Zoology").

One sequence of length ``seq_len`` (T) with P = ``num_pairs`` pairs::

    k_1 v_1 k_2 v_2 ... k_P v_P | x x k_a x x x k_b x ...        (x: filler tokens)
    \\_____ context, 2P _____/   \\__ query region, T - 2P __/

- keys are drawn without replacement from ``[1, V/2)``, values without replacement from
  ``[V/2, V)`` (V = ``vocab_size``), so the pairs of a sequence are unique;
- the query region has S = (T - 2P) // 2 slots at its even offsets; slot s (0-based) has weight
  (s + 1) ** (power_a - 1) (a power law: ``power_a`` = 1 is uniform, small ``power_a`` favours
  early slots, Zoology's default 0.01). The P slots are drawn without replacement from these
  weights, in draw order (Gumbel top-P, the same law as P successive draws); pair i is queried at
  the i-th drawn slot, so every key is queried exactly once, after its pair;
- the target at a query position is the value of the queried key (the model predicts it from the
  query token); every other position has target ``IGNORE`` (-100) and counts in no loss or accuracy;
- the remaining positions of the query region hold filler tokens drawn uniformly from the vocabulary
  minus the sequence's own keys (so a key appears exactly twice: in its pair and in its query).

A train and a test set are drawn from separate streams of one seed and are disjoint: a test
sequence identical to a train sequence is dropped and redrawn (:func:`make_splits`). Zoology's
training mixes pair counts at one sequence length; :func:`make_mixed_splits` draws an equal mixture
and one test set per pair count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the target of positions that are not queries (ignored by the loss, as torch's cross_entropy does)
IGNORE = -100
#: rows generated at a time (bounds the memory of the sampling matrices)
_BLOCK = 4096


class MQARSettingError(ValueError):
    """MQAR settings that cannot make a sequence; the message is one line naming the fix."""


@dataclass(frozen=True)
class MQARSpec:
    """The settings of one MQAR task."""

    vocab_size: int
    seq_len: int
    num_pairs: int
    power_a: float = 0.01

    @property
    def key_range(self) -> tuple[int, int]:
        """Keys are in ``[low, high)``."""
        return 1, self.vocab_size // 2

    @property
    def value_range(self) -> tuple[int, int]:
        """Values are in ``[low, high)``."""
        return self.vocab_size // 2, self.vocab_size

    @property
    def context_len(self) -> int:
        return 2 * self.num_pairs

    @property
    def num_slots(self) -> int:
        """Query slots in the query region (its even offsets)."""
        return (self.seq_len - self.context_len) // 2

    def slot_probs(self) -> np.ndarray:
        """The power-law law of one query slot: p(s) proportional to (s + 1) ** (power_a - 1)."""
        w = np.arange(1, self.num_slots + 1, dtype=np.float64) ** (self.power_a - 1.0)
        return w / w.sum()

    def check(self, prefix: str = "") -> None:
        """Raise :class:`MQARSettingError` (one line) unless the settings make a valid sequence.

        ``prefix`` names the keys as the user sets them (e.g. ``task.``)."""
        v, t, p, a = self.vocab_size, self.seq_len, self.num_pairs, self.power_a
        for key, value in (("vocab_size", v), ("seq_len", t), ("num_pairs", p)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MQARSettingError(f"{prefix}{key}={value!r} must be an integer >= 1")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not np.isfinite(a) or a <= 0:
            raise MQARSettingError(f"{prefix}power_a={a!r} must be a number > 0 (1 = uniform gaps; Zoology uses 0.01)")
        keys = self.key_range[1] - self.key_range[0]
        values = self.value_range[1] - self.value_range[0]
        if p > min(keys, values):
            need = 2 * p + 2 if p > keys else 2 * p
            raise MQARSettingError(
                f"{prefix}num_pairs={p} is too many for {prefix}vocab_size={v}: keys come from [1, {v // 2}) "
                f"({keys} keys) and values from [{v // 2}, {v}) ({values} values), unique within a sequence; "
                f"set {prefix}vocab_size >= {need} or lower {prefix}num_pairs")
        if 4 * p > t:
            raise MQARSettingError(
                f"{prefix}num_pairs={p} is too many for {prefix}seq_len={t}: {p} pairs take {2 * p} tokens and "
                f"their {p} queries need {p} slots of 2 tokens after them (seq_len >= 4 x num_pairs = {4 * p}); "
                f"set {prefix}seq_len >= {4 * p} or {prefix}num_pairs <= {t // 4}")


@dataclass(frozen=True)
class MQARData:
    """``n`` sequences: inputs ``[n, T]`` int64, targets ``[n, T]`` int64 (``IGNORE`` off the queries),
    query_pos ``[n, P]`` (the position of pair i's query) and key_pos ``[n, P]`` (of pair i's key)."""

    inputs: np.ndarray
    targets: np.ndarray
    query_pos: np.ndarray
    key_pos: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, rows: np.ndarray) -> "MQARData":
        return MQARData(self.inputs[rows], self.targets[rows], self.query_pos[rows], self.key_pos[rows])

    @staticmethod
    def concat(parts: list["MQARData"]) -> "MQARData":
        return MQARData(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("inputs", "targets", "query_pos", "key_pos")))


def _distinct(rng: np.random.Generator, n: int, low: int, high: int, k: int) -> np.ndarray:
    """``[n, k]`` int64: k distinct integers of ``[low, high)`` per row, in random order."""
    return np.argsort(rng.random((n, high - low)), axis=1)[:, :k].astype(np.int64) + low


def _weighted_distinct(rng: np.random.Generator, n: int, probs: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]``: k distinct indices per row drawn without replacement from ``probs``, in draw order
    (Gumbel top-k: the i-th column has the law of the i-th of k successive draws)."""
    with np.errstate(divide="ignore"):
        scores = np.log(probs)[None, :] + rng.gumbel(size=(n, probs.size))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def _generate_block(spec: MQARSpec, n: int, rng: np.random.Generator) -> MQARData:
    v, t, p = spec.vocab_size, spec.seq_len, spec.num_pairs
    keys = _distinct(rng, n, *spec.key_range, p)
    values = _distinct(rng, n, *spec.value_range, p)
    slots = _weighted_distinct(rng, n, spec.slot_probs(), p)
    rows = np.arange(n)[:, None]

    inputs = rng.integers(0, v, size=(n, t), dtype=np.int64)  # filler first, then the structure over it
    # filler never repeats one of the sequence's keys: redraw those until none is left
    is_key = np.zeros((n, v), dtype=bool)
    is_key[rows, keys] = True
    clash = is_key[rows, inputs]
    while clash.any():
        inputs[clash] = rng.integers(0, v, size=int(clash.sum()), dtype=np.int64)
        clash = is_key[rows, inputs]

    key_pos = np.broadcast_to(2 * np.arange(p, dtype=np.int64), (n, p)).copy()
    inputs[rows, key_pos] = keys
    inputs[rows, key_pos + 1] = values
    query_pos = spec.context_len + 2 * slots
    inputs[rows, query_pos] = keys
    targets = np.full((n, t), IGNORE, dtype=np.int64)
    targets[rows, query_pos] = values
    return MQARData(inputs, targets, query_pos, key_pos)


def generate(spec: MQARSpec, num_examples: int, rng: np.random.Generator) -> MQARData:
    """``num_examples`` sequences drawn with ``rng``."""
    spec.check()
    parts = [_generate_block(spec, min(_BLOCK, num_examples - start), rng)
             for start in range(0, num_examples, _BLOCK)]
    if not parts:
        return _generate_block(spec, 0, rng)
    return parts[0] if len(parts) == 1 else MQARData.concat(parts)


def _row_keys(inputs: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(inputs)]


def make_splits(spec: MQARSpec, num_train: int, num_test: int, seed: int | np.random.SeedSequence,
                max_rounds: int = 50) -> tuple[MQARData, MQARData]:
    """Train and test sets for ``seed``, disjoint: no test sequence equals a train sequence (nor
    another test sequence). Raises :class:`MQARSettingError` if the task has too few distinct
    sequences to fill the test set."""
    spec.check()
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    train_rng, test_rng = (np.random.default_rng(s) for s in root.spawn(2))
    train = generate(spec, num_train, train_rng)
    seen = set(_row_keys(train.inputs))
    kept: list[MQARData] = []
    have = 0
    for _ in range(max_rounds):
        if have >= num_test:
            break
        block = generate(spec, num_test - have, test_rng)
        fresh = []
        for i, key in enumerate(_row_keys(block.inputs)):
            if key not in seen:
                seen.add(key)
                fresh.append(i)
        kept.append(block.subset(np.asarray(fresh, dtype=np.int64)))
        have += len(fresh)
    if have < num_test:
        raise MQARSettingError(
            f"could not draw {num_test} test sequences distinct from the {num_train} train sequences "
            f"(vocab_size={spec.vocab_size}, seq_len={spec.seq_len}, num_pairs={spec.num_pairs} make too few "
            "distinct sequences): raise vocab_size or seq_len, or lower num_train / num_test")
    test = MQARData.concat(kept) if len(kept) > 1 else kept[0]
    return train, test


def pad_pairs(data: MQARData, width: int) -> MQARData:
    """``query_pos`` / ``key_pos`` padded to ``width`` columns with position 0 (a key, whose target is
    ``IGNORE``, so a padded query counts in no loss or accuracy; its distance is 0)."""
    extra = width - data.query_pos.shape[1]
    if extra <= 0:
        return data
    pad = np.zeros((len(data), extra), dtype=np.int64)
    return MQARData(data.inputs, data.targets, np.concatenate([data.query_pos, pad], 1),
                    np.concatenate([data.key_pos, pad], 1))


def make_mixed_splits(specs: list[MQARSpec], num_train: int, num_test: int,
                      seed: int) -> tuple[MQARData, dict[int, MQARData]]:
    """An equal mixture of tasks that differ in their number of pairs (the same sequence length), as
    Zoology trains: one train set (``num_train`` sequences, shares as equal as can be, rows in
    random order) and one test set of ``num_test`` sequences per number of pairs. Each task draws
    from its own seed stream (``seed``, P); a single task is exactly :func:`make_splits` (``seed``).
    No test sequence equals a train sequence of any task."""
    if len(specs) == 1:
        train, test = make_splits(specs[0], num_train, num_test, seed)
        return train, {specs[0].num_pairs: test}
    width = max(s.num_pairs for s in specs)
    trains, tests = [], {}
    for i, spec in enumerate(specs):
        share = num_train // len(specs) + (1 if i < num_train % len(specs) else 0)
        train, test = make_splits(spec, share, num_test, np.random.SeedSequence([seed, spec.num_pairs]))
        trains.append(pad_pairs(train, width))
        tests[spec.num_pairs] = test
    train = MQARData.concat(trains)
    seen = set(_row_keys(train.inputs))
    for p, test in tests.items():  # across tasks (within one, make_splits already made them disjoint)
        keep = np.asarray([k not in seen for k in _row_keys(test.inputs)], dtype=bool)
        tests[p] = test if keep.all() else test.subset(np.flatnonzero(keep))
    order = np.random.default_rng(np.random.SeedSequence([seed, 0])).permutation(len(train))
    return train.subset(order), tests
