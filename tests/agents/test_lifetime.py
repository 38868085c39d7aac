"""The lifetime loop end to end: on a small two-task stream with the tracker and the prober faked,
then with the real stream, mixer, tracker and probes (docs/blocks.md: synchronous blocks)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from agent_fakes import compose_config, cue_vector_env, fake_lifetime

from lifelong.agents.build import build_lifetime, lifetime_settings
from lifelong.agents.loop import Lifetime
from lifelong.agents.ppo import NonFiniteError
from lifelong.agents.rollout import info_at
from lifelong.memory_layers.state import tree_leaves
from lifelong.tracking.blocks import BlockLedger
from lifelong.tracking.tracker import Tracker

BLOCK = 40  # tokens per block of the fake stream (3 blocks: plain, flipped, plain)


def test_a_lifetime_runs_one_pass_of_the_schedule_and_reports_to_the_tracker(tmp_path):
    life = fake_lifetime(tmp_path)
    summary = life.run(progress=False)
    calls = life.tracker.calls
    assert life.settings.total_steps == life.global_step == 2 * 3 * BLOCK  # one pass x num_envs, not a segment more
    # the baseline probe at step 0 on every task, then row k of R on the step that ends block k in
    # every lifetime: 2 lifetimes x BLOCK tokens later each time
    assert calls["probe"][0][0] == 0 and calls["probe"][0][2] is None
    assert set(calls["probe"][0][1]) == {"plain", "flipped"}
    assert [(p[0], p[2]) for p in calls["probe"] if p[2] is not None] == [(80, 0), (160, 1), (240, 2)]
    # every lifetime reports every block start; a CueEnv episode is 3 steps + its autoreset token, so a
    # block end (token 40, 80, 120) is a reset token: it ends block k and starts block k+1's first
    # episode, the last one (step 240) included
    assert Counter((s[1], s[2], s[3]) for s in calls["switch"]) == {
        ("plain", 1, 0): 2, ("flipped", 1, 1): 2, ("plain", 2, 2): 2, ("plain", 3, 3): 2}
    assert [s[0] for s in calls["switch"]] == [0, 0, 80, 80, 160, 160, 240, 240]
    # the episodes of both lifetimes, each with the block its own stream named: it ends inside it
    assert len(calls["episode"]) == 2 * 3 * (BLOCK // 4)
    assert all((step - 1) // (2 * BLOCK) == block for step, *_, block in calls["episode"])
    assert {e[1] for e in calls["episode"]} == {"plain", "flipped"}
    assert min(e[5] for e in calls["episode"]) == 1
    scalars = [c[1] for c in calls["scalars"] if "losses/policy" in c[1]][-1]
    assert {"losses/policy", "losses/value", "losses/entropy", "charts/sps"} <= set(scalars)
    assert calls["memory"] and "layer0" in calls["memory"][0][1]
    assert calls["plasticity"][0][1]["layer0"][1] == 32  # MLP hidden = 2 x d_model
    # the prober runs exactly the tasks and episodes the tracker planned
    assert [(plan[2], plan[3]) for plan in calls["plan"]] == [(tasks, episodes) for tasks, _, episodes in life.prober.calls]
    assert summary["probes"] == len(calls["probe"]) and set(summary["final_probe"]) == {"plain", "flipped"}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"step_{life.global_step:012d}.pt"]


def test_every_probe_is_seeded_apart_from_the_lifetime_by_the_step_it_is_taken_at(tmp_path):
    life = fake_lifetime(tmp_path, seed=3)
    life.run(progress=False)
    steps = [p[0] for p in life.tracker.calls["probe"]]
    assert [seed for _, seed, _ in life.prober.calls] == [3 + 10_000 + step for step in steps]
    assert life.prober.calls[0][0] == ["plain", "flipped"]  # the baseline: every task of the stream


def test_a_partial_final_block_gets_its_row_of_r_at_the_stop_step(tmp_path):
    life = fake_lifetime(tmp_path, total_steps=2 * (2 * BLOCK + 10))  # 10 tokens into block 2
    life.run(progress=False)
    rows = [(p[0], p[2]) for p in life.tracker.calls["probe"] if p[2] is not None]
    assert rows == [(80, 0), (160, 1), (life.global_step, 2)] and life.global_step == 180


def test_a_lifetime_resumed_at_its_last_step_does_not_probe_again(tmp_path):
    life = fake_lifetime(tmp_path / "a")
    life.start()
    while life.global_step < life.settings.total_steps:
        life.train_segment()
    path = life.checkpoint()  # e.g. a stop signal after the last segment: the block-end probe is taken
    other = fake_lifetime(tmp_path / "b")
    other.load(path)
    summary = other.run(progress=False)
    assert other.prober.calls == []  # the row-2 probe of the last step is the final probe, not a new row 3
    assert [p[2] for p in other.tracker.calls["probe"] if p[2] is not None] == [0, 1, 2]
    assert set(summary["final_probe"]) == {"plain", "flipped"}


def test_an_episode_ending_on_another_lifetimes_switch_step_is_credited_to_its_own_block(tmp_path):
    """Lifetime 0's episode ended on token 39, so its reset token 40 ends block 0 and starts block 1;
    lifetime 1's episode is truncated on that same token: it belongs to block 0, whatever the order."""
    life = fake_lifetime(tmp_path)
    ledger = BlockLedger.of(life.collector.rollout.vec_env.envs[0].schedule, life.num_envs)
    life.tracker = Tracker.from_config(tmp_path / "tracker", list(life.settings.task_names), {},
                                       compose_config("tracker.bootstrap_samples=100").tracker, ledger)
    life.start()
    life.global_step = 2 * (BLOCK - 1)  # 39 vector steps done
    both = np.array([True, True])
    info = {
        "task_switch": np.array([True, False]), "_task_switch": both,
        "task_name": np.array(["flipped", "plain"], dtype=object), "_task_name": both,
        "visit": np.array([1, 1]), "_visit": both,
        "block_index": np.array([1, 0]), "_block_index": both,
        "block_end": np.array([0, 0]), "_block_end": both,
        "episode_return": np.array([0.0, 1.0]), "_episode_return": np.array([False, True]),
        "episode_length": np.array([0, 3]), "_episode_length": np.array([False, True]),
        "episode_success": np.array([0.0, 1.0]), "_episode_success": np.array([False, True]),
        "block_truncated": np.array([False, True]), "_block_truncated": np.array([False, True]),
    }
    order = []
    for name in ("log_episode", "log_task_switch", "log_probe"):
        method = getattr(life.tracker, name)
        setattr(life.tracker, name, lambda *a, _m=method, _n=name, **k: (order.append(_n), _m(*a, **k))[1])
    life._on_step(info)
    # block 0's last episodes reach the tracker before block 1 starts, then row 0 is probed
    assert order == ["log_episode", "log_task_switch", "log_probe"]
    summary = life.tracker.summary()
    assert [(b["index"], b["task"], b["episodes"], b["success"]) for b in summary["blocks"]][:1] == [(0, "plain", 1, 1.0)]
    assert summary["blocks"][1]["episodes"] == 0
    assert summary["R_blocks"] == [0] and summary["R_steps"] == [2 * BLOCK] == [ledger.end(0)]
    assert life.prober.calls[-1][0] == ["plain", "flipped"]  # row 0 covers the next block's task too


