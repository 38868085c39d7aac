"""``lifelong run`` checks the group names on its command line before Hydra starts, and only those.

A name that no config holds is one line naming the choices; Hydra's sweep functions and a user's
own configs (``--config-dir``) go through to Hydra.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import lifelong

from lifelong.cli import check_group_overrides
from lifelong.config_files import config_dir


@pytest.fixture
def own_configs(tmp_path) -> Path:
    """A user's config folder holding a stream ``mine`` (the smoke stream renamed)."""
    folder = tmp_path / "my_configs"
    (folder / "stream").mkdir(parents=True)
    smoke = (config_dir() / "stream" / "smoke.yaml").read_text()
    (folder / "stream" / "mine.yaml").write_text(smoke.replace("name: smoke", "name: mine"))
    return folder


def refusal(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        check_group_overrides(argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("override", [
    "memory=glob(*)", "memory=glob(*,exclude=softmax)", "memory=choice(gla,softmax)", "stream=glob(mg-*)",
])
def test_a_sweep_function_goes_to_hydra(override):
    check_group_overrides(["-m", override, "seed=0,1"])


@pytest.mark.parametrize("argv", [
    ["memory=gla"], ["memory=gla,softmax", "-m"], ["+memory=gla"], ["~memory"], ["memory.num_heads=2"],
    ["stream='smoke'"], ["-cn", "config", "agent=ppo"],
])
def test_a_shipped_name_or_a_key_of_the_group_passes(argv):
    check_group_overrides(argv)


def test_an_unknown_mixer_is_refused_naming_the_choices(capsys):
    line = refusal(["memory=nope"], capsys)
    assert "unknown memory 'nope': choose memory=<name> from deltanet, gated_deltanet" in line


def test_an_unknown_name_in_a_sweep_list_is_refused(capsys):
    line = refusal(["-m", "memory=gla,nope"], capsys)
    assert "unknown memory 'nope'" in line


@pytest.mark.parametrize("flags", [["-cd", "{dir}"], ["--config-dir", "{dir}"], ["--config-dir={dir}"], ["-cd={dir}"]])
def test_a_name_in_the_users_config_dir_passes(own_configs, flags):
    check_group_overrides([*(flag.format(dir=own_configs) for flag in flags), "stream=mine"])


def test_without_its_config_dir_the_users_name_is_unknown(capsys):
    assert "unknown stream 'mine': choose stream=<name> from" in refusal(["stream=mine"], capsys)


def test_an_unknown_name_lists_the_users_configs_too(own_configs, capsys):
    line = refusal(["-cd", str(own_configs), "stream=nope"], capsys)
    assert "unknown stream 'nope'" in line and "mine" in line and "smoke" in line


def test_hydra_composes_a_stream_from_the_users_config_dir(own_configs, tmp_path):
    result = lifelong("run", "-cd", str(own_configs), "stream=mine", "--cfg", "job", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "stream:\n  name: mine\n" in result.stdout
