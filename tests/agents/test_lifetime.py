"""The lifetime loop end to end on a small two-task stream, with the tracker and probes faked."""
from __future__ import annotations

import pytest
import torch
from agent_fakes import lifetime_cfg, use_fakes

from lifelong.agents.loop import Lifetime
from lifelong.agents.ppo import NonFiniteError
from lifelong.memory_layers.base import tree_leaves


@pytest.fixture
def fakes(monkeypatch):
    use_fakes(monkeypatch)


def test_a_lifetime_runs_one_pass_of_the_schedule_and_reports_to_the_tracker(fakes, tmp_path):
    life = Lifetime(lifetime_cfg(), tmp_path)
    summary = life.run(progress=False)
    calls = life.tracker.calls
    assert life.total_steps == life.global_step == 2 * 120  # one pass x num_envs, not a segment more
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
    assert (tmp_path / "checkpoint.pt").exists()


def next_segment(life: Lifetime):
    life.train_segment()
    buf = life.buffer
    return buf.action.clone(), buf.log_prob.clone(), [p.detach().clone() for p in life.agent.parameters()]


def test_a_saved_and_loaded_lifetime_takes_the_same_next_actions(fakes, tmp_path):
    life = Lifetime(lifetime_cfg(), tmp_path / "a")
    life.start()
    for _ in range(3):
        life.train_segment()
    path = life.save(tmp_path / "a" / "checkpoint.pt")
    other = Lifetime(lifetime_cfg(seed=5), tmp_path / "b")  # a different seed: everything must be loaded
    other.load(path)
    assert other.global_step == life.global_step
    for t_a, t_b in zip(tree_leaves(life.collector.memory), tree_leaves(other.collector.memory), strict=True):
        assert torch.equal(t_a, t_b)
    for _ in range(2):  # the next segments: same actions, same log-probs, same updated weights
        a, b = next_segment(life), next_segment(other)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert all(torch.equal(p, q) for p, q in zip(a[2], b[2]))
    assert life.tracker.calls == other.tracker.calls


def test_a_non_finite_memory_stops_the_lifetime_with_the_likely_fixes(fakes, tmp_path):
    life = Lifetime(lifetime_cfg(), tmp_path)
    life.start()
    with torch.no_grad():
        life.agent.backbone.blocks[0].mixer.qkv.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="agent.lr.*switch"):
        life.train_segment()


def test_a_non_finite_loss_stops_the_learner_with_the_likely_fixes(fakes, tmp_path):
    life = Lifetime(lifetime_cfg(), tmp_path)
    life.start()
    with torch.no_grad():
        life.agent.value_head.weight.fill_(float("inf"))  # the memory stays finite, the value loss does not
    with pytest.raises(NonFiniteError, match="PPO loss.*agent.lr"):
        life.train_segment()


def test_total_steps_null_needs_a_stream_counted_in_steps(fakes, monkeypatch, tmp_path):
    import lifelong.agents.loop as loop
    from agent_fakes import make_cue_vector_env

    def episode_stream(stream_cfg, num_envs, seed):
        env = make_cue_vector_env(stream_cfg, num_envs, seed)
        for sub in env.envs:
            sub.schedule_steps, sub.duration_unit = None, "episodes"
        return env

    monkeypatch.setattr(loop, "make_vector_env", episode_stream)
    with pytest.raises(ValueError, match="total_steps="):
        Lifetime(lifetime_cfg(total_steps=None), tmp_path)
    assert Lifetime(lifetime_cfg(total_steps=64), tmp_path / "b").total_steps == 64


def test_with_reset_on_task_the_learner_recomputes_acting_exactly_across_the_task_switch(fakes, tmp_path):
    life = Lifetime(lifetime_cfg(memory={"reset_on": "task"}, stream={"block_steps": 43}), tmp_path)
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


def test_an_unknown_reset_choice_is_refused(fakes, tmp_path):
    with pytest.raises(ValueError, match="reset_on"):
        Lifetime(lifetime_cfg(memory={"reset_on": "sometimes"}), tmp_path)


def test_a_lifetime_runs_end_to_end_on_the_smoke_stream_with_gated_deltanet(tmp_path):
    """The real stream, mixer, tracker and probes (no fakes): summary.json and TensorBoard logs."""
    from lifelong.envs.make import load_stream_config
    from lifelong.memory_layers.registry import load_memory_config

    stream = load_stream_config("smoke")
    stream.steps_per_task = 40
    cfg = lifetime_cfg(total_steps=None, num_envs=2, agent={"segment_length": 16},
                       tracker={"probe_every": 10_000, "probe_episodes": 1, "log_every": 32})
    cfg.memory = load_memory_config("gated_deltanet")
    cfg.stream = stream
    life = Lifetime(cfg, tmp_path)
    summary = life.run(progress=False)
    assert life.global_step == 2 * 3 * 40
    assert set(summary["final_probe"]) == {"doorkey", "doorkey-permuted"}
    assert (tmp_path / "summary.json").exists() and (tmp_path / "checkpoint.pt").exists()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert summary["R_blocks"][0] == 0  # the first block's row of R was filled by its block-end probe