def next_segment(life: Lifetime):
    life.train_segment()
    buf = life.buffer
    return buf.action.clone(), buf.log_prob.clone(), [p.detach().clone() for p in life.agent.parameters()]


def test_a_saved_and_loaded_lifetime_takes_the_same_next_actions(tmp_path):
    life = fake_lifetime(tmp_path / "a")
    life.start()
    for _ in range(3):
        life.train_segment()
    path = life.save(tmp_path / "a" / "checkpoint.pt")
    other = fake_lifetime(tmp_path / "b", seed=5)  # a different seed: everything must be loaded
    other.load(path)
    assert other.global_step == life.global_step
    for t_a, t_b in zip(tree_leaves(life.collector.memory), tree_leaves(other.collector.memory), strict=True):
        assert torch.equal(t_a, t_b)
    for _ in range(2):  # the next segments: same actions, same log-probs, same updated weights
        a, b = next_segment(life), next_segment(other)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert all(torch.equal(p, q) for p, q in zip(a[2], b[2]))
    assert life.tracker.calls == other.tracker.calls


def test_a_non_finite_memory_stops_the_lifetime_with_the_likely_fixes(tmp_path):
    life = fake_lifetime(tmp_path)
    life.start()
    with torch.no_grad():
        life.agent.backbone.blocks[0].mixer.qkv.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="agent.lr.*switch"):
        life.train_segment()


