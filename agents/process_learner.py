"""PPO in a second process (``agent.overlap=process``): learning from segment k while acting segment k+1.

:class:`~lifelong.agents.ppo.OverlappedLearner` does the same on a second thread, where the acting
loop and the learner share one interpreter lock (each takes it for every op it launches). A process
has its own interpreter. Measured on the 2-core dev VM (DoorKey-5x5, 8 envs, eager,
``OMP_WAIT_POLICY=PASSIVE python benchmarks/throughput.py --threads 2 --segments 12 --overlap
thread|process``, three alternating pairs, 2026-11-29): 1,037 / 1,146 / 1,146 env steps/s on a thread,
1,216 / 1,143 / 1,255 in a process. Either way the acting slows while the learner runs beside it
(0.40 ms per env step alone, 0.49-0.60 beside it; shared caches or memory bandwidth of the host, we
think, not measured).

How the two processes share the work (CPU only):

* the learner's copy of the agent lives in shared memory: the learner process's optimizer steps it in
  place and the acting process reads the new weights from it after the update ends (no copy through
  a pipe); the acting agent is a separate module, so acting never reads weights being updated;
* each segment goes to the learner through a pipe (its tensors moved to shared memory by
  ``torch.multiprocessing``), with the learning rates the loop set (``optimizer.param_groups``,
  which the divergence guard's rollback lowers);
* the optimizer, its RNG and the entropy coefficient stay in the learner process; ``state_dict``
  fetches them, so a checkpoint has the same keys as :class:`OverlappedLearner`'s and either learner
  resumes from it.

The policy lag is the thread learner's (one update) and so is the arithmetic: both learn with one
torch thread from the same segments in the same order, so a seed gives the same lifetime with either
(``tests/agents/test_process_learner.py``).
"""
from __future__ import annotations

import atexit
import copy
import signal
import sys
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
import multiprocessing.util  # noqa: F401  (its exit handler registered before close_all's)
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from lifelong.agents.buffer import RolloutBuffer
from lifelong.agents.policy import LifelongAgent
from lifelong.agents.ppo import LaggedLearner, PPOConfig, PPOLearner


@contextmanager
def main_module_unshared() -> Iterator[None]:
    """Start a spawned process without it re-running the caller's ``__main__`` (which spawn does so
    that the child can unpickle objects defined there): the learner needs nothing from it, and a
    script without an ``if __name__ == "__main__":`` guard would otherwise start itself again."""
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            del main.__spec__


def shut_down(conn: Connection, process: Any) -> None:
    """Ask the learner process to exit (it first ends a pending update), or kill it after 30 s."""
    if process.is_alive():
        try:
            conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    conn.close()


LIVE: weakref.WeakSet = weakref.WeakSet()  # the learners whose process may still run


def close_all() -> None:
    """Close every learner process at interpreter exit. Registered after ``multiprocessing``'s exit
    handler (imported above), so it runs first: that one SIGTERMs daemon processes and waits for
    them, and the learner process ignores SIGTERM (see :func:`serve`)."""
    for learner in list(LIVE):
        learner._finalizer()


atexit.register(close_all)


class LearningRates:
    """The learner's optimizer as the acting process sees it: ``param_groups`` whose ``"lr"`` the loop
    reads (TensorBoard) and sets (rollback); every update sends them to the learner process."""

    def __init__(self, lrs: list[float]) -> None:
        self.param_groups = [{"lr": float(lr)} for lr in lrs]

    def values(self) -> list[float]:
        return [float(group["lr"]) for group in self.param_groups]


def serve(conn: Connection, agent: LifelongAgent, cfg: PPOConfig, compile: bool, seed: int, threads: int,
          decoupled: bool = True) -> None:
    """The learner process: answers ``update``, ``state_dict``, ``load_state_dict`` and ``close``
    messages on ``conn`` with ``("ok", result)`` or ``("error", exception, traceback text)``."""
    # a Ctrl-C or a scheduler's SIGTERM reaches the whole process group: the acting process handles it
    # (a checkpoint, which asks this process for the optimizer), then closes this one
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)
    learner = PPOLearner(agent, cfg, compile=compile, seed=seed, decoupled=decoupled)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the acting process is gone
            return
        kind = message[0]
        try:
            if kind == "update":
                _, buf, reset, features, lrs = message
                for group, lr in zip(learner.optimizer.param_groups, lrs, strict=True):
                    group["lr"] = lr
                result: Any = learner.update(buf, reset=reset, features=features)
            elif kind == "state_dict":
                result = learner.state_dict()
            elif kind == "load_state_dict":
                learner.load_state_dict(message[1])
                result = None
            elif kind == "close":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown message {kind!r}")
            conn.send(("ok", result))
        except Exception as error:  # noqa: BLE001  (sent back and raised in the acting process)
            text = traceback.format_exc()
            try:
                conn.send(("error", error, text))
            except Exception:  # noqa: BLE001  (an exception that does not pickle)
                conn.send(("error", RuntimeError(str(error)), text))


