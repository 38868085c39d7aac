"""One import root and configs that ship (DESIGN.md section 8)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lifelong
from lifelong import config_files

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("agents", "envs", "memory_layers", "kernels", "tracking")


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_top_level_folder_is_a_subpackage_of_lifelong(folder):
    module = importlib.import_module(f"lifelong.{folder}")
    assert Path(module.__file__).resolve().parent == ROOT / folder


def test_bare_folder_names_are_not_importable(tmp_path):
    """``import kernels`` (a package on the index) or ``import envs`` must not find the project."""
    code = f"import importlib.util as u; print([n for n in {FOLDERS!r} if u.find_spec(n) is not None])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_source_file_edits_sys_path():
    offenders = [str(p.relative_to(ROOT)) for folder in (*FOLDERS, "lifelong", "benchmarks", "tests")
                 for p in (ROOT / folder).rglob("*.py")
                 if re.search(r"sys\.path\s*(\[|\.insert|\.append|=)", p.read_text())]
    assert offenders == []


def test_configs_are_found_through_the_package():
    assert config_files.config_dir() == ROOT / "configs"
    assert "gated_deltanet" in config_files.group_choices("memory")
    assert "smoke" in config_files.group_choices("stream")


def test_a_missing_configs_package_is_a_loud_error(monkeypatch):
    config_files.config_dir.cache_clear()
    monkeypatch.setattr(config_files, "CONFIG_PACKAGE", "lifelong.no_such_configs")
    try:
        with pytest.raises(config_files.ConfigFilesMissing, match="reinstall"):
            config_files.config_dir()
    finally:
        config_files.config_dir.cache_clear()


def test_an_empty_config_group_is_a_loud_error_not_an_empty_list(monkeypatch, tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "memory").mkdir()
    monkeypatch.setattr(config_files, "config_dir", lambda: tmp_path)
    with pytest.raises(config_files.ConfigFilesMissing, match="no memory configs"):
        config_files.group_choices("memory")


def test_python_dash_m_lifelong_prints_the_version():
    result = subprocess.run([sys.executable, "-m", "lifelong", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"lifelong {lifelong.__version__}"
    assert lifelong.__version__ != "0+unknown"
