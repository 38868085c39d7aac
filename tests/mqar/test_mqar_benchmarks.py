"""The benchmark scripts' logic at no training cost: the grid's plan (every mixer configures, LoLA's
three rules at one cache size, Mamba2 at Palimpsa's state size) and the recall probe's reading of a run."""
from __future__ import annotations

import json

import pytest
from helpers.benchmarks import load_benchmark

from lifelong.mqar.app import compose
from lifelong.mqar.model import state_bytes
from lifelong.mqar.settings import parse_settings
from lifelong.mqar.train import build_model


@pytest.fixture(scope="module")
def grid():
    return load_benchmark("mqar_grid")


def test_every_grid_mixer_makes_a_valid_config_with_its_label(grid):
    args = grid.parse_args([])
    labels = set()
    for mixer in args.mixers:
        memory, overrides = grid.run_overrides(args, mixer, 64, 0, 0.01)
        settings = parse_settings(compose(memory, overrides))
        assert settings.mixer_label == mixer
        assert settings.task.pairs == [4, 8, 16] and settings.task.seq_len == 64
        labels.add(settings.mixer_label)
        if memory == "lola":
            assert (settings.memory.kwargs["window"], settings.memory.kwargs["cache_size"]) == (8, 8)
    assert {"lola-sre", "lola-random", "lola-recency", "mamba2-state2x", "palimpsa"} <= labels


def test_the_lr_sweep_runs_at_the_middle_d_model_unless_told(grid):
    assert grid.sweep_d_model(grid.parse_args(["--d-models", "64", "16", "32"])) == 32
    assert grid.sweep_d_model(grid.parse_args(["--d-models", "16", "32"])) == 16
    assert grid.sweep_d_model(grid.parse_args(["--d-models", "16", "32", "--sweep-d-model", "64"])) == 64
    sweep, grid_runs = grid.plan(grid.parse_args(["--d-models", "16", "32", "64", "--lrs", "0.003", "0.01"]))
    assert {job["d_model"] for job in sweep} == {32} and len(sweep) == 2 * len(grid.MIXERS)
    assert grid_runs == 3 * 3 * len(grid.MIXERS)


@pytest.mark.parametrize("d_model", [32, 64])
def test_mamba2_state2x_has_exactly_palimpsas_state_bytes(grid, d_model):
    args = grid.parse_args([])
    size = {}
    for mixer in ("mamba2", "mamba2-state2x", "palimpsa"):
        memory, overrides = grid.run_overrides(args, mixer, d_model, 0, 0.01)
        model = build_model(parse_settings(compose(memory, overrides)))
        size[mixer] = sum(state_bytes(model, args.seq_len))
    assert size["mamba2-state2x"] == size["palimpsa"] == 2 * size["mamba2"]


def _recall_run(root, seed: int, block_p8: float):
    run = root / f"gated_deltanet_seed{seed}"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "stream:\n  recall_vocab: {num_keys: 32, num_values: 16}\n  tasks:\n"
        "    p2-g0: {recall: {num_pairs: 2, gap: 0}}\n    p8-g8: {recall: {num_pairs: 8, gap: 8}}\n")
    # R: row k = the probe at the end of block k (block 0 trains p2-g0, block 1 trains p8-g8)
    (run / "summary.json").write_text(json.dumps({
        "finished": True, "task_names": ["p2-g0", "p8-g8"], "R_block_tasks": ["p2-g0", "p8-g8"],
        "R": [[1.0, 0.0625], [0.5, block_p8]],
        "tasks": {"p2-g0": {"final_success": 0.5, "train_success": 0.9, "episodes": 10},
                  "p8-g8": {"final_success": block_p8, "train_success": 0.2, "episodes": 5}}}))
    return run


def test_the_recall_probe_reads_each_task_at_the_end_of_its_own_block(tmp_path):
    recall = load_benchmark("recall_capacity")
    _recall_run(tmp_path, 0, 0.25)
    rows = {r["task"]: r for r in recall.collect(tmp_path)}
    # p2-g0 was recalled fully at its block end (R[0][0] = 1.0) and half at the run's end (R[1][0])
    assert rows["p2-g0"]["block_success"] == 1.0 and rows["p2-g0"]["pairs_recalled"] == 2.0
    assert rows["p2-g0"]["final_pairs_recalled"] == 1.0 and rows["p2-g0"]["chance"] == 1 / 16
    assert rows["p8-g8"]["pairs_recalled"] == 2.0 and rows["p8-g8"]["gap"] == 8
    assert rows["p2-g0"]["mixer"] == "gated_deltanet" and rows["p2-g0"]["seed"] == 0


def test_the_recall_table_gives_the_mean_and_t_interval_over_seeds(tmp_path):
    recall = load_benchmark("recall_capacity")
    _recall_run(tmp_path, 0, 0.25)
    _recall_run(tmp_path, 1, 0.75)
    md = recall.table(recall.collect(tmp_path))
    # p8-g8: pairs recalled 2 and 6 -> mean 4, sd 2.83, t_{0.975,1} = 12.71 -> +-25.4, clipped to [0, 8]
    assert "| gated_deltanet | 2 | 2.00 [2.00, 2.00] / 2 (end 1.00) | 4.00 [0.00, 8.00] / 8 (end 4.00) |" in md
    assert recall.plot(recall.collect(tmp_path), tmp_path / "r.png").stat().st_size > 0


def test_the_recall_probe_runs_this_pythons_cli_on_the_streams_own_budget_unless_told(tmp_path):
    import sys

    recall = load_benchmark("recall_capacity")
    command = recall.run_command(recall.parse_args([]), "lola-random", 3, tmp_path / "run")
    assert command[:4] == [sys.executable, "-m", "lifelong", "run"]
    assert "stream=recall-cpu" in command and "memory.selection=random" in command and "seed=3" in command
    assert not any(c.startswith(("total_steps=", "stream.steps_per_task=")) for c in command)
    told = recall.run_command(recall.parse_args(["--stream", "recall", "--total-steps", "400000"]), "mamba2", 0,
                              tmp_path / "run")
    assert "stream=recall" in told and "total_steps=400000" in told


def test_a_recall_run_that_times_out_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import subprocess

    recall = load_benchmark("recall_capacity")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        if "seed=0" in command:
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(recall.subprocess, "run", fake_run)
    recall.main(["--out", str(tmp_path), "--mixers", "mamba2", "--seeds", "0", "1", "--timeout", "5"])
    printed = capsys.readouterr().out
    assert len(calls) == 2
    assert "mamba2 seed 0: stopped after --timeout 5 s" in printed and "mamba2 seed 1: ok" in printed
