"""The lifetime tracker (DESIGN.md section 7): online figures, probe bookkeeping, the matrix R with
its confidence intervals, TensorBoard output, ``summary.json`` and ``probes.json``.

Protocol (called by the lifetime loop, ``agents/loop.py``, with what the streams report):

- ``log_task_switch(step, task, visit, block_index)`` when a lifetime's stream starts a block (block
  0 included; every lifetime reports it, the first report starts it). Blocks are synchronous
  (docs/blocks.md): the :class:`~lifelong.tracking.blocks.BlockLedger` places block k at the same env
  steps in every lifetime;
- ``log_episode(..., block_index)`` for every finished episode, credited to the block its own
  lifetime's stream reported with it (no episode spans two blocks);
- ``probe_plan(block_end, step)`` says which tasks a probe covers and with how many episodes;
  ``log_probe(step, results, block_end)`` records it: the probe at the end of block k
  (``block_end=k``) fills row k of R, the probe at step 0 gives the baseline b_j, periodic probes
  (every ``probe_every`` env steps, ``should_probe``) fill the probe curves. Every episode of every
  probe is kept (``probes.json``); each entry gets a 95% bootstrap CI over lifetimes and episodes;
- ``finalize()`` at the end: final figures with their CIs, hparams, ``summary.json``.

TensorBoard: the run's own directory holds the run-level scalars, the hparams and an image of the
probe curves with blocks shaded (``probes/success_over_lifetime``, redrawn at every block end); each
task's curves go to its own run ``<run_dir>/tasks/<task>`` under the same tags (``probe/success``,
``train/success``, ...), so one chart shows one line per task, each in its own colour.

Reference runs (Continual World forward transfer): a single-task run of task ``j`` whose
``summary.json`` lies at ``<run_dir>/reference/<j>/summary.json`` (where ``lifelong run ...
reference=true`` writes them), one block as long as the run's blocks, probed as often. AUC_j is the
area under task j's *evaluated* success (its probe curve) over its first block, AUC_j^ref the same in
the reference run; FT_j = (AUC_j - AUC_j^ref) / (1 - AUC_j^ref) (Wolczyk et al. 2021). Reference runs
that finish *after* the main run (the CLI runs them afterwards) are folded in by
``apply_reference_runs(run_dir)``, which rewrites the run's ``summary.json``.

Undefined figures (one task: forgetting, BWT, FWT; no reference: forward_transfer_cw) are NaN in
Python, ``null`` in ``summary.json`` and absent from TensorBoard (never written as 0).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lifelong.tracking import metrics as M
from lifelong.tracking.blocks import BlockLedger
from lifelong.tracking.confidence import cl_metrics_ci, entry_ci
from lifelong.tracking.curves import EpisodeCurve, to_jsonable, write_json_atomic
from lifelong.tracking.figures import probe_curve_figure
from lifelong.tracking.plasticity import ActivityBuffer, feature_effective_rank, weight_magnitude
from lifelong.tracking.tensorboard import RunWriter, custom_scalars_layout

__all__ = ["Tracker", "first_block_auc", "load_reference_summaries", "with_reference_transfer", "apply_reference_runs"]

_FINAL_TAGS = ("acc", "forgetting", "bwt", "fwt", "learning_accuracy", "retention")
TASK_RUNS = "tasks"  # <run_dir>/tasks/<task>: each task's TensorBoard run
TRACKER_STATE_VERSION = 3  # 3: synchronous blocks, every probe episode kept


#: block ends drawn as the probe-curve image while the lifetime is young (then ever sparser, below)
PROBE_FIGURE_BASE = 8


def draws_probe_figure(block_ends: int, base: int = PROBE_FIGURE_BASE) -> bool:
    """Whether the ``block_ends``-th block end (1-based) redraws ``probes/success_over_lifetime``: every
    one below ``2 * base``, then every 2nd below ``4 * base``, every 4th below ``8 * base``, and so on,
    so n blocks draw about ``base * (1 + log2(n / base))`` images (each takes ~0.5-1 s and grows with
    the probes drawn; a 250-block stream drawn at every block end spent most of its wall time there).
    The lifetime's last probe is always drawn (``finalize``)."""
    stride = 1
    while block_ends >= 2 * base * stride:
        stride *= 2
    return block_ends % stride == 0


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def first_block_auc(summary: Mapping[str, Any], task: str) -> float:
    """Area under ``task``'s evaluated success (its probe curve) over its first block, time normalised
    to [0, 1] (``metrics.evaluated_auc``), from a summary dict (``summary.json`` of this or of a
    single-task reference run); NaN without probe points in the block."""
    curve = summary.get("probe_curves", {}).get(task)
    for block in summary.get("blocks", []):
        if block["task"] == task and curve:
            end = max(block["end"], block["start"] + 1)
            return M.evaluated_auc(curve["step"], curve["success"], block["start"], end)
    return math.nan


def load_reference_summaries(reference_dir: str | Path, task_names: Sequence[str]) -> dict[str, dict]:
    """``{task: summary}`` for every ``<reference_dir>/<task>/summary.json`` that exists."""
    found = {}
    for task in task_names:
        path = Path(reference_dir) / task / "summary.json"
        if path.is_file():
            found[task] = json.loads(path.read_text())
    return found


