"""The lifetime loop end to end on a small two-task stream, with the tracker and the prober faked."""
from __future__ import annotations

import pytest
import torch
from agent_fakes import compose_config, cue_vector_env, fake_lifetime

from lifelong.agents.build import build_lifetime, lifetime_settings
from lifelong.agents.loop import Lifetime
from lifelong.agents.ppo import NonFiniteError
from lifelong.memory_layers.state import tree_leaves


def test_a_lifetime_runs_one_pass_of_the_schedule_and_reports_to_the_tracker(tmp_path):
    life = fake_lifetime(tmp_path)
    summary = life.run(progress=False)
    calls = life.tracker.calls
    assert life.settings.total_steps == life.global_step == 2 * 120  # one pass x num_envs, not a segment more
    # baseline probe at step 0 on every task, then one probe per finished block of lifetime 0
    assert calls["probe"][0][0] == 0 and set(calls["probe"][0][1]) == {"plain", "flipped"}
    assert [p[2] for p in calls["probe"] if p[2] is not None] == [0, 1, 2]
    assert [(s[1], s[3]) for s in calls["switch"]] == [("plain", 0), ("flipped", 1), ("plain", 2)]
    assert calls["switch"][2][2] == 2  # second visit of "plain"
    # episodes of both lifetimes, counted from the last switch
    assert len(calls["episode"]) > 40
    assert {e[1] for e in calls["episode"]} == {"plain", "flipped"}
    assert min(e[5] for e in calls["episode"]) == 1
    scalars = calls["scalars"][-1][1]
    assert {"losses/policy", "losses/value", "losses/entropy", "charts/sps"} <= set(scalars)
    assert calls["memory"] and "layer0" in calls["memory"][0][1]
    assert calls["plasticity"][0][1]["layer0"][1] == 32  # MLP hidden = 2 x d_model
    assert summary["probes"] == len(calls["probe"]) and set(summary["final_probe"]) == {"plain", "flipped"}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"step_{life.global_step:012d}.pt"]


def test_every_probe_is_seeded_apart_from_the_lifetime_by_the_step_it_is_taken_at(tmp_path):
    life = fake_lifetime(tmp_path, seed=3)
    life.run(progress=False)
    steps = [p[0] for p in life.tracker.calls["probe"]]
    assert [seed for _, seed in life.prober.calls] == [3 + 10_000 + step for step in steps]
    assert life.prober.calls[0][0] == ["plain", "flipped"]  # the baseline: every task of the stream


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
    assert settings.total_steps == 2 * 3 * 40  # one pass of the schedule in each lifetime
    for sub in env.envs:
        sub.schedule_steps, sub.duration_unit = None, "episodes"
    with pytest.raises(ValueError, match="total_steps="):
        lifetime_settings(env, tmp_path, seed=0, total_steps=None, log_every=16, checkpoint_every=0,
                                 checkpoint_minutes=0, checkpoint_keep=1, config_fingerprint="test")
    assert lifetime_settings(env, tmp_path, seed=0, total_steps=64, log_every=16, checkpoint_every=0,
                                 checkpoint_minutes=0, checkpoint_keep=1, config_fingerprint="test").total_steps == 64


def test_with_reset_on_task_the_learner_recomputes_acting_exactly_across_the_task_switch(tmp_path):
    life = fake_lifetime(tmp_path, reset_on="task", block_steps=43)
    life.start()
    buf, resets_seen = life.buffer, 0
    for _ in range(12):  # 96 steps per lifetime: the first switch falls inside a segment
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


def test_a_lifetime_built_from_the_config_runs_end_to_end_on_the_smoke_stream(tmp_path):
    """The real stream, mixer, tracker and probes (no fakes): summary.json and TensorBoard logs."""
    cfg = compose_config("memory=gated_deltanet", "stream=smoke", "stream.steps_per_task=40", "device=cpu",
                         "num_envs=2", "agent.d_model=16", "agent.num_layers=1", "agent.segment_length=16",
                         "agent.update_epochs=2", "tracker.probe_every=10000", "tracker.probe_episodes=1",
                         "tracker.log_every=32")
    life = build_lifetime(cfg, tmp_path)
    summary = life.run(progress=False)
    assert life.global_step == 2 * 3 * 40
    assert set(summary["final_probe"]) == {"doorkey", "doorkey-permuted"}
    assert (tmp_path / "summary.json").exists() and life.checkpoints.latest() is not None
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert summary["R_blocks"][0] == 0  # the first block's row of R was filled by its block-end probe


def test_a_bad_config_is_refused_when_the_lifetime_is_built(tmp_path):
    with pytest.raises(ValueError, match="segment_length"):
        build_lifetime(compose_config("agent.segment_length=0"), tmp_path)
    with pytest.raises(ValueError, match="probe_episodes"):
        build_lifetime(compose_config("stream=smoke", "device=cpu", "num_envs=1", "agent.d_model=16",
                                      "tracker.probe_episodes=0"), tmp_path)
