"""Training one MQAR model and writing its ``results.json`` (the work behind ``lifelong mqar``).

Cross-entropy and accuracy are taken at the query positions only. AdamW with a linear warmup and a
cosine decay to 0; batches drawn from a fixed train set reshuffled every epoch (seeded); the test
set is disjoint from it (:func:`lifelong.mqar.data.make_splits`). TensorBoard scalars go to the run
directory: ``train/loss``, ``train/accuracy``, ``train/lr``, ``test/loss``, ``test/accuracy``,
``charts/steps_per_s``.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.config_schema import resolve_device
from lifelong.fileio import atomic_write_text
from lifelong.mqar.data import IGNORE, MQARData, make_mixed_splits
from lifelong.mqar.model import MQARModel, count_parameters, state_bytes
from lifelong.mqar.settings import MQARSettings

RESULTS = "results.json"
#: distance buckets (tokens from a pair's key to its query) of ``accuracy_by_distance``
DISTANCE_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class TrainingFailed(RuntimeError):
    """Training cannot go on (a non-finite loss); the message is one line naming the fix."""


def build_model(settings: MQARSettings) -> MQARModel:
    m = settings.model
    return MQARModel(settings.task.vocab_size, m.d_model, m.num_layers, m.mlp_ratio,
                     settings.memory.constructor_config, short_conv=m.short_conv)


def lr_factor(step: int, steps: int, warmup_frac: float) -> float:
    """Linear warmup over ``warmup_frac`` of the steps, then cosine decay to 0 (step counts from 0)."""
    warmup = int(round(warmup_frac * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors (norms, biases, gates) and the embedding do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.startswith("embed.") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _tensors(data: MQARData, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    inputs = torch.from_numpy(data.inputs[rows]).to(device)
    pos = torch.from_numpy(data.query_pos[rows]).to(device)
    targets = torch.gather(torch.from_numpy(data.targets[rows]).to(device), 1, pos)
    return inputs, pos, targets


def query_loss(model: MQARModel, inputs, pos, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the queries, a bool ``[B, P]`` of the right answers and one of the
    real queries (padding of a mixture of pair counts has target ``IGNORE``)."""
    logits = model(inputs, pos)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    valid = targets != IGNORE
    return loss, (logits.argmax(-1) == targets) & valid, valid


