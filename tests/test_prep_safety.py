"""Prep scripts: named one-line errors (split CSVs, full disk), exit 130 on Ctrl-C, no litter
after kill -9, warnings instead of silence (issue 8)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tensorflow as tf

import prep_BEN_noisy
import prep_DLRSD_noisy
from archives import ben
from conftest import default_sigint, temp_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw(ben_sample, tmp_path):
    return Path(shutil.copytree(ben_sample, tmp_path / "raw"))


def ben_main(raw, out, *extra):
    return prep_BEN_noisy.main(["-r", str(raw), "-o", str(out), "-train", str(raw / "train.csv"),
                                "-val", str(raw / "val.csv"), "-test", str(raw / "test.csv"),
                                "--noise-levels", "50", "--workers", "1", *extra])


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]


def test_split_csv_cases(raw, tmp_path, capsys):
    names = (raw / "train.csv").read_text().split()
    # a byte-order mark is accepted: the same records as without it
    assert ben_main(raw, tmp_path / "plain") == 0
    (raw / "train.csv").write_bytes(b"\xef\xbb\xbf" + (raw / "train.csv").read_bytes())
    assert ben_main(raw, tmp_path / "bom") == 0
    assert (tmp_path / "bom/TFRecord/train.tfrecord").read_bytes() == \
        (tmp_path / "plain/TFRecord/train.tfrecord").read_bytes()
    capsys.readouterr()
    # a patch listed twice is named with both lines
    (raw / "train.csv").write_text("\n".join(names + [names[1]]) + "\n")
    assert ben_main(raw, tmp_path / "dup") == 2
    assert error_lines(capsys) == [f"error: {raw / 'train.csv'}: patch {names[1]} is listed "
                                   f"twice (lines 2 and {len(names) + 1})"]
    # a non-UTF-8 byte names the file
    (raw / "train.csv").write_bytes("\n".join(names).encode() + b"\nM\xfcller\n")
    assert ben_main(raw, tmp_path / "latin") == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {raw / 'train.csv'}: split file is not UTF-8 text")


def test_patches_without_a_19_class_label_are_warned_about(raw, tmp_path, capsys):
    name = (raw / "train.csv").read_text().split()[0]
    path = ben.metadata_path(raw, name)
    meta = json.loads(path.read_text())
    meta["labels"] = ["Airports"]  # dropped by the 19-class nomenclature
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"1 patch\(es\) have no label in the 19-class "
                                         "nomenclature"):
        assert ben_main(raw, tmp_path / "out") == 0


class FullDiskWriter:
    """A TFRecordWriter on a full disk: the first write fails as TensorFlow reports it."""

    def __init__(self, path):
        Path(path).write_bytes(b"partial")

    def write(self, raw):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_full_disk_is_a_named_error_without_litter(raw, tmp_path, capsys, monkeypatch):
    from archives import common

    monkeypatch.setattr(common.tf.io, "TFRecordWriter", FullDiskWriter)
    assert ben_main(raw, tmp_path / "out") == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {tmp_path / 'out/TFRecord'}/") and \
        line.endswith(".tfrecord: cannot be written (No space left on device)")
    assert not list((tmp_path / "out/TFRecord").iterdir())


def test_leftovers_of_a_killed_prep_are_removed(raw, tmp_path, capsys):
    tf_dir = tmp_path / "out" / "TFRecord"
    tf_dir.mkdir(parents=True)
    dead = tf_dir / temp_name("train", ".tfrecord", 999999999)
    dead.write_bytes(b"half")
    live = tf_dir / temp_name("val", ".tfrecord", 1)  # pid 1 is alive: not ours to remove
    live.write_bytes(b"other")
    with pytest.warns(UserWarning, match=f"removed {dead}"):
        assert ben_main(raw, tmp_path / "out") == 0
    assert not dead.exists() and live.exists()


def test_ctrl_c_in_process_exits_130_with_one_line(raw, tmp_path, capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ben, "encode_examples", interrupt)
    assert ben_main(raw, tmp_path / "out") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "interrupted: no file was published (temporaries removed); run again to prepare")
    assert not list((tmp_path / "out" / "TFRecord").glob("*.tmp-*"))
    assert not (tmp_path / "out" / "TFRecord" / ".prep.lock").exists()  # released on Ctrl-C


@pytest.mark.slow
def test_real_ctrl_c_during_dlrsd_prep(dlrsd_sample, tmp_path):
    """SIGINT to a running prep_DLRSD_noisy.py: exit 130, one line, no temporaries."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "prep_DLRSD_noisy.py", "-r_dlrsd", str(dlrsd_sample / "DLRSD"),
         "-r_ucm", str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(out), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((out / "TFRecord").glob("*.tmp-*")):  # writing has begun
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("WARNING: All log",
                                                                            "I0000", "E0000"))]
    assert lines == ["interrupted: no file was published (temporaries removed); run again to "
                     "prepare"], err
    assert not list((out / "TFRecord").glob("*.tmp-*"))


# ---------------------------------------------------------------- one prep per output folder
def _plant_lock(tf_dir, pid):
    import locks

    tf_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": locks.hostname(), "since": "2026-01-02 03:04:05",
            "start": None, "purpose": "archives.ben.prepare", "token": "planted"}
    (tf_dir / ".prep.lock").write_text(json.dumps(info))
    return info