def test_a_non_finite_loss_stops_the_learner_with_the_likely_fixes(tmp_path):
    life = fake_lifetime(tmp_path)
    life.start()
    with torch.no_grad():
        life.agent.value_head.weight.fill_(float("inf"))  # the memory stays finite, the value loss does not
    with pytest.raises(NonFiniteError, match="PPO loss.*agent.lr"):
        life.train_segment()


def test_total_steps_null_needs_a_stream_counted_in_steps(tmp_path):
    env = cue_vector_env(num_envs=2)
    settings = lifetime_settings(env, tmp_path, seed=0, total_steps=None, log_every=16, checkpoint_every=0,
                                 checkpoint_minutes=0, checkpoint_keep=1, config_fingerprint="test")
    assert settings.total_steps == 2 * 3 * BLOCK  # one pass of the schedule in each lifetime
    for sub in env.envs:
        sub.schedule_steps, sub.duration_unit = None, "episodes"
    with pytest.raises(ValueError, match="unit: steps"):  # blocks must cover the same steps in every lifetime
        lifetime_settings(env, tmp_path, seed=0, total_steps=None, log_every=16, checkpoint_every=0,
                          checkpoint_minutes=0, checkpoint_keep=1, config_fingerprint="test")


def test_with_reset_on_task_the_learner_recomputes_acting_exactly_across_the_task_switch(tmp_path):
    life = fake_lifetime(tmp_path, reset_on="task", block_steps=50)
    life.start()
    buf, resets_seen = life.buffer, 0
    for _ in range(12):  # 96 tokens per lifetime: the switch (token 51) falls inside a segment
        life.collector.collect(buf)
        resets_seen += int(buf.reset[:, 1:].sum())
        with torch.no_grad():
            out = life.agent.evaluate(buf.obs, buf.prev_action, buf.prev_reward, buf.boundary, buf.memory_start,
                                      buf.reset)
        logp = out.log_probs.gather(-1, buf.action[..., None]).squeeze(-1)
        torch.testing.assert_close(logp, buf.log_prob, rtol=1e-4, atol=1e-4)
    assert resets_seen == 2  # one task switch in each of the two lifetimes


def test_an_unknown_reset_choice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="reset_on"):
        fake_lifetime(tmp_path, reset_on="sometimes")


def test_a_bad_config_is_refused_when_the_lifetime_is_built(tmp_path):
    with pytest.raises(ValueError, match="segment_length"):
        build_lifetime(compose_config("agent.segment_length=0"), tmp_path)
    with pytest.raises(ValueError, match="probe_episodes"):
        build_lifetime(compose_config("stream=smoke", "device=cpu", "num_envs=1", "agent.d_model=16",
                                      "tracker.probe_episodes=0"), tmp_path)


