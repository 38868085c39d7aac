"""Task envs as plain data: what a checkpoint keeps of a wrapped Gymnasium env, with no pickled object.

A task env (a MiniGrid or recall env under its wrappers, ``envs.tasks``) is saved layer by layer,
outermost first: each layer's instance attributes, except the inner ``env`` and the values fixed when
the env is built (spaces, env specs, classes, functions), which the env it is loaded into already
has. Every saved value becomes data that ``torch.load(weights_only=True)`` reads:

=============================  ===========================================================
value                          encoded as
=============================  ===========================================================
None, bool, int, float, str    itself
list                           a list of encoded items
tuple                          ``{"tuple": [...]}``
dict                           ``{"dict": [[key, value], ...]}`` (both encoded)
numpy array                    ``{"ndarray": nested list, "dtype": "<i8", "shape": [...]}``
numpy scalar                   ``{"numpy": value, "dtype": "<i8"}``
numpy Generator                ``{"generator": bit_generator.state}`` (encoded)
MiniGrid grid, object, room    ``{"object": i}``: entry ``i`` of the env's object table
(RoomGrid's, MultiRoom's and
LockedRoom's rooms)
=============================  ===========================================================

The object table holds MiniGrid's grid, its world objects (walls, doors, keys, ...) and rooms, each
once, as ``{"class": name, "attrs": {...}}``: shared references (the carried key that is also the
env's target object) and cycles (neighbouring rooms) come back as they were. Loading makes only
those classes (named in an allow-list, never imported by name) and sets their attributes; no
constructor, and no code named by the data, runs.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

PLAIN_TYPES = (type(None), bool, int, float, str)
TAGS = ("tuple", "dict", "ndarray", "numpy", "generator", "object")
BIT_GENERATORS = {cls.__name__: cls for cls in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                                                np.random.Philox, np.random.SFC64)}


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def object_classes() -> dict[str, type]:
    """The classes an env state may hold as objects: MiniGrid's grid, rooms and every world object.

    Rooms are RoomGrid's ``Room`` and the plain attribute holders of MultiRoom and LockedRoom
    (``MultiRoomEnv.rooms``, ``LockedRoomEnv.rooms``).
    """
    from minigrid.core.grid import Grid
    from minigrid.core.roomgrid import Room
    from minigrid.core.world_object import WorldObj
    from minigrid.envs.lockedroom import LockedRoom
    from minigrid.envs.multiroom import MultiRoom

    classes, todo = [Grid, Room, MultiRoom, LockedRoom], [WorldObj]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    return {class_name(cls): cls for cls in classes}


def is_static(value: Any) -> bool:
    """Whether ``value`` is fixed when the env is built (not saved: the loading env has it)."""
    return isinstance(value, (gym.Space, EnvSpec)) or callable(value)


def layers(env: gym.Env) -> Iterator[gym.Env]:
    """``env`` and every env it wraps, outermost first."""
    yield env
    while isinstance(env, gym.Wrapper):
        env = env.env
        yield env


def own_attrs(layer: Any) -> dict[str, Any]:
    """The instance attributes of ``layer`` that a state holds (the inner env and static ones left out)."""
    return {k: v for k, v in vars(layer).items() if k != "env" and not is_static(v)}


class Encoder:
    """Encodes values into plain data, collecting the MiniGrid objects they reach in :attr:`objects`."""

    def __init__(self) -> None:
        self.classes = object_classes()
        self.objects: list[dict[str, Any]] = []
        self._index: dict[int, int] = {}
        self._seen: list[Any] = []  # keeps the encoded objects alive, so their ids stay unique

    def attrs(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        return {name: self.value(v, f"{where}.{name}") for name, v in values.items()}

    def value(self, v: Any, where: str) -> Any:
        kind = type(v)
        if kind in PLAIN_TYPES:
            return v
        if kind is list:
            return [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if kind is tuple:
            return {"tuple": [self.value(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if kind is dict:
            return {"dict": [[self.value(k, where), self.value(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            return {"ndarray": v.tolist(), "dtype": v.dtype.str, "shape": list(v.shape)}
        if isinstance(v, np.generic) and v.dtype.kind in "biuf":
            return {"numpy": v.item(), "dtype": v.dtype.str}
        if isinstance(v, np.random.Generator):
            return {"generator": self.value(v.bit_generator.state, f"{where}.bit_generator")}
        if class_name(kind) in self.classes:
            return {"object": self._object(v, where)}
        raise TypeError(
            f"cannot save {where} ({class_name(kind)}) as plain data: env states hold plain values, numpy "
            "arrays and generators, and MiniGrid grids/objects/rooms; keep other state out of the env"
        )

    def _object(self, obj: Any, where: str) -> int:
        key = id(obj)
        if key not in self._index:
            self._index[key] = len(self.objects)
            self._seen.append(obj)
            entry: dict[str, Any] = {"class": class_name(type(obj)), "attrs": {}}
            self.objects.append(entry)
            entry["attrs"] = self.attrs(own_attrs(obj), where)
        return self._index[key]


class Decoder:
    """Decodes what :class:`Encoder` wrote; the object table's objects are made before any is filled."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        classes = object_classes()
        unknown = sorted({entry["class"] for entry in objects} - set(classes))
        if unknown:
            raise ValueError(f"env state names unknown object class(es) {unknown}: it was saved by another "
                             "MiniGrid version or is not a lifelong checkpoint")
        self.objects = [object.__new__(classes[entry["class"]]) for entry in objects]
        for obj, entry in zip(self.objects, objects):
            vars(obj).update({name: self.value(v) for name, v in entry["attrs"].items()})

    def value(self, v: Any) -> Any:
        if type(v) in PLAIN_TYPES:
            return v
        if type(v) is list:
            return [self.value(x) for x in v]
        tag = next((t for t in TAGS if t in v), None) if type(v) is dict else None
        if tag == "tuple":
            return tuple(self.value(x) for x in v["tuple"])
        if tag == "dict":
            return {self.value(k): self.value(x) for k, x in v["dict"]}
        if tag == "ndarray":
            return np.array(v["ndarray"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
        if tag == "numpy":
            return np.dtype(v["dtype"]).type(v["numpy"])
        if tag == "generator":
            return generator_from_state(self.value(v["generator"]))
        if tag == "object":
            return self.objects[v["object"]]
        raise ValueError(f"env state holds {type(v).__name__} {v!r:.80}, which is no encoded value")


def generator_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A numpy Generator at ``state`` (a ``bit_generator.state``; the bit generator from an allow-list)."""
    name = state.get("bit_generator")
    if name not in BIT_GENERATORS:
        raise ValueError(f"unknown numpy bit generator {name!r}: choose from {sorted(BIT_GENERATORS)}")
    bit_generator = BIT_GENERATORS[name]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def env_state_dict(env: gym.Env) -> dict[str, Any]:
    """The state of ``env`` and its wrappers as plain data (see the module docstring)."""
    encoder = Encoder()
    saved = [{"class": class_name(type(layer)),
              "attrs": encoder.attrs(own_attrs(layer), type(layer).__qualname__)} for layer in layers(env)]
    return {"layers": saved, "objects": encoder.objects}


def load_env_state_dict(env: gym.Env, state: dict[str, Any]) -> None:
    """Put ``env`` (built from the same task config) in the state :func:`env_state_dict` saved."""
    targets = list(layers(env))
    names = [class_name(type(layer)) for layer in targets]
    saved = [layer["class"] for layer in state["layers"]]
    if saved != names:
        raise ValueError(f"env state was saved from env layers {saved}, not {names}: load it into an env "
                         "built from the same task config")
    decoder = Decoder(state["objects"])
    for layer, layer_state in zip(targets, state["layers"]):
        restore_attrs(layer, {name: decoder.value(v) for name, v in layer_state["attrs"].items()})


def restore_attrs(layer: Any, attrs: dict[str, Any]) -> None:
    """Make the saved attributes of ``layer`` exactly ``attrs`` (set in its ``__dict__``, past any
    property, and dropping the ones it gained since it was built); static ones stay as built."""
    values = vars(layer)
    for name in [k for k in own_attrs(layer) if k not in attrs]:
        del values[name]
    values.update(attrs)