@torch.no_grad()
def evaluate(model: MQARModel, data: MQARData, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Loss and accuracy over every query of ``data``, and the accuracy per key-to-query distance."""
    was_training = model.training
    model.eval()
    total_loss, correct, valids = 0.0, [], []
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        inputs, pos, targets = _tensors(data, rows, device)
        loss, right, valid = query_loss(model, inputs, pos, targets)
        total_loss += float(loss) * int(valid.sum())
        correct.append(right[valid].cpu().numpy())
        valids.append(valid.cpu().numpy())
    model.train(was_training)
    right = np.concatenate(correct)
    distance = (data.query_pos - data.key_pos)[np.concatenate(valids)]
    by_distance = {}
    for low, high in zip(DISTANCE_EDGES[:-1], DISTANCE_EDGES[1:]):
        sel = (distance > low) & (distance <= high)
        if sel.any():
            by_distance[f"{low + 1}-{high}"] = {"accuracy": float(right[sel].mean()), "queries": int(sel.sum())}
    return {"loss": total_loss / right.size, "accuracy": float(right.mean()), "queries": int(right.size),
            "sequences": len(data), "accuracy_by_distance": by_distance}


def _merge(by_pairs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The figures over every test query of every number of pairs (one test set per number)."""
    queries = sum(ev["queries"] for ev in by_pairs.values())
    merged = {
        "loss": sum(ev["loss"] * ev["queries"] for ev in by_pairs.values()) / queries,
        "accuracy": sum(ev["accuracy"] * ev["queries"] for ev in by_pairs.values()) / queries,
        "queries": queries, "sequences": sum(ev["sequences"] for ev in by_pairs.values()),
    }
    if len(by_pairs) == 1:
        merged["accuracy_by_distance"] = next(iter(by_pairs.values()))["accuracy_by_distance"]
    return merged


def _evaluate_all(model: MQARModel, tests: dict[int, MQARData], batch_size: int, device: torch.device,
                  writer, step: int) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    by_pairs = {p: evaluate(model, data, batch_size, device) for p, data in tests.items()}
    merged = _merge(by_pairs)
    writer.add_scalar("test/loss", merged["loss"], step)
    writer.add_scalar("test/accuracy", merged["accuracy"], step)
    if len(by_pairs) > 1:
        for p, ev in by_pairs.items():
            writer.add_scalar(f"test/accuracy_p{p}", ev["accuracy"], step)
    point = {"step": step, "accuracy": merged["accuracy"], "loss": merged["loss"]}
    if len(by_pairs) > 1:
        point["by_pairs"] = {str(p): ev["accuracy"] for p, ev in by_pairs.items()}
    return point, by_pairs


def train_mqar(settings: MQARSettings, run_dir: Path, config: dict[str, Any] | None = None,
               write_results: bool = True) -> dict[str, Any]:
    """Train one model as ``settings`` say; TensorBoard and ``results.json`` in ``run_dir``.
    Returns the results. Raises :class:`TrainingFailed` on a non-finite loss."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from lifelong import __version__

    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device)
    t, tr = settings.task, settings.train
    torch.manual_seed(settings.seed)
    train_data, tests = make_mixed_splits(t.specs, tr.num_train, tr.num_test, settings.seed)
    model = build_model(settings).to(device)
    optimizer = make_optimizer(model, tr.lr, tr.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tr.steps, tr.warmup_frac))
    order_gen = np.random.default_rng(np.random.SeedSequence([settings.seed, 2]))
    order = order_gen.permutation(len(train_data))
    cursor = 0

    writer = SummaryWriter(log_dir=str(run_dir))
    bar = tqdm(total=tr.steps, disable=not settings.progress, desc=f"mqar {settings.mixer_label}", unit="step",
               dynamic_ncols=True)
    recent_loss, recent_acc = [], []
    curve = []
    model.train()
    tick = time.perf_counter()
    for step in range(tr.steps):
        if cursor + tr.batch_size > len(order):  # a new epoch (a batch never spans two)
            order, cursor = order_gen.permutation(len(train_data)), 0
        rows = order[cursor:cursor + tr.batch_size]
        cursor += tr.batch_size
        loss, right, valid = query_loss(model, *_tensors(train_data, rows, device))
        if not torch.isfinite(loss):
            bar.close()
            writer.close()
            raise TrainingFailed(f"the training loss became {float(loss)} at step {step} (memory={settings.memory.name}, "
                                 f"train.lr={tr.lr:g}): lower train.lr or set train.grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tr.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        optimizer.step()
        scheduler.step()
        recent_loss.append(float(loss.detach()))
        recent_acc.append(float(right.sum()) / max(1, int(valid.sum())))
        done = step + 1
        if done % 10 == 0 or done == tr.steps:
            lo, acc = float(np.mean(recent_loss[-10:])), float(np.mean(recent_acc[-10:]))
            now = time.perf_counter()
            writer.add_scalar("train/loss", lo, done)
            writer.add_scalar("train/accuracy", acc, done)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
            writer.add_scalar("charts/steps_per_s", min(10, done) / max(now - tick, 1e-9), done)
            tick = now
            bar.set_postfix(loss=f"{lo:.3f}", acc=f"{acc:.3f}", refresh=False)
        if tr.eval_every and done % tr.eval_every == 0 and done < tr.steps:
            curve.append(_evaluate_all(model, tests, tr.eval_batch_size, device, writer, done)[0])
        bar.update(1)
    bar.close()
    point, by_pairs = _evaluate_all(model, tests, tr.eval_batch_size, device, writer, tr.steps)
    curve.append(point)
    test = _merge(by_pairs)
    per_layer = state_bytes(model, t.seq_len)
    wall = time.perf_counter() - start_time
    results = {
        "mixer": settings.mixer_label,
        "memory": settings.memory.name,
        "seed": settings.seed,
        "task": asdict(t),
        "model": asdict(settings.model),
        "train": asdict(tr),
        "accuracy": test["accuracy"],
        "loss": test["loss"],
        "test": test,
        "test_by_pairs": {str(p): ev for p, ev in by_pairs.items()},
        "train_final": {"loss": float(np.mean(recent_loss[-50:])), "accuracy": float(np.mean(recent_acc[-50:]))},
        "test_curve": curve,
        "state_bytes_per_token": int(sum(per_layer)),
        "state_bytes_per_layer": per_layer,
        "state_bytes_note": f"bytes of the mixers' memory state (all {len(per_layer)} layers, one sequence) carried "
                            f"from a token to the next, measured after seq_len={t.seq_len} tokens",
        "parameters": count_parameters(model),
        "wall_time_s": wall,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "lifelong_version": __version__,
        "config": config if config is not None else None,
    }
    writer.add_hparams(
        {"mixer": settings.mixer_label, "d_model": settings.model.d_model, "num_layers": settings.model.num_layers,
         "seq_len": t.seq_len, "num_pairs": "/".join(map(str, t.pairs)), "vocab_size": t.vocab_size, "lr": tr.lr,
         "seed": settings.seed},
        {"hparam/accuracy": test["accuracy"], "hparam/loss": test["loss"],
         "hparam/state_bytes": float(results["state_bytes_per_token"])},
        run_name=".",
    )
    writer.close()
    if write_results:
        atomic_write_text(run_dir / RESULTS, json.dumps(results, indent=2) + "\n")
    return results
