"""strategy "multi_worker": two local workers (TF_CONFIG, loopback ports) run ``train.py`` as a
user would; they train to the same weights, only the chief writes, the other worker's scratch
checkpoints are removed, and a run stopped with --max-epochs resumes on both."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import N_TRAIN, run_config

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240  # per worker process: a hang fails the test instead of blocking CI

# train.py's main, with the final weights and the patch names of every step's local batches
# dumped for the test (argv: dump prefix, then train.py's arguments)
WORKER = """
import json, sys
import numpy as np
import train, training
dump = sys.argv[1]
seen = []
run_init, run_train = training._Run.__init__, training.train

def init(self, *args, **kwargs):
    run_init(self, *args, **kwargs)
    step = self.train_step
    def recorded(batch):
        local = self.strategy.experimental_local_results(batch["patch_name"])
        seen.append([int(self.epoch), [n.decode() for t in local for n in t.numpy()]])
        return step(batch)
    self.train_step = recorded

def trained(*args, **kwargs):
    result = run_train(*args, **kwargs)
    np.savez(dump + ".npz", *[training._read(v) for m in result.model.keras_models.values()
                              for v in m.weights])
    return result

training._Run.__init__, training.train = init, trained
code = train.main(sys.argv[2:])
with open(dump + ".json", "w") as f:
    json.dump(seen, f)
sys.exit(code)
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_config(path, cfg):
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def _run_workers(configs, tmp_path, tag, *args):
    """Start one worker per config (worker 0 the chief), wait for both (killing both on a hang
    or a failure); returns their (returncode, output) and their scratch TMPDIRs."""
    ports = _free_ports(len(configs))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, tmpdirs = [], []
    for index, config in enumerate(configs):
        tmpdir = tmp_path / f"tmp-{tag}-{index}"
        tmpdir.mkdir()
        env = dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        env.pop("SLURM_STEP_NUM_TASKS", None)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"{tag}-{index}"), str(config),
             "--no-progress", *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        tmpdirs.append(tmpdir)
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            results.append((proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for code, out in results:
        assert code == 0, out
    return [out for _, out in results], tmpdirs


def _weights(tmp_path, tag, index):
    with np.load(tmp_path / f"{tag}-{index}.npz") as z:
        return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]


def _epoch_lines(out):
    """Each epoch line's figures (GRID: its loss terms, selection, validation), without the
    times; the lines must have training and validation losses."""
    lines = re.findall(r"^epoch \d+/\d+: [^(]*", out, re.M)
    return [m for m in lines if re.search(r"^epoch \d+/\d+: dis [\d.]+ .*, val dis [\d.]+", m)]


def _last_epoch_figures(out):
    """The end-of-run summary's last-epoch losses (four decimals)."""
    return re.findall(r"^  last epoch \((?:train|val)\):.*$", out, re.M)


def _checkpoint_values(folder):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(folder))
    counters = ("epoch", "step_in_epoch", "training_time_s", "pending_report",
                "epoch_partial_sums", "save_counter", "optimizer", "_CHECKPOINTABLE")
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith(counters)}


@pytest.mark.slow
def test_two_local_workers_train_to_equal_weights_and_only_the_chief_writes(records, tmp_path):
    cfg = run_config(records, tmp_path / "chief", strategy="multi_worker", nb_epoch=2)
    # the other worker gets its own dumps folder: it must stay empty (on a cluster both share one)
    other = run_config(records, tmp_path / "other", strategy="multi_worker", nb_epoch=2)
    configs = [_write_config(tmp_path / "chief.json", cfg), _write_config(tmp_path / "other.json",
                                                                           other)]
    (chief_out, worker_out), tmpdirs = _run_workers(configs, tmp_path, "run")

    chief_w, worker_w = _weights(tmp_path, "run", 0), _weights(tmp_path, "run", 1)
    assert len(chief_w) > 4 and len(chief_w) == len(worker_w)
    for a, b in zip(chief_w, worker_w):
        np.testing.assert_array_equal(a, b)
    # the same figures on both: training losses are reduced over all workers, validation runs
    # on every worker with the same weights
    lines = _epoch_lines(chief_out)
    assert len(lines) == 2 and lines == _epoch_lines(worker_out), (chief_out, worker_out)
    figures = _last_epoch_figures(chief_out)
    assert len(figures) == 2 and figures == _last_epoch_figures(worker_out)

    # only the chief wrote: its outputs exist, the other worker's folders were never created
    assert cfg.feature_model_path.is_file() and cfg.config_dump_path.is_file()
    assert any(cfg.summaries_dir.iterdir())
    assert not (tmp_path / "other").exists(), list((tmp_path / "other").rglob("*"))
    assert "outputs are written by the chief" in worker_out
    # the other worker's scratch checkpoints are gone; the chief's checkpoints are its own
    assert list(tmpdirs[1].iterdir()) == []
    assert sorted(p.name for p in cfg.checkpoint_dir.iterdir() if p.is_dir()) == []

    # every epoch: the workers' local batches are disjoint and together hold every record once
    seen = [json.loads((tmp_path / f"run-{i}.json").read_text()) for i in (0, 1)]
    for epoch in (0, 1):
        names = [[n for e, batch in s if e == epoch for n in batch] for s in seen]
        assert len(names[0]) == len(names[1]) == N_TRAIN // 2
        assert len(set(names[0]) | set(names[1])) == N_TRAIN


@pytest.mark.slow
def test_two_workers_resume_the_chiefs_checkpoint(records, tmp_path):
    cfg = run_config(records, tmp_path / "out", strategy="multi_worker", nb_epoch=2)
    configs = [_write_config(tmp_path / "cfg.json", cfg)] * 2  # one shared folder, as on a cluster
    outs, _ = _run_workers(configs, tmp_path, "first", "--max-epochs", "1")
    assert all("1/2 epochs" in out for out in outs)
    first = _checkpoint_values(cfg.checkpoint_dir)
    assert not cfg.feature_model_path.exists()

    outs, tmpdirs = _run_workers(configs, tmp_path, "resumed", "--resume")
    restored = [re.findall(r"^resumed from (\S+/checkpoints/ckpt-\d+): epoch 1 done", out, re.M)
                for out in outs]
    assert restored[0] and restored[0] == restored[1], outs  # both: the chief's checkpoint
    for out in outs:  # both trained epoch 2 only
        assert len(_epoch_lines(out)) == 1 and "epoch 2/2" in _epoch_lines(out)[0]
    for a, b in zip(_weights(tmp_path, "resumed", 0), _weights(tmp_path, "resumed", 1)):
        np.testing.assert_array_equal(a, b)
    assert cfg.feature_model_path.is_file()
    assert all(list(t.iterdir()) == [] for t in tmpdirs)
    last = _checkpoint_values(cfg.checkpoint_dir)
    assert first.keys() == last.keys() and any(not np.array_equal(first[k], last[k])
                                               for k in first)
