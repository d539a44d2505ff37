"""cli_common: --set parsing, pasteable commands, TensorFlow start-up lines hidden by default."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli_common
from config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_set_values_are_json_when_they_parse_else_strings():
    sets, problems = cli_common.parse_sets(
        ["nb_epoch=5", "learning_rate=1e-4", "train_backbone=true", "weights=null",
         "suffix=run a", "val_tfrecord_paths=[\"a\", \"b\"]", "dumps.features=out/f",
         "suffix2=", "novalue", "=3"])
    assert sets == {"nb_epoch": 5, "learning_rate": 1e-4, "train_backbone": True,
                    "weights": None, "suffix": "run a", "val_tfrecord_paths": ["a", "b"],
                    "dumps.features": "out/f", "suffix2": ""}
    assert problems == ["--set novalue: expected KEY=VALUE", "--set =3: expected KEY=VALUE"]


def _config_file(tmp_path, **kw):
    import json
    d = {"model_name": "GRID-BCE", "dataset": "DLRSD", "train_tfrecord_paths": "r/train.tfrecord",
         "nb_epoch": 3}
    d.update(kw)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    return path


def test_set_overrides_are_validated_like_file_keys(tmp_path):
    path = _config_file(tmp_path)
    cfg = Config.from_json(path, {"nb_epoch": 7, "dumps.features": "elsewhere/f"})
    assert cfg.nb_epoch == 7 and cfg.dumps["features"] == "elsewhere/f"
    assert cfg.dumps["configs"] == "dumps/configs"  # the other folders keep their defaults
    assert cfg.dump_dict()["nb_epoch"] == 7  # the dumped config is the effective one
    bad = _config_file(tmp_path, batch_size=0)  # a problem of the file itself, reported too
    with pytest.raises(ConfigError) as err:
        Config.from_json(bad, {"lerning_rate": 0.1, "nb_epoch": "x", "run_name": "r",
                               "dumsp.features": "f"})
    problems = err.value.problems
    assert "--set run_name: derived by train.py, not a config key" in problems
    assert "--set dumsp.features: unknown key; did you mean 'dumps'?" in problems
    assert any(p.startswith("--set lerning_rate: unknown key; did you mean 'learning_rate'?")
               for p in problems)
    assert "--set nb_epoch: expected an integer, got str 'x'" in problems
    assert f"{bad}: batch_size: must be >= 1, got 0" in problems
    assert len(problems) == 5


def test_train_cli_reports_every_set_problem(tmp_path, capsys):
    import train
    path = _config_file(tmp_path)
    assert train.main([str(path), "--set", "nb_epoch=0", "--set", "bad", "--set",
                       "optimiser=SGD"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: --set bad: expected KEY=VALUE"
    assert "error: --set nb_epoch: must be >= 1, got 0" in err
    assert any(line.startswith("error: --set optimiser: unknown key; did you mean 'optimizer'")
               for line in err)


def test_train_dump_records_set_values(records, tmp_path, capsys):
    import json

    import train
    from conftest import run_config
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_config(records, tmp_path / "out").to_dict()))
    assert train.main([str(path), "--no-progress", "--set", "suffix=viaset", "--set",
                       "learning_rate=0.002", "--set", "nb_epoch=1"]) == 0
    dumped = list((tmp_path / "out" / "configs").glob("*.json"))
    assert [p.name.endswith("-viaset.json") for p in dumped] == [True]
    d = json.loads(dumped[0].read_text())
    assert d["suffix"] == "viaset" and d["learning_rate"] == 0.002 and d["nb_epoch"] == 1


def test_command_is_pasteable(monkeypatch, tmp_path):
    import shutil
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/python")
    assert cli_common.command("train.py", "configs/a b.json", "--resume") == \
        ".venv/bin/python train.py 'configs/a b.json' --resume"
    monkeypatch.setattr(shutil, "which", lambda name: str(ROOT / ".venv" / "bin" / "python"))
    assert cli_common.command("-m", "archives.sample", "--seed", 0) == \
        "python -m archives.sample --seed 0"
    monkeypatch.setattr(sys, "executable", "/opt/py/bin/python3")
    assert cli_common.command("retrieval.py").startswith("/opt/py/bin/python3 retrieval.py")


@pytest.mark.slow
def test_entry_points_print_no_tensorflow_startup_lines(dlrsd_sample, tmp_path):
    """TensorFlow's I0000 lines (oneDNN, CUDA stubs) and, on a CPU machine, 'E0000 ... failed
    call to cuInit' do not reach stderr of a command that imports TensorFlow (prep writes
    records with it); TF_CPP_MIN_LOG_LEVEL is removed from the environment first."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cmd = [sys.executable, str(ROOT / "prep_DLRSD_noisy.py"), "-r_dlrsd",
           str(dlrsd_sample / "DLRSD"), "-r_ucm", str(dlrsd_sample / "UCMerced_LandUse"),
           "-o", str(tmp_path / "out"), "--noise-levels", "50", "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "records: train=" in run.stdout
    for marker in ("cuInit", "I0000", "E0000", "W0000", "absl::InitializeLog"):
        assert marker not in run.stderr, run.stderr
    # the devices are found (the cuInit line) inside the quiet block: a later op adds nothing
    code = ("import cli_common; cli_common.quiet_tensorflow(False); import tensorflow as tf; "
            "print(int(tf.reduce_sum(tf.ones(3))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.stdout.strip() == "3" and run.stderr == "", run.stderr


def test_failed_import_replays_what_was_hidden(monkeypatch, capfd):
    """Were the import to fail, its captured output comes back (nothing is lost)."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)

    class Boom:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow":
                os.write(2, b"the reason it failed\n")
                raise ImportError("no tensorflow")
            return None
    monkeypatch.setattr(sys, "meta_path", [Boom(), *sys.meta_path])
    with pytest.raises(ImportError, match="no tensorflow"):
        cli_common.quiet_tensorflow(False)
    assert "the reason it failed" in capfd.readouterr().err


def test_demo_passes_verbose_to_every_command(tmp_path, monkeypatch):
    import demo
    ran = []
    monkeypatch.setattr(demo, "ROOT", tmp_path)  # nothing exists there: every stage runs
    monkeypatch.setattr(demo, "run", ran.append)
    demo.prepare("DLRSD", ["--verbose"])
    assert len(ran) == 2 and all(cmd[-1] == "--verbose" for cmd in ran)
