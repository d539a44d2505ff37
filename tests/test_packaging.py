"""pyproject.toml: the module list matches the repository, and `pip install` gives commands that
run from another folder."""
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_top_level_module_and_package_is_listed():
    setup = PROJECT["tool"]["setuptools"]
    assert sorted(setup["py-modules"]) == sorted(p.stem for p in ROOT.glob("*.py"))
    packages = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
    assert sorted(setup["packages"]) == [p for p in packages if p != "tests"]
    for name, target in PROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert module in setup["py-modules"] and func == "main", name


@pytest.mark.slow
def test_installed_commands_run_from_another_folder(tmp_path):
    """Install a copy of the sources (no dependencies: this interpreter has them) into a
    target folder, then run the console scripts from an unrelated folder."""
    src = tmp_path / "src"
    src.mkdir()
    keep = ["pyproject.toml", "README.md", "LICENSE", "requirements.txt",
            *PROJECT["tool"]["setuptools"]["packages"],
            *(f"{m}.py" for m in PROJECT["tool"]["setuptools"]["py-modules"])]
    for name in keep:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    target = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (target / "evaluation" / "_chi2_kernel.c").is_file()  # package data
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    for script, text in (("grid-train", "--set KEY=VALUE"), ("grid-study", "--shard K/N"),
                         ("grid-retrieval", "--query-features"), ("grid-prep-dlrsd", "-r_ucm"),
                         ("grid-prep-ben", "--root_folder"), ("grid-demo", "--dataset")):
        out = subprocess.run([str(target / "bin" / script), "--help"], capture_output=True,
                             text=True, cwd=elsewhere, env=env, timeout=120)
        assert out.returncode == 0, (script, out.stderr)
        assert f"usage: {script}" in out.stdout and text in out.stdout, script
    # a bad config: the installed command reads it relative to the working folder
    (elsewhere / "bad.json").write_text('{"model_name": "GRID-BCE"}')
    out = subprocess.run([str(target / "bin" / "grid-train"), "bad.json"], capture_output=True,
                         text=True, cwd=elsewhere, env=env, timeout=120)
    assert out.returncode == 2 and "error: bad.json: dataset: required key is missing" in out.stderr
