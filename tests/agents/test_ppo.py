"""The PPO loss: filler tokens do not count, minibatches split lifetimes, configs map onto PPOConfig."""
from __future__ import annotations

import pytest
import torch
from agent_fakes import make_collector
from omegaconf import OmegaConf

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.ppo import PPOConfig, PPOLearner, next_ent_coef, ppo_loss


def collected(num_envs: int = 3, length: int = 12) -> tuple:
    agent, collector = make_collector(num_envs=num_envs)
    buf = RolloutBuffer(num_envs, length)
    collector.collect(buf)
    return agent, buf


def test_filler_tokens_do_not_change_the_loss():
    agent, buf = collected()
    cfg = PPOConfig.from_cfg({})
    index = torch.arange(3)
    adv, ret = buf.advantages(cfg.gamma, cfg.gae_lambda)
    loss, _ = ppo_loss(agent, buf, index, adv, ret, cfg, None)
    filler = ~buf.valid
    assert filler.any()
    # garbage in the filler transitions' recorded outputs and targets
    buf.action[filler] = (buf.action[filler] + 1) % agent.num_actions
    buf.log_prob[filler] = -50.0
    buf.value[filler] = 100.0
    adv2, ret2 = adv.clone(), ret.clone()
    adv2[filler], ret2[filler] = 7.0, -7.0
    loss2, _ = ppo_loss(agent, buf, index, adv2, ret2, cfg, None)
    torch.testing.assert_close(loss2, loss)


def test_minibatches_split_lifetimes_and_must_divide_them():
    agent, buf = collected()
    one_lifetime_each = PPOConfig.from_cfg({"num_minibatches": 3, "update_epochs": 1})  # one lifetime per minibatch
    PPOLearner(agent, one_lifetime_each, compile=False, seed=0).update(buf)
    with pytest.raises(ValueError, match="num_minibatches"):
        PPOLearner(agent, PPOConfig.from_cfg({"num_minibatches": 2}), compile=False, seed=0).update(buf)


def test_an_update_moves_the_weights_and_reports_the_losses():
    agent, buf = collected()
    before = [p.detach().clone() for p in agent.parameters()]
    stats = PPOLearner(agent, PPOConfig.from_cfg({"update_epochs": 2}), compile=False, seed=0).update(buf, features=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))
    assert {"losses/policy", "losses/value", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
            "losses/explained_variance", "losses/grad_norm"} <= set(stats)
    assert set(stats["features"]) == {"layer0", "layer1"} and stats["features"]["layer0"].shape[1] == 32


def test_ppo_config_takes_its_keys_from_the_agent_config():
    cfg = PPOConfig.from_cfg(OmegaConf.create({"d_model": 128, "lr": 1e-3, "update_epochs": 2, "target_kl": None}))
    assert cfg.lr == 1e-3 and cfg.update_epochs == 2 and cfg.target_kl is None


def test_without_a_floor_the_entropy_coefficient_is_fixed():
    cfg = PPOConfig.from_cfg({"ent_coef": 0.01, "entropy_floor": None})
    assert next_ent_coef(0.01, entropy=0.0, num_actions=7, cfg=cfg) == 0.01


def test_the_entropy_floor_raises_the_coefficient_below_it_and_lowers_it_back_above_it():
    # floor 0.2 of log 7 = 0.389 nats; steps of 1.5x within [0.01, 0.05]
    cfg = PPOConfig.from_cfg({"ent_coef": 0.01, "entropy_floor": 0.2, "ent_coef_max": 0.05})
    coef, seen = 0.01, []
    for _ in range(5):  # a collapsed policy (0.001 nats): 0.015, 0.0225, 0.03375, 0.050625 -> capped 0.05
        coef = next_ent_coef(coef, entropy=0.001, num_actions=7, cfg=cfg)
        seen.append(coef)
    assert seen == pytest.approx([0.015, 0.0225, 0.03375, 0.05, 0.05])
    coef = next_ent_coef(coef, entropy=0.40, num_actions=7, cfg=cfg)  # just above the floor: back down
    assert coef == pytest.approx(0.05 / 1.5)
    for _ in range(10):
        coef = next_ent_coef(coef, entropy=1.0, num_actions=7, cfg=cfg)
    assert coef == 0.01  # never below the configured ent_coef


def test_the_learner_reports_the_coefficient_it_used_and_checkpoints_the_next_one():
    agent, buf = collected()
    cfg = PPOConfig.from_cfg({"update_epochs": 1, "entropy_floor": 1.0, "ent_coef": 0.01})  # always below the floor
    learner = PPOLearner(agent, cfg, compile=False, seed=0)
    assert learner.update(buf)["losses/ent_coef"] == 0.01
    assert learner.update(buf)["losses/ent_coef"] == pytest.approx(0.015)
    restored = PPOLearner(agent, cfg, compile=False, seed=0)
    restored.load_state_dict(learner.state_dict())
    assert restored.ent_coef == pytest.approx(0.0225)
    old = learner.state_dict()
    del old["ent_coef"]  # a checkpoint from before the floor existed
    restored.load_state_dict(old)
    assert restored.ent_coef == 0.01
