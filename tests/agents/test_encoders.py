"""Observation encoders: shapes, the multi-hot identity, and clear errors for unsupported spaces."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from lifelong.agents.encoders import MiniGridEncoder, TokenEncoder, build_encoder

MINIGRID = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "direction": spaces.Discrete(4)})


def minigrid_obs(*lead: int) -> dict[str, torch.Tensor]:
    return {
        "image": torch.randint(0, 11, (*lead, 7, 7, 3), dtype=torch.uint8),
        "direction": torch.randint(0, 4, lead),
    }


def test_minigrid_space_builds_the_multi_hot_encoder_with_act_and_learn_shapes():
    enc = build_encoder(MINIGRID, d_model=32)
    assert isinstance(enc, MiniGridEncoder)
    assert enc(minigrid_obs(5)).shape == (5, 32)  # acting: [B]
    assert enc(minigrid_obs(3, 4)).shape == (3, 4, 32)  # learning: [B, T]


def test_minigrid_embedding_equals_the_multi_hot_matmul():
    enc = build_encoder(MINIGRID, d_model=8)
    obs = minigrid_obs(6)
    multi_hot = torch.zeros(6, enc.table.shape[0])
    multi_hot.scatter_(1, enc.indices(obs["image"]), 1.0)
    expected = multi_hot @ enc.table + enc.direction(obs["direction"])
    torch.testing.assert_close(enc(obs), expected)


def test_every_cell_channel_value_has_its_own_row():
    enc = build_encoder(MINIGRID, d_model=4)
    a = minigrid_obs(1)
    b = {k: v.clone() for k, v in a.items()}
    b["image"][0, 3, 2, 1] = (int(a["image"][0, 3, 2, 1]) + 1) % 11  # one channel of one cell
    assert not torch.allclose(enc(a), enc(b))


def test_token_space_builds_an_embedding_and_task_id_adds_a_task_embedding():
    space = spaces.Dict({"token": spaces.Discrete(10), "task_id": spaces.Discrete(3)})
    enc = build_encoder(space, d_model=16)
    assert isinstance(enc, TokenEncoder)
    token = torch.tensor([[1, 2], [3, 4]])
    out0 = enc({"token": token, "task_id": torch.zeros_like(token)})
    out1 = enc({"token": token, "task_id": torch.ones_like(token)})
    assert out0.shape == (2, 2, 16)
    torch.testing.assert_close(out1 - out0, (enc.task_embedding.weight[1] - enc.task_embedding.weight[0]).expand(2, 2, 16))


def test_obs_to_tensor_keeps_the_encoder_keys_and_drops_others():
    enc = build_encoder(MINIGRID, d_model=8)
    obs = {"image": np.zeros((2, 7, 7, 3), np.uint8), "direction": np.array([0, 3]), "extra": np.zeros(2)}
    t = enc.obs_to_tensor(obs, "cpu")
    assert set(t) == {"image", "direction"} and t["image"].dtype == torch.uint8


def test_image_values_beyond_the_table_raise_a_clear_error():
    enc = build_encoder(MINIGRID, d_model=8)
    obs = {"image": np.full((1, 7, 7, 3), 200, np.uint8), "direction": np.array([0])}
    with pytest.raises(ValueError, match="num_values"):
        enc.obs_to_tensor(obs, "cpu")


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(0, 1, (4,)),
        spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "direction": spaces.Discrete(4),
                     "mission": spaces.Text(10)}),
        spaces.Dict({"vector": spaces.Box(0, 1, (3,))}),
    ],
)
def test_unsupported_spaces_raise_an_error_naming_the_supported_ones(space):
    with pytest.raises(ValueError, match="supported"):
        build_encoder(space, d_model=8)
