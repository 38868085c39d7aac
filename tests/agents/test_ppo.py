"""The PPO loss: filler tokens do not count, minibatches split lifetimes, configs map onto PPOConfig;
the lagged learners' decoupled objective on a hand-worked segment, and equal to the plain one without lag."""
from __future__ import annotations

import copy

import pytest
import torch
from agent_fakes import make_collector
from omegaconf import OmegaConf

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.policy import EvalOutput
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


def test_a_loaded_state_is_the_learners_own_copy_so_loading_it_again_repeats_the_update():
    agent, buf = collected()
    learner = PPOLearner(agent, PPOConfig.from_cfg({"update_epochs": 1}), compile=False, seed=0)
    learner.update(buf)  # the optimizer has moments to keep
    weights, state = copy.deepcopy(agent.state_dict()), copy.deepcopy(learner.state_dict())
    after = []
    for _ in range(2):
        agent.load_state_dict(weights)
        learner.load_state_dict(state)
        learner.update(buf)
        after.append([p.detach().clone() for p in agent.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*after))


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


class FixedPolicy:
    """An agent stand-in whose ``evaluate`` returns fixed action probabilities ``[B, T, A]``."""

    num_actions = 2

    def __init__(self, probs: list[list[list[float]]]) -> None:
        self.log_probs = torch.tensor(probs).log()

    def evaluate(self, obs, prev_action, prev_reward, boundary, memory, reset):
        return EvalOutput(self.log_probs, torch.zeros(self.log_probs.shape[:2]), memory)


def test_the_decoupled_objective_on_a_hand_worked_segment():
    """Hilton, Cobbe and Schulman 2021, eq. 2: weight (proximal / behaviour) x clipped surrogate of
    (current / proximal). Two tokens, action 0 taken in both, clip 0.2, advantages +1 and -1:
    token 1: current 0.5, proximal 0.4, behaviour 0.5 -> ratio 1.25 clipped to 1.2, weight 0.8: -0.96;
    token 2: current 0.2, proximal 0.24, behaviour 0.2 -> ratio 0.833 (inside), weight 1.2: +1.0; mean 0.02.
    Without the proximal policy the ratios are 1 and the loss is (-1 + 1) / 2 = 0."""
    agent = FixedPolicy([[[0.5, 0.5], [0.2, 0.8]]])
    buf = RolloutBuffer(1, 2)
    buf.obs, buf.memory_start = {}, None
    buf.action[:] = 0
    buf.log_prob[:] = torch.tensor([[0.5, 0.2]]).log()
    buf.valid[:] = True
    cfg = PPOConfig.from_cfg({"clip_coef": 0.2, "norm_adv": False, "vf_coef": 0.0, "ent_coef": 0.0})
    adv, ret = torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2)
    prox = torch.tensor([[0.4, 0.24]]).log()
    loss, stats = ppo_loss(agent, buf, None, adv, ret, cfg, None, prox_log_prob=prox)
    assert float(loss) == pytest.approx(0.02, abs=1e-6)
    assert float(stats["losses/clipfrac"]) == pytest.approx(0.5)  # token 1 left the clip range
    plain, _ = ppo_loss(agent, buf, None, adv, ret, cfg, None)
    assert float(plain) == pytest.approx(0.0, abs=1e-7)


def test_without_lag_the_decoupled_update_is_the_plain_one():
    """Acting and learning with the same weights, the proximal policy is the behaviour one (weights 1)
    and the recomputed values are the acted ones up to the chunked form's rounding."""
    agent, buf = collected()
    plain_agent = copy.deepcopy(agent)
    cfg = PPOConfig.from_cfg({"update_epochs": 1})
    plain = PPOLearner(plain_agent, cfg, compile=False, seed=0).update(buf)
    decoupled = PPOLearner(agent, cfg, compile=False, seed=0, decoupled=True)
    log_prob, value, _, _ = decoupled.proximal_targets(buf, None)
    torch.testing.assert_close(log_prob[buf.valid], buf.log_prob[buf.valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value[buf.valid], buf.value[buf.valid], rtol=1e-5, atol=1e-5)
    stats = decoupled.update(buf)
    assert stats["losses/policy"] == pytest.approx(plain["losses/policy"], abs=1e-5)
    for a, b in zip(agent.parameters(), plain_agent.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def subnormal_times_one() -> float:
    """1e-39 (a float32 subnormal) times 1, computed on this thread: 0 when subnormals are flushed."""
    return float(torch.tensor(1e-39, dtype=torch.float32) * torch.tensor(1.0))


def test_learning_runs_with_subnormals_flushed_to_zero_and_the_thread_gets_them_back_after():
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    agent, buf = collected()
    learner = PPOLearner(agent, PPOConfig.from_cfg({"update_epochs": 1}), compile=False, seed=0)
    seen = []
    evaluate = agent.evaluate

    def recording_evaluate(*args, **kwargs):
        seen.append(subnormal_times_one())
        return evaluate(*args, **kwargs)

    agent.evaluate = recording_evaluate
    assert subnormal_times_one() > 0
    learner.update(buf)
    assert seen and all(v == 0.0 for v in seen), "inside the update a subnormal reads as zero"
    assert subnormal_times_one() > 0, "acting after the update keeps IEEE subnormals"
