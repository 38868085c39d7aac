"""``benchmarks/constant_cost.py``'s re-timing: a snapshot of the loop taken at a mark, restored, repeats
the segments that followed it bit for bit (so every round of re-timing one mark's agent times the same
work), and the table's ratios are taken within a round, on a hand-worked case."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from helpers.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def constant_cost():
    return load_benchmark("constant_cost"), load_benchmark("throughput").Loop


def run_segments(loop, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The actions and episode ends of ``n`` segments, and the weights after them."""
    actions, dones = [], []
    for _ in range(n):
        loop.segment()
        actions.append(loop.buffer.action.clone())
        dones.append(loop.buffer.done.clone())
    return actions + dones, [p.detach().clone() for p in loop.agent.parameters()]


def test_a_restored_snapshot_repeats_the_segments_that_followed_it_whatever_ran_in_between(constant_cost, tmp_path):
    cc, Loop = constant_cost
    loop = Loop(num_envs=2, d_model=16, layers=1, memory="gated_deltanet", segment=16, epochs=1, stream="smoke")
    loop.segment()
    early = cc.save_snapshot(loop, tmp_path / "early.pt")
    after_early = run_segments(loop, 2)
    loop.segment()
    late = cc.save_snapshot(loop, tmp_path / "late.pt")
    after_late = run_segments(loop, 2)
    for snap, expected in ((early, after_early), (late, after_late), (early, after_early)):  # as the rounds go
        cc.restore(loop, cc.load_snapshot(snap))
        tokens, weights = run_segments(loop, 2)
        assert all(torch.equal(a, b) for a, b in zip(expected[0], tokens))
        assert all(torch.equal(a, b) for a, b in zip(expected[1], weights))
    assert not all(torch.equal(p, q) for p, q in zip(after_early[1], cc.load_snapshot(early)["agent"].values())), "it learned"


def test_the_retime_table_takes_each_ratio_within_its_round(constant_cost, capsys):
    cc, _ = constant_cost

    def row(mark: int, rnd: int, cpu: float) -> dict:
        return {"mixer": "m", "retime_of": mark, "retime_round": rnd, "cpu_ms_per_step": cpu,
                "ms_per_step": {"env": 0.1, "acting": cpu / 2, "learning": cpu / 4}, "episodes_per_1k": 4.0}

    # the machine ran 2x slower in round 1: per round the later agent costs 1.1x, then 1.0x the first
    rows = [row(10, 0, 1.0), row(100, 0, 1.1), row(100, 1, 2.0), row(10, 1, 2.0)]
    cc.print_retime_table(rows, argparse.Namespace(retime_segments=8))
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("m ")}
    assert "1.050 (1.000-1.100)" in lines["100"]  # median (min-max) of 1.1 and 1.0; not 3.1 / 3.0
    assert "1.000 (1.000-1.000)" in lines["10"]


def test_a_round_interleaves_the_marks_segments_and_every_round_repeats_each_marks_work(constant_cost, tmp_path,
                                                                                          capsys):
    cc, Loop = constant_cost

    def small_loop():
        return Loop(num_envs=2, d_model=16, layers=1, memory="gated_deltanet", segment=16, epochs=1, stream="smoke")

    lifetime = small_loop()
    snapshots = {}
    for mark in (16, 64):  # two marks of one lifetime: its loop after 1 segment, then after 4
        for _ in range(1 if mark == 16 else 3):
            lifetime.segment()
        snapshots[mark] = cc.save_snapshot(lifetime, tmp_path / f"m-{mark}.pt")
    loops = {mark: small_loop() for mark in snapshots}
    calls, actions = [], {mark: [] for mark in snapshots}
    for mark, loop in loops.items():
        def segment(loop=loop, mark=mark, run=loop.segment):
            out = run()
            calls.append(mark)
            actions[mark].append(loop.buffer.action.clone())
            return out
        loop.segment = segment

    cc.retime(loops, "m", snapshots, argparse.Namespace(retime_rounds=2, retime_segments=3))

    untimed, timed = [16, 64], [16, 64, 64, 16, 16, 64]  # round 0; round 1 starts one rotation on
    assert calls == untimed + timed + untimed + [64, 16, 16, 64, 64, 16]
    for mark in snapshots:  # 4 segments a round (1 untimed + 3), the same 4 in both rounds
        assert all(torch.equal(a, b) for a, b in zip(actions[mark][:4], actions[mark][4:]))
    assert not torch.equal(actions[16][0], actions[64][0]), "the two marks' agents act differently"
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert sorted((r["retime_of"], r["retime_round"]) for r in rows) == [(16, 0), (16, 1), (64, 0), (64, 1)]
    assert all(r["cpu_ms_per_step"] > 0 and r["interleaved"] for r in rows)
