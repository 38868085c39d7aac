"""``lifelong mqar`` end to end at a tiny size, its one-line errors, and ``lifelong mqar-report``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.cli import main
from helpers.cli import lifelong

TINY = ["task.vocab_size=16", "task.seq_len=16", "task.num_pairs=2", "train.steps=6", "train.batch_size=8",
        "train.num_train=64", "train.num_test=16", "train.eval_every=3", "model.d_model=16", "progress=false",
        "device=cpu"]


def test_lifelong_mqar_writes_the_results_json_and_tensorboard_events(tmp_path):
    run_dir = tmp_path / "run"
    done = lifelong("mqar", "memory=linear_attention", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert results["mixer"] == "linear_attention" and results["seed"] == 0
    assert 0.0 <= results["accuracy"] <= 1.0 and results["loss"] > 0
    assert results["test"]["queries"] == 2 * 16
    # linear attention: S [1, 4, 4, 4] + z [1, 4, 4] fp32 per layer, 2 layers
    assert results["state_bytes_per_token"] == 2 * 4 * (4 * 4 * 4 + 4 * 4)
    assert results["config"]["memory"]["name"] == "linear_attention"
    assert results["wall_time_s"] > 0
    assert list(run_dir.glob("events.out.tfevents*")), "TensorBoard events in the run directory"
    assert "test accuracy" in done.stdout and str(run_dir / "results.json") in done.stdout
    again = lifelong("mqar", "memory=linear_attention", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=300)
    assert again.returncode == 2 and "overwrite=true" in again.stderr, "a finished run is not overwritten silently"


@pytest.mark.parametrize("args,message", [
    (["task.num_pairs=5"], "task.num_pairs=5 is too many for task.seq_len=16"),
    (["memory=no_such_mixer"], "unknown memory 'no_such_mixer'"),
])
def test_a_bad_setting_is_one_line_and_exit_code_2(tmp_path, args, message):
    done = lifelong("mqar", *TINY, *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def _fake_run(root: Path, mixer: str, seed: int, d_model: int, accuracy: dict[int, float], state: int) -> None:
    run = root / f"{mixer}_d{d_model}_s{seed}"
    run.mkdir(parents=True)
    pairs = sorted(accuracy)
    results = {
        "mixer": mixer, "memory": mixer.split("-")[0], "seed": seed, "accuracy": sum(accuracy.values()) / len(pairs),
        "loss": 1.0, "task": {"vocab_size": 128, "seq_len": 64, "num_pairs": pairs, "power_a": 0.01},
        "model": {"d_model": d_model, "num_layers": 2, "mlp_ratio": 2.0, "short_conv": 3},
        "train": {"lr": 0.01, "steps": 10}, "state_bytes_per_token": state, "wall_time_s": 1.0,
        "test_by_pairs": {str(p): {"accuracy": a, "loss": 1.0 - a} for p, a in accuracy.items()},
    }
    (run / "results.json").write_text(json.dumps(results))


def test_mqar_report_writes_figures_and_a_table_with_intervals_over_seeds(tmp_path, capsys):
    for seed, noise in enumerate((0.0, 0.02, -0.02)):
        for d, state in ((64, 8192), (128, 32768)):
            _fake_run(tmp_path, "softmax", seed, d, {4: 1.0, 8: 0.99 + noise / 2}, 65536)
            _fake_run(tmp_path, "mamba2", seed, d, {4: 0.8 + noise, 8: 0.5 + noise}, state)
            _fake_run(tmp_path, "lola-sre", seed, d, {4: 0.9 + noise, 8: 0.7 + noise}, state)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    main(["mqar-report", str(tmp_path), "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    report = tmp_path / "report"
    for name in ("mqar_accuracy_vs_pairs.png", "mqar_accuracy_vs_state.png", "mqar_table.md", "mqar_table.csv"):
        assert (report / name).stat().st_size > 0, name
    table = (report / "mqar_table.md").read_text()
    assert "| mamba2 | 64 | 0.800 ± 0.050 (n=3) | 0.500 ± 0.050 (n=3) | 8192 | 0.01 |" in table
    assert "| softmax | 128 | 1.000 (n=3)" in table or "| softmax | 128 | 1.000 ± 0.000 (n=3)" in table
    assert table.index("| softmax") < table.index("| mamba2") < table.index("| lola-sre")
    assert "18 runs in 6 groups" in out and "broken" in out


def test_mqar_report_on_a_folder_without_results_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["mqar-report", str(tmp_path)])
    assert info.value.code == 2
    assert "no readable results.json" in capsys.readouterr().err
