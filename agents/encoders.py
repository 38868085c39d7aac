"""Observation encoders built from a Gymnasium observation space (DESIGN.md sections 5 and 10).

Every encoder maps a dict of tensors with leading dims ``[*]`` (``[B]`` when acting, ``[B, T]`` when
learning) to embeddings ``[*, D]``. Supported spaces:

* MiniGrid ``Dict(image=Box(7, 7, 3), direction=Discrete(4))``: the view is a multi-hot vector over
  (cell, channel, value) indices; its embedding is a sum of rows of one table, computed with
  ``embedding_bag`` (cheap to act and to learn: no one-hot matrix is ever built).
* ``Dict(token=Discrete(n))``: a token embedding.
* either of them plus ``task_id=Discrete(m)``: a task embedding added.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium import spaces

SUPPORTED_SPACES = (
    "Dict(image=Box(0, 255, (H, W, C), uint8), direction=Discrete(4)) [MiniGrid], "
    "Dict(token=Discrete(n)) [sequence tasks], "
    "each optionally with task_id=Discrete(m)"
)


def _host_tensor(x) -> torch.Tensor:
    """A CPU tensor sharing ``x``'s memory (as ``torch.as_tensor`` does); a plain numpy array goes
    through ``torch.from_numpy``, which dispatches no op (this runs for every acted token)."""
    a = np.asarray(x)
    if a.dtype != object and a.flags.writeable and a.dtype.isnative:
        return torch.from_numpy(a)
    return torch.as_tensor(a)


#: from this many views on (a learner's segment, not an acting step), identical views are embedded once
DEDUPE_MIN_ROWS = 64


def unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of x ``[N, M]`` (an integer dtype) and, per row, the index of its distinct
    row: (rows ``[U, M]``, inverse ``[N]`` long). On the CPU through numpy (rows compared as raw
    bytes), several times faster there than ``torch.unique(dim=0)``."""
    if x.device.type != "cpu":
        return torch.unique(x, dim=0, return_inverse=True)
    a = np.ascontiguousarray(x.detach().numpy())
    _, first, inverse = np.unique(a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1),
                                  return_index=True, return_inverse=True)
    return x[torch.from_numpy(first)], torch.from_numpy(inverse.reshape(-1))