class ProcessLearner(LaggedLearner):
    """PPO in a second process, one update behind the acting (:class:`~lifelong.agents.ppo.LaggedLearner`),
    as ``OverlappedLearner`` does on a thread. ``threads``: the learner process's torch threads. CPU only."""

    def __init__(self, agent: LifelongAgent, cfg: PPOConfig, *, compile: bool, seed: int, threads: int = 1,
                 decoupled: bool = True) -> None:
        devices = {p.device.type for p in agent.parameters()}
        if devices != {"cpu"}:
            raise ValueError(f"agent.overlap=process learns in a second CPU process; the agent is on {sorted(devices)}: "
                             "use agent.overlap=thread (or false) on a GPU")
        super().__init__(agent)
        self.cfg = cfg
        self.learn_agent.share_memory()  # the learner process steps these very storages
        self.optimizer = LearningRates([cfg.lr])
        self.last_grad_norm = 0.0
        context = mp.get_context("spawn")  # no fork: the acting process's OpenMP and autograd threads stay out
        self._conn, child = context.Pipe()
        self._process = context.Process(target=serve, args=(child, self.learn_agent, cfg, compile, seed, threads, decoupled),
                                        name="ppo-learner", daemon=True)
        with main_module_unshared():
            self._process.start()
        child.close()
        self._finalizer = weakref.finalize(self, shut_down, self._conn, self._process)  # when collected
        self._finalizer.atexit = False  # at exit: close_all, before multiprocessing's handler
        LIVE.add(self)
        self._pending = False
        self._inflight: tuple | None = None  # the segment being learned (its shared storages stay alive)

    # ---- talking to the learner process --------------------------------------------------------
    def _send(self, *message: Any) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError) as error:
            raise RuntimeError(self._died()) from error

    def _receive(self) -> Any:
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as error:
            raise RuntimeError(self._died()) from error
        if reply[0] == "error":
            _, error, text = reply
            raise error from RuntimeError(f"in the learner process:\n{text}")
        return reply[1]

    def _died(self) -> str:
        self._process.join(timeout=5)
        return (f"the learner process ended unexpectedly (exit code {self._process.exitcode}); "
                "agent.overlap=thread or false learns in this process")

    def _start(self, buf: RolloutBuffer, reset: torch.Tensor | None, features: bool) -> None:
        self._inflight = (buf, reset)
        self._send("update", buf, reset, features, self.optimizer.values())
        self._pending = True

    def _wait(self) -> dict[str, Any] | None:
        if not self._pending:
            return None
        self._pending = False
        try:
            stats = self._receive()
        finally:
            self._inflight = None
        self.last_grad_norm = float(stats.get("losses/grad_norm", self.last_grad_norm))
        return stats

    # ---- checkpoints and closing ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """``OverlappedLearner``'s checkpoint: the optimizer, its RNG, the entropy coefficient, the
        learner's weights and the statistics not yet returned."""
        self._settle()
        self._send("state_dict")
        inner = copy.deepcopy(self._receive())  # out of shared memory
        weights = {k: v.detach().clone() for k, v in self.learn_agent.state_dict().items()}
        return {**inner, "learn_agent": weights, "stats": copy.deepcopy(self._stats)}

    def load_state_dict(self, sd: dict) -> None:
        if self._pending:  # an update of a state being replaced: wait for it, drop it
            try:
                self._settle()
            except Exception:  # noqa: BLE001  (its result is replaced anyway)
                pass
        self._send("load_state_dict", {k: sd[k] for k in PPOLearner.STATE_KEYS if k in sd})
        self._receive()
        self.learn_agent.load_state_dict(sd["learn_agent"])  # in place: the learner process sees it
        self.optimizer = LearningRates([g["lr"] for g in sd["optimizer"]["param_groups"]])
        self._stats = dict(sd.get("stats", {}))

    def close(self) -> None:
        """Stop the learner process (after its pending update); idempotent. Also run when the learner
        is garbage-collected and at interpreter exit."""
        try:
            self._settle()
        except Exception:  # noqa: BLE001  (closing: the error was or will be raised elsewhere)
            pass
        self._finalizer()
