"""A non-editable install ships the configs (conf/ → tlrun.conf) and runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tlrun").rglob("__init__.py")}
    assert on_disk - {"tlrun.conf"} <= listed, on_disk - listed
    assert "tlrun.conf" in listed


def test_wheel_install_finds_configs_from_another_directory(tmp_path: Path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("tlrun-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    assert (site / "tlrun" / "conf" / "config.yaml").is_file()
    assert (site / "tlrun" / "conf" / "freeze" / "partial.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", "import tlrun, sys; sys.argv=['tlrun','--cfg','job','freeze=all'];"
                             "print(tlrun.__file__); from tlrun.cli import main; main()"],
                            cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(site))
    assert "strategy: all" in result.stdout
