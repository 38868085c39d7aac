"""A tiny MQAR (2 pairs, T=16) is learned to 100% test accuracy by softmax attention and by Gated
DeltaNet in a CI-sized run (fixed seed, one CPU thread, a few seconds each)."""
from __future__ import annotations

import json

import pytest

from lifelong.mqar.app import compose, run_in_dir

TINY = {
    "task.vocab_size": 16, "task.seq_len": 16, "task.num_pairs": 2, "task.power_a": 0.01,
    "train.steps": 150, "train.batch_size": 64, "train.lr": 0.01, "train.num_train": 6000, "train.num_test": 250,
    "train.eval_every": 0, "progress": False, "threads": 1, "device": "cpu", "seed": 0,
}


@pytest.mark.parametrize("memory,extra", [
    ("softmax", {"model.d_model": 32}),
    # one head of width 64: the delta rule's key space (head_dim) is what stores the pairs
    ("gated_deltanet", {"model.d_model": 64, "memory.num_heads": 1}),
])
def test_a_tiny_mqar_is_learned_to_full_test_accuracy(tmp_path, memory, extra):
    results = run_in_dir(compose(memory, {**TINY, **extra}), tmp_path)
    assert results["accuracy"] == 1.0, results["test_curve"]
    assert results["test"]["queries"] == 2 * 250
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["accuracy"] == 1.0 and saved["mixer"] == memory
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir()), "TensorBoard events"
