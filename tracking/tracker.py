"""The lifetime tracker (DESIGN.md section 7): online figures, probe bookkeeping, the matrix R,
TensorBoard output and ``summary.json``.

Protocol (called by the lifetime loop, ``agents/loop.py``):

- ``log_task_switch(step, task, visit, block_index)`` when a block starts (block 0 included;
  repeated calls for the same block, e.g. once per lifetime, are ignored);
- ``log_episode(...)`` for every finished episode; ``episodes_since_switch`` is 1 for the first
  episode that ends in the new block. An episode is credited to the most recent block of its task,
  so a lifetime that finishes an old-task episode after the switch does not pollute the new block;
- ``should_probe(step)`` / ``log_probe(step, results, block_end)``: periodic probes (every
  ``probe_every`` lifetime steps; ``log_probe`` advances the schedule), and a probe at the end of
  block k with ``block_end=k`` fills row k of R. The probe at step 0 gives the baseline b_j: probe
  *every* task there, or FWT is undefined for the tasks left out;
- ``finalize()`` at the end: final figures, hparams, ``summary.json``.

Reference runs (Continual World forward transfer): a single-task run of task ``j`` whose
``summary.json`` lies at ``<run_dir>/reference/<j>/summary.json`` (where ``lifelong run ...
reference=true`` writes them). Its first block's success curve gives AUC_j^ref; AUC_j is this run's
success curve during task j's first block, both over normalised time; FT_j = (AUC_j - AUC_j^ref) /
(1 - AUC_j^ref). Reference runs that finish *after* the main run (the CLI runs them afterwards) are
folded in by ``apply_reference_runs(run_dir)``, which rewrites the run's ``summary.json``;
``lifelong compare`` also picks them up when the summary has no value yet.

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
from lifelong.tracking.curves import EpisodeCurve, write_json_atomic
from lifelong.tracking.plasticity import ActivityBuffer, feature_effective_rank, weight_magnitude
from lifelong.tracking.tensorboard import RunWriter, custom_scalars_layout

__all__ = ["Tracker", "first_block_auc", "load_reference_summaries", "with_reference_transfer", "apply_reference_runs"]

_FINAL_TAGS = ("acc", "forgetting", "bwt", "fwt", "learning_accuracy", "retention")


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def first_block_auc(summary: Mapping[str, Any], task: str) -> float:
    """Normalised AUC of ``task``'s training success during its first block, from a summary dict
    (``summary.json`` of this or of a single-task reference run); NaN without episodes."""
    for block in summary.get("blocks", []):
        if block["task"] == task:
            arr = EpisodeCurve.from_state_dict(block["curve"]).arrays()
            if arr["step"].size == 0:
                return math.nan
            end = max(block["end"], block["start"] + 1)
            return M.normalized_auc(arr["step"], arr["success"], block["start"], end)
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
    """Lifetime tracker writing TensorBoard events and ``summary.json`` into ``run_dir``.

    Build it with :meth:`from_config` (the ``tracker:`` section of ``configs/config.yaml``, where
    each setting is described); the constructor takes every setting explicitly.
    """

    #: the keys of the ``tracker:`` config the tracker reads (the probes and the loop read the others)
    CONFIG_KEYS = ("probe_every", "adaptation_k", "revisit_window", "episode_log_every", "dormant_window",
                   "dormant_threshold", "curve_points")

    def __init__(
        self,
        run_dir: str | Path,
        task_names: Sequence[str],
        hparams: Mapping[str, Any],
        *,
        probe_every: int,
        adaptation_k: int,
        revisit_window: int,
        episode_log_every: int,
        dormant_window: int,
        dormant_threshold: float,
        curve_points: int,
    ) -> None:
        names = list(task_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be a non-empty list of unique names (stream.task_names), got {names}")
        if probe_every < 0 or adaptation_k < 1 or revisit_window < 1 or episode_log_every < 0:
            raise ValueError(
                f"need tracker.probe_every >= 0 (0 disables periodic probes), adaptation_k >= 1, "
                f"revisit_window >= 1, episode_log_every >= 0; got {probe_every}, {adaptation_k}, "
                f"{revisit_window}, {episode_log_every}"
            )
        self.run_dir = Path(run_dir)
        self.task_names = names
        self.hparams = dict(hparams)
        self.probe_every = int(probe_every)
        self.adaptation_k = int(adaptation_k)
        self.revisit_window = int(revisit_window)
        self.curve_points = int(curve_points)
        self.episode_log_every = int(episode_log_every)
        self._dormant_window = int(dormant_window)
        self._dormant_threshold = float(dormant_threshold)
        self.tb = RunWriter(self.run_dir)
        self.tb.layout(custom_scalars_layout(self.task_names))
        self._reset_state()

    @classmethod
    def from_config(cls, run_dir: str | Path, task_names: Sequence[str], hparams: Mapping[str, Any],
                    tracker_cfg: Mapping[str, Any]) -> "Tracker":
        """A tracker with every setting of :attr:`CONFIG_KEYS` read from ``tracker_cfg`` (the
        ``tracker:`` section of ``configs/config.yaml``; a DictConfig or a dict)."""
        missing = [key for key in cls.CONFIG_KEYS if key not in tracker_cfg]
        if missing:
            raise ValueError(f"the tracker config lacks {missing}: give every key of the `tracker:` section of "
                             f"configs/config.yaml ({', '.join(cls.CONFIG_KEYS)})")
        return cls(run_dir, task_names, hparams, **{key: tracker_cfg[key] for key in cls.CONFIG_KEYS})

    def _reset_state(self) -> None:
        self.last_step = 0
        self.probe_env_steps = 0
        self._next_probe = 0
        self._blocks: list[dict] = []          # ordered by start; see _new_block
        self._curves: dict[int, EpisodeCurve] = {}
        self._rows: dict[int, dict[str, float]] = {}
        self._row_steps: dict[int, int] = {}
        self._baseline: dict[str, float] = {}
        self._revisits: list[dict] = []
        self._frozen_sum = [0.0] * self.adaptation_k
        self._frozen_count = [0] * self.adaptation_k
        self._last: dict[str, float] = {}     # last value of every scalar tag written
        self._activity: dict[str, ActivityBuffer] = {}
        self._episode_acc: dict[str, list[float]] = {}  # task -> [sum return, sum success, sum length, n]
        self._episode_flushed_at = 0

    # ---- helpers ---------------------------------------------------------------------------
    def _scalar(self, tag: str, value: float, step: int) -> None:
        value = float(value)
        self._last[tag] = value
        self.tb.scalar(tag, value, step)

    def _see(self, step: int) -> int:
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0 (lifetime env steps), got {step}")
        self.last_step = max(self.last_step, step)
        return step

    def _check_task(self, task_name: str) -> None:
        if task_name not in self.task_names:
            raise ValueError(f"unknown task {task_name!r}: the tracker was built with task_names={self.task_names}")

    def _block(self, index: int) -> dict | None:
        for block in self._blocks:
            if block["index"] == index:
                return block
        return None

    def _latest_block(self, task_name: str) -> dict | None:
        for block in reversed(self._blocks):
            if block["task"] == task_name:
                return block
        return None

    def _new_block(self, step: int, task_name: str, visit: int, index: int) -> dict:
        previous = self._latest_block(task_name)
        block = {
            "index": int(index), "task": task_name, "visit": int(visit), "start": int(step), "end": None,
            "episodes": 0, "success_sum": 0.0, "return_sum": 0.0,
            "head": [], "tail": [],                       # first / last `revisit_window` successes
            "adapt_sum": [0.0] * self.adaptation_k, "adapt_count": [0] * self.adaptation_k,
            "adapt_logged": False,
            "revisit_of": None if previous is None else previous["index"], "revisit_done": previous is None,
        }
        if self._blocks:
            self._close_block(self._blocks[-1], step)
        self._blocks.append(block)
        self._curves[block["index"]] = EpisodeCurve(self.curve_points)
        return block

    def _close_block(self, block: dict, step: int) -> None:
        if block["end"] is None:
            block["end"] = int(step)
        self._flush_adaptation(block, step)

    def _flush_adaptation(self, block: dict, step: int) -> None:
        """Log the block's mean return of its k-th episodes (not for the lifetime's first block)."""
        if block["adapt_logged"] or block is self._blocks[0]:
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
        self._scalar(f"forgetting/revisit/{block['task']}", value, step)

    # ---- online logging --------------------------------------------------------------------
    def log_task_switch(self, step: int, task_name: str, visit: int, block_index: int) -> None:
        """A new block of ``task_name`` starts at ``step`` (idempotent per ``block_index``)."""
        step = self._see(step)
        self._check_task(task_name)
        if self._block(block_index) is not None:
            return
        old = self._blocks[-1] if self._blocks else None
        if old is not None:
            self._flush_episodes(step)
            self._maybe_log_revisit(old, step, force=True)
        self._new_block(step, task_name, visit, block_index)
        new_id = self.task_names.index(task_name)
        if old is not None and step > 0:
            self.tb.scalar("charts/task_id", self.task_names.index(old["task"]), step - 1)
            self.tb.scalar("charts/task_switch", 0.0, step - 1)
        self._scalar("charts/task_id", new_id, step)
        self.tb.scalar("charts/task_switch", 1.0, step)
        self.tb.scalar("charts/task_switch", 0.0, step + 1)
        self._scalar("charts/block", block_index, step)
        self.tb.text("task_switch", f"step {step}: block {block_index} -> **{task_name}** (visit {visit})", step)

    def log_episode(
        self,
        step: int,
        task_name: str,
        episode_return: float,
        episode_length: int,
        success: float,
        episodes_since_switch: int,
    ) -> None:
        """One finished episode; ``episodes_since_switch`` = 1 for the first one of a block."""
        step = self._see(step)
        self._check_task(task_name)
        if episodes_since_switch < 1:
            raise ValueError(
                f"episodes_since_switch counts finished episodes since the task switch, starting at 1 "
                f"(got {episodes_since_switch}): pass count + 1"
            )
        success, ret = float(success), float(episode_return)
        acc = self._episode_acc.setdefault(task_name, [0.0, 0.0, 0.0, 0])
        acc[0] += ret
        acc[1] += success
        acc[2] += float(episode_length)
        acc[3] += 1
        if step - self._episode_flushed_at >= self.episode_log_every:
            self._flush_episodes(step)
        block = self._latest_block(task_name)
        if block is None:  # no switch logged yet: the lifetime's first block
            block = self._new_block(
                step if self._blocks else 0, task_name, 1, max((b["index"] for b in self._blocks), default=-1) + 1
            )
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
        """Write ``task/<name>/{return,success,length}``: means over the episodes since the last flush
        (every ``episode_log_every`` steps, at task switches and at the end) rather than one TB event
        per episode, which would slow the loop down."""
        for task, (ret, success, length, n) in self._episode_acc.items():
            if n:
                self._scalar(f"task/{task}/return", ret / n, step)
                self._scalar(f"task/{task}/success", success / n, step)
                self._scalar(f"task/{task}/length", length / n, step)
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
        """features ``{layer: [N, D]}`` post-activation samples; ``model`` for the weight magnitude."""
        step = self._see(step)
        for layer, feats in features.items():
            buf = self._activity.get(layer)
            if buf is None:
                buf = self._activity[layer] = ActivityBuffer(self._dormant_window, self._dormant_threshold)
            buf.update(feats)
            self._scalar(f"plasticity/dormant_frac/{layer}", buf.dormant_fraction(), step)
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

    def log_probe(self, step: int, results: Mapping[str, Any], block_end: int | None = None) -> None:
        """Record a probe: ``results`` maps task -> success, or task -> ``run_probe``'s dict
        (``success``, optional ``return``, ``steps``, ``episode_returns``). ``block_end=k`` fills
        row k of R; the probe at step 0 sets the baseline b_j."""
        step = self._see(step)
        parsed: dict[str, dict] = {}
        for task, value in results.items():
            self._check_task(task)
            entry = dict(value) if isinstance(value, Mapping) else {"success": float(value)}
            if "success" not in entry:
                raise ValueError(f"probe result for {task!r} has no 'success' (got keys {sorted(entry)})")
            parsed[task] = entry
        current = self._blocks[-1]["task"] if self._blocks else None
        frozen_sum = [0.0] * self.adaptation_k
        frozen_count = [0] * self.adaptation_k
        for task, entry in parsed.items():
            self._scalar(f"eval/{task}/success", entry["success"], step)
            if "return" in entry:
                self._scalar(f"eval/{task}/return", entry["return"], step)
            self.probe_env_steps += int(entry.get("steps", 0))
            if task != current:  # a probe on another task is a task switch seen with learning off
                for k, r in enumerate(list(entry.get("episode_returns", []))[: self.adaptation_k]):
                    frozen_sum[k] += float(r)
                    frozen_count[k] += 1
        for k in range(self.adaptation_k):
            if frozen_count[k]:
                self._scalar(f"adaptation_frozen/episode_{k + 1}", frozen_sum[k] / frozen_count[k], step)
                self._frozen_sum[k] += frozen_sum[k]
                self._frozen_count[k] += frozen_count[k]
        self._scalar("charts/probe_env_steps", self.probe_env_steps, step)
        if step == 0:
            for task, entry in parsed.items():
                self._baseline.setdefault(task, float(entry["success"]))
        if block_end is not None:
            block_end = int(block_end)
            if self._block(block_end) is None:
                if block_end == 0 and not self._blocks:
                    self._new_block(0, self.task_names[0], 1, 0)
                else:
                    raise ValueError(
                        f"log_probe(block_end={block_end}) but block {block_end} was never started: call "
                        f"log_task_switch(step, task, visit, block_index={block_end}) when it begins"
                    )
            self._rows[block_end] = {t: float(e["success"]) for t, e in parsed.items()}
            self._row_steps[block_end] = step
            figures = self._cl_figures()
            for name in _FINAL_TAGS:
                self._scalar(f"cl/{name}", figures[name], step)
            for task, value in zip(self.task_names, figures["forgetting_per_task"]):
                self._scalar(f"cl/forgetting/{task}", value, step)
        if self.probe_every > 0:
            self._next_probe = (step // self.probe_every + 1) * self.probe_every

    def matrix(self) -> tuple[np.ndarray, list[int], list[int]]:
        """(R ``[K, N]`` over the rows filled so far, block_tasks ``[K]`` columns, block indices ``[K]``)."""
        indices = sorted(self._rows)
        R = np.full((len(indices), len(self.task_names)), math.nan)
        block_tasks = []
        for r, k in enumerate(indices):
            for task, value in self._rows[k].items():
                R[r, self.task_names.index(task)] = value
            block_tasks.append(self.task_names.index(self._block(k)["task"]))
        return R, block_tasks, indices

    def baseline(self) -> np.ndarray:
        """b ``[N]`` from the step-0 probe (NaN for tasks it did not cover)."""
        return np.array([self._baseline.get(t, math.nan) for t in self.task_names])

    def _cl_figures(self) -> dict[str, Any]:
        R, block_tasks, _ = self.matrix()
        if R.shape[0] == 0:
            nan_list = [math.nan] * len(self.task_names)
            return {name: math.nan for name in (*_FINAL_TAGS, "forgetting_cw")} | {
                "forgetting_per_task": nan_list, "forgetting_cw_per_task": nan_list}
        return M.cl_metrics(R, block_tasks, self.baseline())

    # ---- final figures ---------------------------------------------------------------------
    def _adaptation_online(self) -> list[float]:
        sums = [0.0] * self.adaptation_k
        counts = [0] * self.adaptation_k
        for block in self._blocks[1:]:  # the first block follows no switch
            for k in range(self.adaptation_k):
                if block["adapt_count"][k]:
                    sums[k] += block["adapt_sum"][k] / block["adapt_count"][k]
                    counts[k] += 1
        return [s / n if n else math.nan for s, n in zip(sums, counts)]

    def summary(self) -> dict[str, Any]:
        """Every final figure, R and the per-block curves (the content of ``summary.json``)."""
        R, block_tasks, indices = self.matrix()
        figures = self._cl_figures()
        per_task: dict[str, dict[str, float]] = {}
        for j, task in enumerate(self.task_names):
            blocks_j = [b for b in self._blocks if b["task"] == task]
            episodes_j = sum(b["episodes"] for b in blocks_j)
            per_task[task] = {
                "episodes": episodes_j,
                "train_success": sum(b["success_sum"] for b in blocks_j) / episodes_j if episodes_j else math.nan,
                "final_success": R[-1, j] if R.shape[0] else math.nan,
                "baseline": self._baseline.get(task, math.nan),
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
                "end": block["end"] if block["end"] is not None else self.last_step,
                "episodes": block["episodes"],
                "success": block["success_sum"] / block["episodes"] if block["episodes"] else math.nan,
                "curve": self._curves[block["index"]].state_dict(),
            })
        summary = {
            "hparams": self.hparams,
            "task_names": self.task_names,
            "steps": self.last_step,
            "probe_env_steps": self.probe_env_steps,
            "cl": final,
            "tasks": per_task,
            "R": R.tolist(),
            "R_blocks": indices,
            "R_steps": [self._row_steps[k] for k in indices],
            "R_block_tasks": [self.task_names[j] for j in block_tasks],
            "baseline": self.baseline().tolist(),
            "transfer": {},
            "adaptation": {"online": online, "frozen": frozen},
            "revisits": self._revisits,
            "blocks": blocks,
            "last": dict(self._last),
        }
        return with_reference_transfer(summary, load_reference_summaries(self.run_dir / "reference", self.task_names))

    def write_unfinished_summary(self, step: int) -> dict[str, Any]:
        """``summary.json`` of a lifetime stopped before its end, marked ``finished: false``. Nothing goes
        to TensorBoard: the resumed lifetime writes the final figures when it finishes."""
        summary = self.summary()
        summary["finished"] = False
        summary["stopped_at_step"] = int(step)
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    def finalize(self) -> dict[str, Any]:
        """Close the current block, write the final figures, hparams and ``summary.json``."""
        step = self.last_step
        self._flush_episodes(step)
        if self._blocks:
            self._maybe_log_revisit(self._blocks[-1], step, force=True)
            self._flush_adaptation(self._blocks[-1], step)
        summary = self.summary()
        final = summary["cl"]
        for name in _FINAL_TAGS:
            self._scalar(f"cl/{name}", final[name], step)
        for task, values in summary["tasks"].items():
            self._scalar(f"cl/forgetting/{task}", values["forgetting"], step)
        self._scalar("cl/forward_transfer_cw", final["forward_transfer_cw"], step)
        hp_metrics = {f"cl/{k}": final[k] for k in (*_FINAL_TAGS, "forward_transfer_cw")}
        self.tb.hparams(self.hparams, hp_metrics)  # the HParams tab reads these tags' last values
        self.tb.close()
        summary["last"] = dict(self._last)
        summary["finished"] = True
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the lifetime's figures exactly (plain data). Pending TensorBoard
        events are written first and the event files' sizes recorded, so a resume can cut them back here."""
        return {
            "version": 2,
            "run_dir": str(self.run_dir.resolve()),
            "event_files": self.tb.file_sizes(),
            "task_names": list(self.task_names),
            "last_step": self.last_step,
            "probe_env_steps": self.probe_env_steps,
            "next_probe": self._next_probe,
            "blocks": json.loads(json.dumps(self._blocks)),
            "curves": {k: c.state_dict() for k, c in self._curves.items()},
            "rows": {k: dict(v) for k, v in self._rows.items()},
            "row_steps": dict(self._row_steps),
            "baseline": dict(self._baseline),
            "revisits": [dict(r) for r in self._revisits],
            "frozen_sum": list(self._frozen_sum),
            "frozen_count": list(self._frozen_count),
            "last": dict(self._last),
            "activity": {k: b.state_dict() for k, b in self._activity.items()},
            "episode_acc": {k: list(v) for k, v in self._episode_acc.items()},
            "episode_flushed_at": self._episode_flushed_at,
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore a checkpoint. In the run's own directory the event files are cut back to the
        checkpoint (a killed run's later events are gone for every reader); TensorBoard's purge step
        hides them too."""
        if list(sd["task_names"]) != self.task_names:
            raise ValueError(f"checkpoint was written for tasks {list(sd['task_names'])}, this tracker has {self.task_names}")
        self._reset_state()
        self.last_step = int(sd["last_step"])
        self.probe_env_steps = int(sd["probe_env_steps"])
        self._next_probe = int(sd["next_probe"])
        self._blocks = json.loads(json.dumps(sd["blocks"]))
        self._curves = {int(k): EpisodeCurve.from_state_dict(c) for k, c in sd["curves"].items()}
        self._rows = {int(k): dict(v) for k, v in sd["rows"].items()}
        self._row_steps = {int(k): int(v) for k, v in sd["row_steps"].items()}
        self._baseline = dict(sd["baseline"])
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
        if sd["run_dir"] == str(self.run_dir.resolve()):  # resuming in place: cut the logs back to the checkpoint
            self.tb.restore_files(dict(sd["event_files"]), self.last_step + 1)
        else:  # a checkpoint of another directory: leave its files alone, hide later steps from TensorBoard
            self.tb.resume_at(self.last_step + 1)