# ---- the real thing: build_lifetime on the smoke stream -----------------------------------------
SMOKE_BLOCK = 24  # tokens per block per lifetime
SMOKE_STOP = 2 * (3 * SMOKE_BLOCK + 16)  # env steps: the schedule's second pass starts, block 3 is cut at 16 tokens
#: DoorKey episodes of at most 20 steps: some end inside a block, some are truncated at its end; probes stay short
SHORT_EPISODES = tuple(f"+stream.tasks.{task}.env_kwargs={{max_steps:20}}" for task in ("doorkey", "doorkey-permuted"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A real lifetime (stream, mixer, tracker, probes) of 2 lifetimes on the smoke stream, stopped
    inside block 3; every vector step's block ends and finished episodes recorded."""
    cfg = compose_config("memory=gated_deltanet", "stream=smoke", f"stream.steps_per_task={SMOKE_BLOCK}", "device=cpu",
                         "num_envs=2", f"total_steps={SMOKE_STOP}", "agent.d_model=16", "agent.num_layers=1",
                         "agent.segment_length=16", "agent.update_epochs=2", "tracker.probe_every=64",
                         "tracker.probe_episodes=2", "tracker.curve_probe_episodes=2", "tracker.bootstrap_samples=200",
                         "tracker.log_every=32", "tracker.replay_episodes=null", *SHORT_EPISODES)
    run_dir = tmp_path_factory.mktemp("smoke")
    life = build_lifetime(cfg, run_dir)
    steps: list[dict] = []
    report = life._on_step

    def recording(info):
        n = life.num_envs
        ends = [int(info_at(info, "block_end", i, -1)) for i in range(n)]
        episodes = [(int(info_at(info, "block_index", i)), int(info_at(info, "episode_length", i)),
                     bool(info_at(info, "block_truncated", i))) for i in range(n)
                    if info_at(info, "episode_return", i) is not None]
        report(info)
        steps.append({"step": life.global_step, "ends": ends, "episodes": episodes})

    life._on_step = recording
    summary = life.run(progress=False)
    return life, summary, steps, run_dir


def test_a_lifetime_built_from_the_config_runs_end_to_end_on_the_smoke_stream(smoke):
    life, summary, _, run_dir = smoke
    assert life.global_step == SMOKE_STOP
    assert set(summary["final_probe"]) == {"doorkey", "doorkey-permuted"}
    assert (run_dir / "summary.json").exists() and (run_dir / "probes.json").exists()
    assert life.checkpoints.latest() is not None and list(run_dir.glob("events.out.tfevents.*"))
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["finished"] and on_disk["seed"] == 0 and on_disk["memory"] == "gated_deltanet"
    assert on_disk["stream"] == "smoke" and on_disk["config"]["num_envs"] == 2 and on_disk["config_key"]


def test_r_rows_are_probed_on_the_step_every_lifetime_ends_the_block(smoke):
    life, summary, steps, _ = smoke
    ledger = life.tracker.ledger
    ended = {s["step"]: s["ends"][0] for s in steps if s["ends"][0] >= 0}
    assert all(len(set(s["ends"])) == 1 for s in steps)  # the lifetimes always agree
    assert ended == {ledger.end(k): k for k in range(3)} == {48: 0, 96: 1, 144: 2}
    assert summary["R_blocks"][:3] == [0, 1, 2]
    assert summary["R_steps"][:3] == [ledger.end(k) for k in range(3)]


def test_a_partial_final_block_has_its_row_at_the_stop_step(smoke):
    life, summary, _, _ = smoke
    assert summary["R_blocks"] == [0, 1, 2, 3] and summary["R_steps"][3] == SMOKE_STOP
    assert summary["R_block_tasks"] == ["doorkey", "doorkey-permuted", "doorkey", "doorkey"]
    last = summary["blocks"][-1]
    assert (last["index"], last["start"], last["end"], last["planned_end"]) == (3, 144, SMOKE_STOP, 192)
    final = [summary["final_probe"][t]["success"] for t in summary["task_names"]]
    assert final == pytest.approx(summary["R"][3])


def test_no_episode_of_the_real_stream_spans_two_blocks(smoke):
    life, _, steps, _ = smoke
    ledger, lifetimes = life.tracker.ledger, life.num_envs
    truncated = 0
    for s in steps:
        token = s["step"] // lifetimes  # every lifetime's own count
        for block, length, block_truncated in s["episodes"]:
            first_step = token - length + 1  # the episode's first step; its reset token is the one before
            assert first_step > (ledger.end_token(block - 1) if block else 0), (s, block, length)
            assert token <= ledger.end_token(block)
            if block_truncated:
                truncated += 1
                assert token == ledger.end_token(block)
    assert truncated >= 2  # the check sees episodes cut by a block end, not only episodes ending on their own


def test_probes_json_keeps_every_episode_and_r_ci_brackets_r(smoke):
    _, _, _, run_dir = smoke
    summary = json.loads((run_dir / "summary.json").read_text())
    probes = json.loads((run_dir / "probes.json").read_text())
    assert [p["step"] for p in probes["probes"]] == sorted(p["step"] for p in probes["probes"])
    rows = [p for p in probes["probes"] if p["block_end"] is not None]
    assert [p["step"] for p in rows] == summary["R_steps"]
    for probe in probes["probes"]:
        for entry in probe["tasks"].values():
            assert np.shape(entry["success_matrix"]) == np.shape(entry["return_matrix"]) == (2, 1)  # [B][E]
    for r, row in enumerate(summary["R"]):
        for j, value in enumerate(row):
            if value is None:
                continue
            low, high = summary["R_ci"][r][j]
            assert low <= value <= high
            assert summary["R_episodes"][r][j] == 2