def with_reference_transfer(summary: dict[str, Any], references: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Fill Continual World forward transfer into a run's summary dict from reference summaries.

    Per task: ``transfer[task] = {auc, auc_reference}``, ``tasks[task]["forward_transfer_cw"]`` =
    (AUC - AUC_ref) / (1 - AUC_ref); ``cl["forward_transfer_cw"]`` is their mean (NaN if none)."""
    fts = []
    transfer = summary.setdefault("transfer", {})
    for task in summary["task_names"]:
        auc = first_block_auc(summary, task)
        auc_ref = first_block_auc(references[task], task) if task in references else math.nan
        ft = M.forward_transfer_cw(auc, auc_ref)
        transfer[task] = {"auc": auc, "auc_reference": auc_ref}
        summary.setdefault("tasks", {}).setdefault(task, {})["forward_transfer_cw"] = ft
        fts.append(ft)
    summary.setdefault("cl", {})["forward_transfer_cw"] = _nanmean(fts)
    return summary


def apply_reference_runs(run_dir: str | Path) -> dict[str, Any]:
    """After ``lifelong run ... reference=true`` has written ``<run_dir>/reference/<task>/``:
    recompute forward transfer in ``<run_dir>/summary.json`` (rewritten atomically) and log the
    final ``cl/forward_transfer_cw`` to the run's TensorBoard. Returns the updated summary."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: finish the run (Tracker.finalize) before applying reference runs")
    summary = json.loads(path.read_text())
    refs = load_reference_summaries(run_dir / "reference", summary["task_names"])
    with_reference_transfer(summary, refs)
    write_json_atomic(path, summary)
    writer = RunWriter(run_dir)
    writer.scalar("cl/forward_transfer_cw", summary["cl"]["forward_transfer_cw"], int(summary.get("steps", 0)))
    writer.close()
    return summary


class Tracker:
    """Lifetime tracker writing TensorBoard events, ``summary.json`` and ``probes.json`` into ``run_dir``.

    Build it with :meth:`from_config` (the ``tracker:`` section of ``configs/config.yaml``, where
    each setting is described); the constructor takes every setting explicitly. ``ledger`` places
    the blocks (:class:`~lifelong.tracking.blocks.BlockLedger`); ``run_info`` (seed, config,
    config_key, memory, stream) is copied into ``summary.json`` so that ``lifelong compare`` groups
    runs by their whole configuration.
    """

    #: the keys of the ``tracker:`` config the tracker reads (the loop reads ``log_every``)
    CONFIG_KEYS = ("probe_every", "probe_episodes", "curve_probe_episodes", "adaptation_k", "revisit_window",
                   "episode_log_every", "dormant_window", "dormant_threshold", "dormant_tau", "curve_points",
                   "bootstrap_samples")

    def __init__(
        self,
        run_dir: str | Path,
        task_names: Sequence[str],
        hparams: Mapping[str, Any],
        *,
        ledger: BlockLedger,
        probe_every: int,
        probe_episodes: int,
        curve_probe_episodes: int,
        adaptation_k: int,
        revisit_window: int,
        episode_log_every: int,
        dormant_window: int,
        dormant_threshold: float,
        dormant_tau: float,
        curve_points: int,
        bootstrap_samples: int,
        run_info: Mapping[str, Any] | None = None,
    ) -> None:
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be a non-empty list of unique names (stream.task_names), got {names}")
        unknown = [task for task, _ in ledger.schedule if task not in names]
        if unknown:
            raise ValueError(f"the block schedule names task(s) {unknown} that are not in task_names={names}")
        if probe_every < 0 or adaptation_k < 1 or revisit_window < 1 or episode_log_every < 0:
            raise ValueError(
                f"need tracker.probe_every >= 0 (0 disables periodic probes), adaptation_k >= 1, "
                f"revisit_window >= 1, episode_log_every >= 0; got {probe_every}, {adaptation_k}, "
                f"{revisit_window}, {episode_log_every}"
            )
        if probe_episodes < 1 or curve_probe_episodes < 1 or bootstrap_samples < 100:
            raise ValueError(f"need tracker.probe_episodes >= 1, curve_probe_episodes >= 1 and bootstrap_samples "
                             f">= 100; got {probe_episodes}, {curve_probe_episodes}, {bootstrap_samples}")
        self.run_dir = Path(run_dir)
        self.task_names = names
        self.hparams = dict(hparams)
        self.ledger = ledger
        self.run_info = dict(run_info or {})
        self.probe_every = int(probe_every)
        self.probe_episodes = int(probe_episodes)
        self.curve_probe_episodes = int(curve_probe_episodes)
        self.adaptation_k = int(adaptation_k)
        self.revisit_window = int(revisit_window)
        self.curve_points = int(curve_points)
        self.episode_log_every = int(episode_log_every)
        self.bootstrap_samples = int(bootstrap_samples)
        self._dormant_window = int(dormant_window)
        self._dormant_threshold = float(dormant_threshold)
        self._dormant_tau = float(dormant_tau)
        self.tb = RunWriter(self.run_dir)
        self.task_tb = {task: RunWriter(self.run_dir / TASK_RUNS / task) for task in self.task_names}
        self.tb.layout(custom_scalars_layout())
        self._reset_state()

    @classmethod
    def from_config(cls, run_dir: str | Path, task_names: Sequence[str], hparams: Mapping[str, Any],
                    tracker_cfg: Mapping[str, Any], ledger: BlockLedger,
                    run_info: Mapping[str, Any] | None = None) -> "Tracker":
        """A tracker with every setting of :attr:`CONFIG_KEYS` read from ``tracker_cfg`` (the
        ``tracker:`` section of ``configs/config.yaml``; a DictConfig or a dict)."""
        missing = [key for key in cls.CONFIG_KEYS if key not in tracker_cfg]
        if missing:
            raise ValueError(f"the tracker config lacks {missing}: give every key of the `tracker:` section of "
                             f"configs/config.yaml ({', '.join(cls.CONFIG_KEYS)})")
        return cls(run_dir, task_names, hparams, ledger=ledger, run_info=run_info,
                   **{key: tracker_cfg[key] for key in cls.CONFIG_KEYS})

    def _reset_state(self) -> None:
        self.last_step = 0
        self.probe_env_steps = 0
        self._next_probe = 0
        self._blocks: list[dict] = []          # ordered by index; see _new_block
        self._curves: dict[int, EpisodeCurve] = {}
        self._probes: list[dict] = []          # every probe: see _record_probe
        self._figure_step: int | None = None   # the step of the newest probe-curve image
        self._revisits: list[dict] = []
        self._frozen_sum = [0.0] * self.adaptation_k
        self._frozen_count = [0] * self.adaptation_k
        self._last: dict[str, float] = {}     # last value of every scalar tag written (main run)
        self._activity: dict[str, ActivityBuffer] = {}
        self._episode_acc: dict[str, list[float]] = {}  # task -> [sum return, sum success, sum length, n]
        self._episode_flushed_at = 0
        self._replay: dict | None = None        # the switch-replay probe (tracking/replay.py), once taken

    # ---- helpers ---------------------------------------------------------------------------
    def _scalar(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        self._last[tag] = value
        self.tb.scalar(tag, value, step)

    def _task_scalar(self, task: str, tag: str, value: float, step: int) -> None:
        """A per-task curve: tag ``tag`` in the task's own TensorBoard run (``run_dir/tasks/<task>``), so
        one chart holds one line per task, each in its own colour."""
        self._last[f"{TASK_RUNS}/{task}/{tag}"] = float(value)
        self.task_tb[task].scalar(tag, value, step)

    def _writers(self) -> dict[str, RunWriter]:
        return {"": self.tb, **{f"{TASK_RUNS}/{task}": w for task, w in self.task_tb.items()}}

    @staticmethod
    def _step(step: int) -> int:
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0 (lifetime env steps), got {step}")
        return step

    def _see(self, step: int) -> int:
        """``step`` checked and counted as seen (call it once a call is accepted: a refused call leaves no trace)."""
        step = self._step(step)
        self.last_step = max(self.last_step, step)
        return step

    def _check_task(self, task_name: str) -> None:
        if task_name not in self.task_names:
            raise ValueError(f"unknown task {task_name!r}: the tracker was built with task_names={self.task_names}")

    def _block(self, index: int) -> dict | None:
        for block in reversed(self._blocks):
            if block["index"] == index:
                return block
        return None

    def _latest_block(self, task_name: str, before: int | None = None) -> dict | None:
        for block in reversed(self._blocks):
            if block["task"] == task_name and (before is None or block["index"] < before):
                return block
        return None

    @property
    def current_block(self) -> int:
        """The index of the newest block started (0 before any)."""
        return self._blocks[-1]["index"] if self._blocks else 0

    def _new_block(self, index: int) -> dict:
        """Start block ``index`` (its task, visit and position come from the ledger)."""
        task = self.ledger.task(index)
        previous = self._latest_block(task, before=index)
        block = {
            "index": int(index), "task": task, "visit": self.ledger.visit(index),
            "start": self.ledger.start(index), "end": self.ledger.end(index),
            "episodes": 0, "success_sum": 0.0, "return_sum": 0.0,
            "head": [], "tail": [],                       # first / last `revisit_window` successes
            "adapt_sum": [0.0] * self.adaptation_k, "adapt_count": [0] * self.adaptation_k,
            "adapt_logged": False,
            "revisit_of": None if previous is None else previous["index"], "revisit_done": previous is None,
        }
        self._blocks.append(block)
        self._curves[block["index"]] = EpisodeCurve(self.curve_points)
        return block

    def _flush_adaptation(self, block: dict, step: int) -> None:
        """Log the block's mean return of its k-th episodes (not for the lifetime's first block)."""
        if block["adapt_logged"] or block["index"] == 0:
            return
        block["adapt_logged"] = True
        for k, (s, n) in enumerate(zip(block["adapt_sum"], block["adapt_count"]), start=1):
            if n:
                self._scalar(f"adaptation/episode_{k}", s / n, step)

    def _maybe_log_revisit(self, block: dict, step: int, force: bool = False) -> None:
        """Revisit forgetting = mean success over the last W episodes of the task's previous block
        minus the mean over the first W episodes of this one (logged once W are in, or at close)."""
        if block["revisit_done"] or not (force or len(block["head"]) >= self.revisit_window):
            return
        prev = self._block(block["revisit_of"])
        if prev is None or not prev["tail"] or not block["head"]:
            return
        block["revisit_done"] = True
        value = float(np.mean(prev["tail"]) - np.mean(block["head"]))
        self._revisits.append({"task": block["task"], "visit": block["visit"], "block": block["index"], "step": int(step), "value": value})
        self._task_scalar(block["task"], "forgetting/revisit", value, step)

    # ---- online logging --------------------------------------------------------------------
    def log_task_switch(self, step: int, task_name: str, visit: int, block_index: int) -> None:
        """A lifetime's stream started block ``block_index`` of ``task_name`` (its reset token at
        ``step``). Every lifetime reports it; the first report starts the block, the others must agree."""
        step = self._step(step)
        self._check_task(task_name)
        block_index = int(block_index)
        expected = self.ledger.task(block_index), self.ledger.visit(block_index)
        if (task_name, int(visit)) != expected:
            raise ValueError(
                f"a stream reported block {block_index} as {task_name!r} visit {visit}, but the schedule has "
                f"{expected[0]!r} visit {expected[1]} there: the tracker's block schedule must be the stream's"
            )
        if self._block(block_index) is None and self._blocks and block_index != self._blocks[-1]["index"] + 1:
            raise ValueError(f"block {block_index} started after block {self._blocks[-1]['index']}: blocks are never skipped")
        self._see(step)
        if self._block(block_index) is not None:
            return
        old = self._blocks[-1] if self._blocks else None
        if old is not None:
            self._flush_episodes(step)
            self._maybe_log_revisit(old, step, force=True)
            self._flush_adaptation(old, step)
        block = self._new_block(block_index)
        start = block["start"]
        self._scalar("charts/task_id", self.task_names.index(task_name), start)
        self._scalar("charts/block", block_index, start)
        self.tb.text("task_switch", f"env step {start}: block {block_index} -> **{task_name}** (visit {visit})", start)

    def log_episode(
        self,
        step: int,
        task_name: str,
        episode_return: float,
        episode_length: int,
        success: float,
        episodes_since_switch: int,
        block_index: int | None = None,
    ) -> None:
        """One finished episode of block ``block_index`` (the block its lifetime's stream reported with
        it; None: the newest block of ``task_name``). ``episodes_since_switch`` = 1 for the first
        episode of the lifetime's block."""
        step = self._step(step)
        self._check_task(task_name)
        if episodes_since_switch < 1:
            raise ValueError(
                f"episodes_since_switch counts finished episodes since the task switch, starting at 1 "
                f"(got {episodes_since_switch}): pass count + 1"
            )
        if block_index is None:
            block = self._latest_block(task_name)
            if block is None:
                raise ValueError(f"an episode of {task_name!r} ended before any block of it started: call log_task_switch first")
        else:
            block = self._block(int(block_index))
            if block is None:
                raise ValueError(f"an episode of block {block_index} ended before the block started: call "
                                 f"log_task_switch(step, task, visit, block_index={block_index}) first")
            if block["task"] != task_name:
                raise ValueError(f"an episode of {task_name!r} was credited to block {block_index}, a block of {block['task']!r}")
        self._see(step)
        success, ret = float(success), float(episode_return)
        acc = self._episode_acc.setdefault(task_name, [0.0, 0.0, 0.0, 0])
        acc[0] += ret
        acc[1] += success
        acc[2] += float(episode_length)
        acc[3] += 1
        if step - self._episode_flushed_at >= self.episode_log_every:
            self._flush_episodes(step)
        self._curves[block["index"]].add(step, success, ret, float(episode_length))
        block["episodes"] += 1
        block["success_sum"] += success
        block["return_sum"] += ret
        if len(block["head"]) < self.revisit_window:
            block["head"].append(success)
        block["tail"] = (block["tail"] + [success])[-self.revisit_window :]
        if episodes_since_switch <= self.adaptation_k:
            block["adapt_sum"][episodes_since_switch - 1] += ret
            block["adapt_count"][episodes_since_switch - 1] += 1
        self._maybe_log_revisit(block, step)

    def _flush_episodes(self, step: int) -> None:
        """Write each task's training episodes (``train/{return,success,length}`` in its task run):
        means over the episodes since the last flush (every ``episode_log_every`` steps, at task
        switches and at the end) rather than one TB event per episode, which would slow the loop down."""
        for task, (ret, success, length, n) in self._episode_acc.items():
            if n:
                self._task_scalar(task, "train/return", ret / n, step)
                self._task_scalar(task, "train/success", success / n, step)
                self._task_scalar(task, "train/length", length / n, step)
        self._episode_acc = {}
        self._episode_flushed_at = step

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Free-form scalars, e.g. ``{"losses/policy": .., "charts/sps": ..}``."""
        step = self._see(step)
        for tag, value in scalars.items():
            self._scalar(tag, value, step)

    def log_memory(self, step: int, state_metrics: Mapping[str, Mapping[str, float]]) -> None:
        """``{"layer0": {"state_norm": ..}}`` (Backbone.state_metrics) -> ``memory/layer0/state_norm``."""
        step = self._see(step)
        for layer, values in state_metrics.items():
            for name, value in values.items():
                self._scalar(f"memory/{layer}/{name}", value, step)

    def log_plasticity(
        self,
        step: int,
        features: Mapping[str, torch.Tensor],
        model: nn.Module | None,
        grad_norm: float | None,
    ) -> None:
        """features ``{layer: [N, D]}`` post-activation samples; ``model`` for the weight magnitude.

        ``plasticity/dormant_tau/<layer>``: Sokar et al. 2023's tau-dormant fraction (``dormant_tau``);
        ``plasticity/zero_activation_frac/<layer>``: units active on at most ``dormant_threshold`` of
        the samples."""
        step = self._see(step)
        for layer, feats in features.items():
            buf = self._activity.get(layer)
            if buf is None:
                buf = self._activity[layer] = ActivityBuffer(self._dormant_window, self._dormant_threshold)
            buf.update(feats)
            self._scalar(f"plasticity/zero_activation_frac/{layer}", buf.zero_activation_fraction(), step)
            self._scalar(f"plasticity/dormant_tau/{layer}", buf.tau_dormant_fraction(self._dormant_tau), step)
            if feats.shape[0] >= 2:
                self._scalar(f"plasticity/erank/{layer}", feature_effective_rank(feats), step)
        if model is not None:
            self._scalar("plasticity/weight_norm", weight_magnitude(model), step)
        if grad_norm is not None:
            self._scalar("plasticity/grad_norm", float(grad_norm), step)

    # ---- probes and R ----------------------------------------------------------------------
    def should_probe(self, step: int) -> bool:
        """True once ``step`` reaches the next multiple of ``probe_every`` (step 0 included)."""
        return self.probe_every > 0 and int(step) >= self._next_probe

    def probe_plan(self, block_end: int | None, step: int) -> tuple[list[str], int]:
        """(tasks, episodes per task) of the probe due at ``step``: at step 0 every task (the baseline
        b_j); at the end of block k the tasks trained in blocks 0..k and the next block's task (row k
        of R; R[k, k+1] is what GEM's forward transfer reads), ``probe_episodes`` each; a periodic
        probe covers every task with ``curve_probe_episodes`` (the probe curves)."""
        if block_end is not None:
            tasks = self.ledger.tasks_through(int(block_end) + 1)
            return [t for t in self.task_names if t in tasks], self.probe_episodes
        if int(step) == 0:
            return list(self.task_names), self.probe_episodes
        return list(self.task_names), self.curve_probe_episodes

    def log_probe(self, step: int, results: Mapping[str, Any], block_end: int | None = None) -> None:
        """Record a probe: ``results`` maps task -> success, or task -> ``probe_task``'s dict
        (``success``, optional ``return``, ``steps``, ``episode_returns``, ``success_matrix`` /
        ``return_matrix`` ``[B][E]``: every episode). ``block_end=k`` fills row k of R; the probe at
        step 0 sets the baseline b_j."""
        step = self._step(step)
        record = self._record_probe(step, results, block_end)
        self._see(step)
        # the task the lifetimes were trained on up to this probe (the ledger's, not the newest block
        # reported: a lifetime may already have started block k+1 on the step that ends block k)
        current = self.ledger.task(int(block_end) if block_end is not None else self.ledger.block_at(step))
        frozen_sum = [0.0] * self.adaptation_k
        frozen_count = [0] * self.adaptation_k
        for task, entry in record["tasks"].items():
            self._task_scalar(task, "probe/success", entry["mean"], step)
            if entry["return"] is not None:
                self._task_scalar(task, "probe/return", entry["return"], step)
            if task != current:  # a probe on another task is a task switch seen with learning off
                for k, r in enumerate(entry["episode_returns"][: self.adaptation_k]):
                    frozen_sum[k] += float(r)
                    frozen_count[k] += 1
        for k in range(self.adaptation_k):
            if frozen_count[k]:
                self._scalar(f"adaptation_frozen/episode_{k + 1}", frozen_sum[k] / frozen_count[k], step)
                self._frozen_sum[k] += frozen_sum[k]
                self._frozen_count[k] += frozen_count[k]
        self._scalar("charts/probe_env_steps", self.probe_env_steps, step)
        if block_end is not None:
            figures = self._cl_figures()
            for name in _FINAL_TAGS:
                self._scalar(f"cl/{name}", figures[name], step)
            for task, value in zip(self.task_names, figures["forgetting_per_task"]):
                self._task_scalar(task, "cl/forgetting", value, step)
            if draws_probe_figure(sum(p["block_end"] is not None for p in self._probes)):
                self._log_probe_figure(step)
        if self.probe_every > 0:
            self._next_probe = (step // self.probe_every + 1) * self.probe_every

    def _record_probe(self, step: int, results: Mapping[str, Any], block_end: int | None) -> dict:
        """Keep every episode of a probe and each task's mean and 95% CI (``probes.json``).

        A result given as a plain success value (or a dict without ``success_matrix``) has no
        per-episode data: its mean is kept, its CI is NaN and it counts 0 episodes."""
        if block_end is not None:
            block_end = int(block_end)
            if self._block(block_end) is None:
                raise ValueError(
                    f"log_probe(block_end={block_end}) but block {block_end} was never started: call "
                    f"log_task_switch(step, task, visit, block_index={block_end}) when it begins"
                )
        tasks: dict[str, dict] = {}
        for task, value in results.items():
            self._check_task(task)
            entry = dict(value) if isinstance(value, Mapping) else {"success": float(value)}
            if "success" not in entry and "success_matrix" not in entry:
                raise ValueError(f"probe result for {task!r} has no 'success' (got keys {sorted(entry)})")
            matrix = None
            if entry.get("success_matrix") is not None:
                matrix = np.asarray(entry["success_matrix"], dtype=float)
                if matrix.ndim != 2 or matrix.size == 0:
                    raise ValueError(f"probe result for {task!r}: success_matrix must be [lifetimes][episodes], "
                                     f"got shape {matrix.shape}")
            if matrix is not None:
                mean = float(matrix.mean())
                low, high = entry_ci(matrix, n_boot=self.bootstrap_samples, rng=np.random.default_rng(step))
            else:
                mean, low, high = float(entry["success"]), math.nan, math.nan
            tasks[task] = {
                "mean": mean, "low": low, "high": high, "episodes": 0 if matrix is None else int(matrix.size),
                "return": float(entry["return"]) if entry.get("return") is not None else None,
                "episode_returns": [float(r) for r in entry.get("episode_returns", [])],
                "success_matrix": None if matrix is None else matrix.tolist(),
                "return_matrix": to_jsonable(entry.get("return_matrix")),
                "steps": int(entry.get("steps", 0)),
            }
        for entry in tasks.values():
            self.probe_env_steps += entry["steps"]
        if block_end is not None:
            self._probes = [p for p in self._probes if p["block_end"] != block_end]  # a repeated row: the newest counts
        record = {"step": int(step), "block_end": block_end, "tasks": tasks}
        self._probes.append(record)
        return record

    def _rows(self) -> list[dict]:
        return sorted((p for p in self._probes if p["block_end"] is not None), key=lambda p: p["block_end"])

    def matrix(self) -> tuple[np.ndarray, list[int], list[int]]:
        """(R ``[K, N]`` over the rows filled so far, block_tasks ``[K]`` columns, block indices ``[K]``)."""
        rows = self._rows()
        R = np.full((len(rows), len(self.task_names)), math.nan)
        for r, probe in enumerate(rows):
            for task, entry in probe["tasks"].items():
                R[r, self.task_names.index(task)] = entry["mean"]
        block_tasks = [self.task_names.index(self.ledger.task(p["block_end"])) for p in rows]
        return R, block_tasks, [p["block_end"] for p in rows]

    def _baseline_probe(self) -> dict | None:
        return next((p for p in self._probes if p["step"] == 0), None)

    def baseline(self) -> np.ndarray:
        """b ``[N]`` from the step-0 probe (NaN for tasks it did not cover)."""
        probe = self._baseline_probe()
        tasks = probe["tasks"] if probe else {}
        return np.array([tasks[t]["mean"] if t in tasks else math.nan for t in self.task_names])

    def _cl_figures(self) -> dict[str, Any]:
        R, block_tasks, _ = self.matrix()
        if R.shape[0] == 0:
            nan_list = [math.nan] * len(self.task_names)
            return {name: math.nan for name in (*_FINAL_TAGS, "forgetting_cw")} | {
                "forgetting_per_task": nan_list, "forgetting_cw_per_task": nan_list}
        return M.cl_metrics(R, block_tasks, self.baseline())

    def _cl_intervals(self) -> tuple[dict[str, tuple[float, float]], str | None]:
        """95% bootstrap CIs of the figures from R (lifetimes resampled jointly, episodes within), and
        why they are missing (None when computed). The bootstrap needs every entry of R as a
        ``success_matrix`` over the same lifetimes; a baseline that does not fit only costs FWT its CI."""
        rows = self._rows()
        if not rows:
            return {}, "no row of R yet"
        plain = [f"R[{p['block_end']}][{t}]" for p in rows for t, e in p["tasks"].items() if e["success_matrix"] is None]
        if plain:
            return {}, (f"no bootstrap: {', '.join(plain[:3])}{' ...' if len(plain) > 3 else ''} were logged as plain "
                        f"success values, without per-episode results (log probe_task's success_matrix)")
        entries = [[np.asarray(p["tasks"][t]["success_matrix"]) if t in p["tasks"] else None for t in self.task_names]
                   for p in rows]
        sizes = sorted({e.shape[0] for row in entries for e in row if e is not None})
        if len(sizes) > 1:
            return {}, f"no bootstrap: the entries of R hold different numbers of lifetimes ({sizes})"
        note, baseline = None, None
        base = self._baseline_probe()
        if base is not None and sizes:
            measured = {t: e["success_matrix"] for t, e in base["tasks"].items()}
            if all(m is not None and np.shape(m)[0] == sizes[0] for m in measured.values()):
                baseline = [np.asarray(measured[t]) if t in measured else None for t in self.task_names]
            else:
                note = "fwt has no interval: the step-0 baseline has no per-episode results over R's lifetimes"
        _, block_tasks, _ = self.matrix()
        return cl_metrics_ci(entries, block_tasks, baseline, n_boot=self.bootstrap_samples, seed=0), note

    def probe_curves(self) -> dict[str, dict[str, list]]:
        """Every probe of each task over the lifetime: ``{task: {step, success, low, high, episodes}}``."""
        curves = {task: {"step": [], "success": [], "low": [], "high": [], "episodes": []} for task in self.task_names}
        for probe in sorted(self._probes, key=lambda p: p["step"]):
            for task, entry in probe["tasks"].items():
                curve = curves[task]
                curve["step"].append(probe["step"])
                curve["success"].append(entry["mean"])
                curve["low"].append(entry["low"])
                curve["high"].append(entry["high"])
                curve["episodes"].append(entry["episodes"])
        return curves

    def _log_probe_figure(self, step: int) -> None:
        """The probe success of every task over the lifetime, blocks shaded by task, as a TensorBoard
        image (``probes/success_over_lifetime``): an image is not smoothed, unlike a scalar marker."""
        self._figure_step = step
        figure = probe_curve_figure(self.probe_curves(), self._block_spans(), self.task_names,
                                    title=f"{self.run_dir.name}: probe success (95% CI) by task")
        self.tb.figure("probes/success_over_lifetime", figure, step)

    def _block_spans(self) -> list[dict]:
        return [{"index": b["index"], "task": b["task"], "start": b["start"], "end": min(b["end"], max(self.last_step, b["start"]))}
                for b in self._blocks]

    # ---- in-context versus in-weight forgetting --------------------------------------------
    def replay_tasks(self) -> tuple[str, str] | None:
        """(A, B) of the switch-replay probe: block 0's task and the first other task of the schedule
        (None for a single-task stream)."""
        a = self.ledger.task(0)
        b = next((task for task, _ in self.ledger.schedule if task != a), None)
        return None if b is None else (a, b)

    def log_replay(self, step: int, result: Mapping[str, Any]) -> None:
        """Record a switch-replay probe (``tracking.replay.SwitchReplay``): A's success in the k-th episode
        after the return, with the memory carried and with it reset at the switch."""
        step = self._see(step)
        self._replay = json.loads(json.dumps(to_jsonable(dict(result))))
        for name in ("carried", "reset"):
            for k, value in enumerate(result[name]["success"], start=1):
                self._scalar(f"in_context/{name}/episode_{k}", value, step)
            self._scalar(f"in_context/{name}/recovery_episodes", result[name]["recovery_episodes"], step)

    # ---- final figures ---------------------------------------------------------------------
    def _adaptation_online(self, later_half: bool = False) -> list[float]:
        """Mean return of the k-th training episode after a switch, k = 1..adaptation_k, averaged over the
        lifetime's switches (each block but the first); ``later_half``: over the later half of them only
        (the middle one included when their count is odd), the agent's adaptation once it has trained."""
        sums = [0.0] * self.adaptation_k
        counts = [0] * self.adaptation_k
        switches = self._blocks[1:]  # the first block follows no switch
        if later_half:
            switches = switches[len(switches) // 2:]
        for block in switches:
            for k in range(self.adaptation_k):
                if block["adapt_count"][k]:
                    sums[k] += block["adapt_sum"][k] / block["adapt_count"][k]
                    counts[k] += 1
        return [s / n if n else math.nan for s, n in zip(sums, counts)]

    def summary(self) -> dict[str, Any]:
        """Every final figure, R with its intervals, the probe curves and the per-block training curves
        (the content of ``summary.json``; the per-episode probe results go to ``probes.json``)."""
        R, block_tasks, indices = self.matrix()
        rows = self._rows()
        figures = self._cl_figures()
        intervals, ci_note = self._cl_intervals()
        per_task: dict[str, dict[str, float]] = {}
        for j, task in enumerate(self.task_names):
            blocks_j = [b for b in self._blocks if b["task"] == task]
            episodes_j = sum(b["episodes"] for b in blocks_j)
            per_task[task] = {
                "episodes": episodes_j,
                "train_success": sum(b["success_sum"] for b in blocks_j) / episodes_j if episodes_j else math.nan,
                "final_success": R[-1, j] if R.shape[0] else math.nan,
                "baseline": float(self.baseline()[j]),
                "forgetting": figures["forgetting_per_task"][j],
                "forgetting_cw": figures["forgetting_cw_per_task"][j],
                "revisit_forgetting": _nanmean([r["value"] for r in self._revisits if r["task"] == task]),
            }
        final = {name: figures[name] for name in (*_FINAL_TAGS, "forgetting_cw")}
        final["forward_transfer_cw"] = math.nan  # filled by with_reference_transfer below
        final["revisit_forgetting"] = _nanmean([r["value"] for r in self._revisits])
        online = self._adaptation_online()
        frozen = [s / n if n else math.nan for s, n in zip(self._frozen_sum, self._frozen_count)]
        final["adaptation_gain"] = online[-1] - online[0] if len(online) > 1 else math.nan
        blocks = []
        for block in self._blocks:
            blocks.append({
                "index": block["index"], "task": block["task"], "visit": block["visit"], "start": block["start"],
                "end": min(block["end"], max(self.last_step, block["start"])), "planned_end": block["end"],
                "episodes": block["episodes"],
                "success": block["success_sum"] / block["episodes"] if block["episodes"] else math.nan,
                "curve": self._curves[block["index"]].state_dict(),
            })
        summary = {
            **self.run_info,
            "hparams": self.hparams,
            "task_names": self.task_names,
            "steps": self.last_step,
            "probe_env_steps": self.probe_env_steps,
            "cl": final,
            "cl_ci": {name: list(intervals.get(name, (math.nan, math.nan))) for name in (*_FINAL_TAGS, "forgetting_cw")},
            "cl_ci_note": ci_note,  # why cl_ci is missing (or FWT's), None when every interval was computed
            "tasks": per_task,
            "R": R.tolist(),
            "R_ci": [[[p["tasks"][t]["low"], p["tasks"][t]["high"]] if t in p["tasks"] else None
                      for t in self.task_names] for p in rows],
            "R_episodes": [[p["tasks"][t]["episodes"] if t in p["tasks"] else 0 for t in self.task_names] for p in rows],
            "R_blocks": indices,
            "R_steps": [p["step"] for p in rows],
            "R_block_tasks": [self.task_names[j] for j in block_tasks],
            "baseline": self.baseline().tolist(),
            "probe_curves": self.probe_curves(),
            "transfer": {},
            "adaptation": {"online": online, "online_later_half": self._adaptation_online(later_half=True),
                           "frozen": frozen},
            "in_context": self._replay,
            "revisits": self._revisits,
            "blocks": blocks,
            "last": dict(self._last),
        }
        return with_reference_transfer(summary, load_reference_summaries(self.run_dir / "reference", self.task_names))

    def _write_probes(self) -> None:
        """``probes.json``: every probe's per-episode results (success and return ``[lifetime][episode]``)."""
        write_json_atomic(self.run_dir / "probes.json", {"task_names": self.task_names, "probes": self._probes})

    def write_unfinished_summary(self, step: int) -> dict[str, Any]:
        """``summary.json`` of a lifetime stopped before its end, marked ``finished: false``. Nothing goes
        to TensorBoard: the resumed lifetime writes the final figures when it finishes."""
        summary = self.summary()
        summary["finished"] = False
        summary["stopped_at_step"] = int(step)
        self._write_probes()
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def finalize(self) -> dict[str, Any]:
        """Close the current block, write the final figures, hparams, ``probes.json`` and ``summary.json``."""
        step = self.last_step
        self._flush_episodes(step)
        if self._blocks:
            self._maybe_log_revisit(self._blocks[-1], step, force=True)
            self._flush_adaptation(self._blocks[-1], step)
        summary = self.summary()
        last_probe = max((p["step"] for p in self._probes), default=None)
        if last_probe is not None and self._figure_step != last_probe:
            self._log_probe_figure(last_probe)  # the last probe, if its block end drew no image
        final = summary["cl"]
        for name in (*_FINAL_TAGS, "forgetting_cw", "forward_transfer_cw"):
            self._scalar(f"cl/{name}", final[name], step)
        for task, values in summary["tasks"].items():
            self._task_scalar(task, "cl/forgetting", values["forgetting"], step)
            self._task_scalar(task, "cl/forward_transfer_cw", values.get("forward_transfer_cw", math.nan), step)
        hp_metrics = {f"cl/{k}": final[k] for k in (*_FINAL_TAGS, "forgetting_cw", "forward_transfer_cw")}
        self.tb.hparams(self.hparams, hp_metrics)  # the HParams tab reads these tags' last values
        for writer in self._writers().values():
            writer.close()
        summary["last"] = dict(self._last)
        summary["finished"] = True
        self._write_probes()
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the lifetime's figures exactly (plain data). Pending TensorBoard
        events are written first and the event files' sizes recorded, so a resume can cut them back here."""
        return {
            "version": TRACKER_STATE_VERSION,
            "run_dir": str(self.run_dir.resolve()),
            "event_files": {name: w.file_sizes() for name, w in self._writers().items()},
            "task_names": list(self.task_names),
            "last_step": self.last_step,
            "probe_env_steps": self.probe_env_steps,
            "next_probe": self._next_probe,
            "blocks": json.loads(json.dumps(self._blocks)),
            "curves": {k: c.state_dict() for k, c in self._curves.items()},
            "probes": json.loads(json.dumps(to_jsonable(self._probes))),
            "revisits": [dict(r) for r in self._revisits],
            "frozen_sum": list(self._frozen_sum),
            "frozen_count": list(self._frozen_count),
            "last": dict(self._last),
            "activity": {k: b.state_dict() for k, b in self._activity.items()},
            "episode_acc": {k: list(v) for k, v in self._episode_acc.items()},
            "episode_flushed_at": self._episode_flushed_at,
            "replay": self._replay,
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore a checkpoint. In the run's own directory the event files are cut back to the
        checkpoint (a killed run's later events are gone for every reader); TensorBoard's purge step
        hides them too."""
        if sd.get("version") != TRACKER_STATE_VERSION:
            raise ValueError(f"tracker state version {sd.get('version')} is not {TRACKER_STATE_VERSION}: this checkpoint "
                             f"was written by an older lifelong; start the run again")
        if list(sd["task_names"]) != self.task_names:
            raise ValueError(f"checkpoint was written for tasks {list(sd['task_names'])}, this tracker has {self.task_names}")
        self._reset_state()
        self.last_step = int(sd["last_step"])
        self.probe_env_steps = int(sd["probe_env_steps"])
        self._next_probe = int(sd["next_probe"])
        self._blocks = json.loads(json.dumps(sd["blocks"]))
        self._curves = {int(k): EpisodeCurve.from_state_dict(c) for k, c in sd["curves"].items()}
        self._probes = [_probe_from_json(p) for p in sd["probes"]]
        self._revisits = [dict(r) for r in sd["revisits"]]
        self._frozen_sum = list(sd["frozen_sum"])
        self._frozen_count = list(sd["frozen_count"])
        self._last = dict(sd["last"])
        for layer, bsd in sd["activity"].items():
            buf = ActivityBuffer(self._dormant_window, self._dormant_threshold)
            buf.load_state_dict(bsd)
            self._activity[layer] = buf
        self._episode_acc = {k: list(v) for k, v in sd["episode_acc"].items()}
        self._episode_flushed_at = int(sd["episode_flushed_at"])
        self._replay = sd["replay"]
        in_place = sd["run_dir"] == str(self.run_dir.resolve())
        for name, writer in self._writers().items():
            if in_place:  # resuming in place: cut the logs back to the checkpoint
                writer.restore_files(dict(sd["event_files"].get(name, {})), self.last_step + 1)
            else:  # a checkpoint of another directory: leave its files alone, hide later steps from TensorBoard
                writer.resume_at(self.last_step + 1)


def _probe_from_json(probe: Mapping[str, Any]) -> dict:
    """A probe record read back from JSON (None -> NaN in the float fields)."""
    out = json.loads(json.dumps(probe))
    for entry in out["tasks"].values():
        for key in ("mean", "low", "high"):
            entry[key] = math.nan if entry[key] is None else float(entry[key])
    return out