def test_second_prep_on_one_output_folder_exits_2_naming_the_holder(raw, dlrsd_sample, tmp_path,
                                                                    capsys):
    import locks

    tf_dir = tmp_path / "out" / "TFRecord"
    planted = _plant_lock(tf_dir, os.getpid())  # a live process holds the folder
    dlrsd = ["-r_dlrsd", str(dlrsd_sample / "DLRSD"), "-r_ucm",
             str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(tmp_path / "out"), "--quiet"]
    for run in (lambda: ben_main(raw, tmp_path / "out"), lambda: prep_DLRSD_noisy.main(dlrsd)):
        assert run() == 2
        (line,) = error_lines(capsys)
        assert line == (f"error: {tf_dir}: in use by pid {os.getpid()} on host "
                        f"{locks.hostname()} since 2026-01-02 03:04:05 (archives.ben.prepare); "
                        "wait for it to finish, or, if no such process runs any more, delete "
                        f"{tf_dir / '.prep.lock'}")
        assert sorted(p.name for p in tf_dir.iterdir()) == [".prep.lock"]
        assert json.loads((tf_dir / ".prep.lock").read_text()) == planted


def test_stale_prep_lock_is_taken_over_and_every_exit_releases_it(raw, tmp_path, capsys):
    tf_dir = tmp_path / "out" / "TFRecord"
    _plant_lock(tf_dir, 999999999)  # left by a killed prep on this host
    with pytest.warns(UserWarning, match="taking over the stale lock of pid 999999999"):
        assert ben_main(raw, tmp_path / "out") == 0
    assert not (tf_dir / ".prep.lock").exists() and (tf_dir / "train.tfrecord").is_file()
    # an error exit releases it too
    (raw / "val.csv").write_text("no_such_patch\n")
    assert ben_main(raw, tmp_path / "out") == 2
    assert "no_such_patch is not under" in capsys.readouterr().err
    assert not (tf_dir / ".prep.lock").exists()


def test_split_csv_name_that_leaves_the_root_is_refused_or_skipped(raw, tmp_path, capsys):
    outside = tmp_path / "outside_patch"  # a patch folder beside the root, reached by ../
    shutil.copytree(raw / (raw / "train.csv").read_text().split()[0], outside)
    names = (raw / "train.csv").read_text().split()
    (raw / "train.csv").write_text("\n".join(names + ["../outside_patch"]) + "\n")
    assert ben_main(raw, tmp_path / "a") == 2
    assert error_lines(capsys) == [f"error: {raw / 'train.csv'}: patch '../outside_patch' is "
                                   "not a folder name (holds a path separator); names must not "
                                   "leave the root"]
    with pytest.warns(UserWarning, match="skipped"):
        assert ben_main(raw, tmp_path / "b", "--skip-invalid") == 0
    report = json.loads((tmp_path / "b/TFRecord/prep_report.json").read_text())
    assert [s["reason"] for s in report["skipped"]] == [
        f"{raw / 'train.csv'}: patch '../outside_patch' is not a folder name (holds a path "
        "separator); names must not leave the root"]
    names_written = [r["patch_name"].numpy().decode() for r in ben.parse_records(
        [str(tmp_path / "b/TFRecord/train.tfrecord")])]
    assert sorted(names_written) == sorted(names)  # (shards hold them in a seeded order)


@pytest.mark.slow
def test_two_preps_started_together_on_one_folder(dlrsd_sample, tmp_path, capsys):
    """The case of the report: a prep runs, a second one (another seed) starts on the same
    folder: the second exits 2 naming the first, which finishes alone."""
    out = tmp_path / "both"
    args = ["-r_dlrsd", str(dlrsd_sample / "DLRSD"), "-r_ucm",
            str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(out), "--noise-levels", "30", "50",
            "--quiet"]
    first = subprocess.Popen([sys.executable, "prep_DLRSD_noisy.py", *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lock = out / "TFRecord" / ".prep.lock"
    deadline = time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert lock.exists(), first.communicate()
    assert prep_DLRSD_noisy.main(args + ["--seed", "7"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith(f"error: {out / 'TFRecord'}: in use by pid {first.pid} on host ")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    meta = json.loads((out / "TFRecord" / "records_meta.json").read_text())
    assert meta["seed"] == 42 and not lock.exists()


def test_tasks_of_a_sharded_prep_share_the_folder_a_whole_prep_does_not(dlrsd_sample, tmp_path,
                                                                       capsys):
    import locks

    tf_dir = tmp_path / "out" / "TFRecord"
    args = ["-r_dlrsd", str(dlrsd_sample / "DLRSD"), "-r_ucm",
            str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(tmp_path / "out"), "--quiet",
            "--noise-levels", "50", "--shard-size", "20"]
    task0 = tf_dir / ".prep-task-0-of-2.lock"
    _plant_lock(tf_dir, os.getpid())  # a live whole prep ...
    assert prep_DLRSD_noisy.main(args + ["--shard", "1/2"]) == 2  # ... keeps the tasks out
    assert f"in use by pid {os.getpid()} on host {locks.hostname()}" in error_lines(capsys)[0]
    (tf_dir / ".prep.lock").unlink()
    task0.write_text(json.dumps({"pid": os.getpid(), "host": locks.hostname(), "purpose": "task 0",
                                 "since": "2026-01-02 03:04:05", "token": "planted"}))
    assert prep_DLRSD_noisy.main(args + ["--shard", "0/2"]) == 2  # the same task twice: no
    assert "(task 0)" in error_lines(capsys)[0]
    assert prep_DLRSD_noisy.main(args) == 2  # a whole prep: no
    assert f"delete {task0}" in error_lines(capsys)[0]
    assert prep_DLRSD_noisy.main(args + ["--shard", "1/2"]) == 0  # its partner task: yes
    assert not (tf_dir / ".prep-task-1-of-2.lock").exists() and task0.exists()
    assert list(tf_dir.glob("*-of-*.tfrecord"))  # task 1's shards are there
