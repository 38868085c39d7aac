"""The divergence guard: limits on losses, gradient norm and memory-state norm stop a run with one
line naming the quantity, or roll it back to the last checkpoint with a lower learning rate."""
from __future__ import annotations

import math

import pytest
from agent_fakes import fake_lifetime

from lifelong.agents.guard import DivergenceError, DivergenceGuard


def guard(**limits) -> DivergenceGuard:
    settings = {"max_loss": None, "max_grad_norm": None, "max_state_norm": None, "on_divergence": "stop",
                "rollback_lr_factor": 0.5, "max_rollbacks": 2} | limits
    return DivergenceGuard.from_config(settings)


def test_each_limit_names_its_quantity_its_config_key_and_the_step():
    stats = {"losses/policy": -0.2, "losses/value": 3.0e8, "losses/grad_norm": 12.0}
    with pytest.raises(DivergenceError, match=r"losses/value reached 3e\+08 \(limit guard.max_loss=1e\+06\) at env step 640"):
        guard(max_loss=1e6).check(640, stats, lambda: [])
    with pytest.raises(DivergenceError, match="losses/grad_norm reached 12 .*guard.max_grad_norm=10"):
        guard(max_grad_norm=10).check(1, stats, lambda: [])
    with pytest.raises(DivergenceError, match="memory state norm reached 1e\\+05 .*guard.max_state_norm"):
        guard(max_state_norm=1e3).check(1, {}, lambda: [2.0, 1e5])
    guard(max_loss=1e9, max_grad_norm=100, max_state_norm=1e6).check(1, stats, lambda: [2.0, 1e5])  # within limits


def test_no_limit_means_no_check_and_nan_always_trips_a_set_limit():
    guard().check(1, {"losses/value": math.inf}, lambda: [math.inf])
    with pytest.raises(DivergenceError):
        guard(max_loss=1.0).check(1, {"losses/value": math.nan}, lambda: [])


def test_an_unknown_action_is_refused():
    with pytest.raises(ValueError, match="stop or rollback"):
        guard(on_divergence="ignore")


def test_a_diverging_lifetime_stops_with_the_guard_error(tmp_path):
    life = fake_lifetime(tmp_path)
    life.guard = guard(max_grad_norm=1e-12)  # every update passes this limit
    with pytest.raises(DivergenceError, match="losses/grad_norm"):
        life.run(progress=False)


def test_rollback_reloads_the_last_checkpoint_lowers_the_lr_and_gives_up_after_max_rollbacks(tmp_path):
    life = fake_lifetime(tmp_path)
    life.guard = guard(max_grad_norm=1e-12, on_divergence="rollback", rollback_lr_factor=0.5, max_rollbacks=2)
    life.start()
    life.checkpoint()
    lr = life.learner.optimizer.param_groups[0]["lr"]
    with pytest.warns(UserWarning, match="rolled back from env step 16 to step_000000000000.pt") as warned:
        with pytest.raises(DivergenceError):
            life.run(progress=False)
    assert len(warned) == 2 and life.rollbacks == 2
    assert life.learner.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.25)