class ObservationEncoder(nn.Module):
    """Base class: ``forward(obs: dict[str, Tensor [*, ...]]) -> Tensor [*, D]``."""

    keys: tuple[str, ...] = ()

    def __init__(self, d_model: int, num_tasks: int | None = None) -> None:
        super().__init__()
        self.d_model = d_model
        self.task_embedding = nn.Embedding(num_tasks, d_model) if num_tasks else None
        if self.task_embedding is not None:
            nn.init.normal_(self.task_embedding.weight, std=0.02)
            self.keys = (*self.keys, "task_id")

    def _add_task(self, emb: torch.Tensor, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.task_embedding is None:
            return emb
        return emb + self.task_embedding(obs["task_id"].long())

    def obs_to_tensor(self, obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Numpy observations ``[B, ...]`` -> tensors on ``device`` (images stay uint8)."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks keys {missing}; the encoder expects {list(self.keys)}")
        device = torch.device(device)
        if device.type == "cpu":  # shares the arrays' memory, as as_tensor does, without an aten op
            return {k: _host_tensor(obs[k]) for k in self.keys}
        return {k: torch.as_tensor(np.asarray(obs[k]), device=device) for k in self.keys}


class MiniGridEncoder(ObservationEncoder):
    """Multi-hot (cell, channel, value) embedding of the egocentric view plus a direction embedding.

    image ``[*, H, W, C]`` uint8 with values < ``num_values``; direction ``[*]`` -> ``[*, D]``.
    The view embedding is ``sum_{cell, channel} table[(cell * C + channel) * num_values + value]``.
    """

    keys = ("image", "direction")

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_directions: int,
        d_model: int,
        num_values: int = 16,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(d_model, num_tasks)
        h, w, c = image_shape
        self.image_shape = (h, w, c)
        self.num_values = num_values
        self.num_slots = h * w * c
        self.table = nn.Parameter(torch.randn(self.num_slots * num_values, d_model) * self.num_slots**-0.5)
        self.direction = nn.Embedding(num_directions, d_model)
        nn.init.normal_(self.direction.weight, std=0.02)
        self.register_buffer(
            "offsets", torch.arange(self.num_slots, dtype=torch.long) * num_values, persistent=False
        )

    def indices(self, image: torch.Tensor) -> torch.Tensor:
        """image ``[N, H, W, C]`` -> flat table indices ``[N, H*W*C]``."""
        return image.reshape(image.shape[0], self.num_slots).long() + self.offsets

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        image = obs["image"]
        lead = image.shape[:-3]
        if tuple(image.shape[-3:]) != self.image_shape:
            raise ValueError(f"image must be [*, {self.image_shape}], got {tuple(image.shape)}")
        flat = image.reshape(-1, *self.image_shape)
        if flat.shape[0] >= DEDUPE_MIN_ROWS and not torch.compiler.is_compiling():  # (a data-dependent shape)
            # a segment's views repeat (DoorKey-5x5: 50-80 distinct views in 1024 tokens): embed each
            # distinct view once; the gather's backward sums the gradients of the repeats
            views, inverse = unique_rows(flat.reshape(flat.shape[0], -1))
            emb = F.embedding_bag(self.indices(views), self.table, mode="sum")[inverse]
        else:
            emb = F.embedding_bag(self.indices(flat), self.table, mode="sum")
        emb = emb.reshape(*lead, self.d_model) + self.direction(obs["direction"].long())
        return self._add_task(emb, obs)

    def obs_to_tensor(self, obs: dict[str, np.ndarray], device: torch.device | str) -> dict[str, torch.Tensor]:
        image = np.asarray(obs["image"])
        if image.size and int(image.max()) >= self.num_values:
            raise ValueError(
                f"image values reach {int(image.max())} but the MiniGrid encoder has num_values="
                f"{self.num_values}: raise num_values (values are MiniGrid object/colour/state indices)"
            )
        return super().obs_to_tensor(obs, device)


class TokenEncoder(ObservationEncoder):
    """token ``[*]`` long -> ``[*, D]``."""

    keys = ("token",)

    def __init__(self, vocab_size: int, d_model: int, num_tasks: int | None = None) -> None:
        super().__init__(d_model, num_tasks)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=1.0)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._add_task(self.embedding(obs["token"].long()), obs)


def _discrete_n(space: spaces.Space, key: str) -> int:
    if not isinstance(space, spaces.Discrete):
        raise ValueError(f"observation key {key!r} must be Discrete, got {space}; supported: {SUPPORTED_SPACES}")
    if space.start != 0:
        raise ValueError(f"observation key {key!r} must start at 0, got start={space.start}")
    return int(space.n)


def build_encoder(observation_space: spaces.Space, d_model: int) -> ObservationEncoder:
    """The encoder for ``observation_space`` (see the module docstring for what is supported)."""
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(f"unsupported observation space {observation_space}; supported: {SUPPORTED_SPACES}")
    keys = set(observation_space.spaces)
    num_tasks = _discrete_n(observation_space["task_id"], "task_id") if "task_id" in keys else None
    keys.discard("task_id")
    if keys == {"image", "direction"}:
        image = observation_space["image"]
        if not isinstance(image, spaces.Box) or len(image.shape) != 3:
            raise ValueError(f"'image' must be a Box of shape (H, W, C), got {image}; supported: {SUPPORTED_SPACES}")
        return MiniGridEncoder(
            tuple(int(s) for s in image.shape),
            _discrete_n(observation_space["direction"], "direction"),
            d_model,
            num_tasks=num_tasks,
        )
    if keys == {"token"}:
        return TokenEncoder(_discrete_n(observation_space["token"], "token"), d_model, num_tasks=num_tasks)
    raise ValueError(
        f"unsupported observation space with keys {sorted(observation_space.spaces)}; supported: "
        f"{SUPPORTED_SPACES}. Wrap raw MiniGrid envs so the 'mission' string is dropped."
    )
