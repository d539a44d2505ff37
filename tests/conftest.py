"""Session fixtures shared by the test files, and the ``slow`` marker.

The sample archives and the tiny training records are built once per session (the costly part
of many tests). Tests that start a Python subprocess are marked ``slow``: ``pytest -m "not slow"``
skips them while iterating; ``make test`` runs everything.
"""
import signal
from pathlib import Path

import pytest
import tensorflow as tf

N_TRAIN, N_EVAL = 8, 4  # tiny training records: 2 steps per epoch at batch size 4


def run_config(records: Path, out: Path, **kw):
    """A validated small training Config on ``records`` (train/val/test.tfrecord), writing
    under ``out``; keyword arguments override the defaults (GRID-BCE, DLRSD, small_cnn)."""
    from config import Config

    d = dict(model_name="GRID-BCE", dataset="DLRSD", backbone="small_cnn", embed_dim=8,
             batch_size=4, nb_epoch=1, noise_prcnt=50, noisy_sel_prcnt=25, seed=3,
             train_tfrecord_paths=str(records / "train.tfrecord"),
             val_tfrecord_paths=str(records / "val.tfrecord"),
             test_tfrecord_paths=str(records / "test.tfrecord"),
             dumps={k: str(out / k) for k in ("model_weights", "summaries", "configs", "features")})
    d.update(kw)
    return Config.from_dict(d)


def temp_name(stem: str, suffix: str, pid: int, host: str | None = None) -> str:
    """A name of the form atomic_files.atomic_path gives its temporaries (``host``: this
    host's tag unless given)."""
    from atomic_files import host_tag

    return f"{stem}.tmp-{pid}-{host or host_tag()}-k3x9_q2z{suffix}"


def default_sigint() -> None:
    """``preexec_fn`` for a subprocess that a test interrupts with SIGINT: a shell that runs the
    suite in the background starts it with SIGINT ignored, which every child inherits (Python
    then installs no KeyboardInterrupt handler); a user's Ctrl-C reaches a default handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def copy_records(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` records of ``src`` written to ``dst``."""
    with tf.io.TFRecordWriter(str(dst)) as writer:
        for raw in tf.data.TFRecordDataset(str(src)).take(n):
            writer.write(raw.numpy())


@pytest.fixture(scope="session")
def dlrsd_sample(tmp_path_factory) -> Path:
    """The DLRSD-style raw sample archive (21 scenes x 5 images, seed 0); do not modify it."""
    from archives import sample

    raw = tmp_path_factory.mktemp("dlrsd_sample")
    assert sample.main(["--dataset", "DLRSD", "--out", str(raw), "--per-class", "5",
                        "--seed", "0"]) == 0
    return raw


@pytest.fixture(scope="session")
def dlrsd_prepped(dlrsd_sample, tmp_path_factory) -> Path:
    """TFRecord folder of the DLRSD sample, one file per split: train, val, test,
    train_noise_prcnt50 (the sharded layout: tests/test_shards.py)."""
    import prep_DLRSD_noisy

    out = tmp_path_factory.mktemp("dlrsd_prepped")
    assert prep_DLRSD_noisy.main(["-r_dlrsd", str(dlrsd_sample / "DLRSD"),
                                  "-r_ucm", str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(out),
                                  "--noise-levels", "50", "--quiet", "--layout", "files"]) == 0
    return out / "TFRecord"


@pytest.fixture(scope="session")
def records(dlrsd_prepped, tmp_path_factory) -> Path:
    """Tiny TFRecords for training runs: train / train_noise_prcnt50 (8), val and test (4)."""
    tiny = tmp_path_factory.mktemp("tiny_records")
    for name, n in (("train", N_TRAIN), ("train_noise_prcnt50", N_TRAIN), ("val", N_EVAL),
                    ("test", N_EVAL)):
        copy_records(dlrsd_prepped / f"{name}.tfrecord", tiny / f"{name}.tfrecord", n)
    return tiny


@pytest.fixture(scope="session")
def ben_sample(tmp_path_factory) -> Path:
    """The BigEarthNet-style raw sample archive (12 patches, seed 3) with its split CSVs."""
    from archives import sample_ben

    return sample_ben.write_sample_archive(tmp_path_factory.mktemp("ben_sample") / "raw", seed=3,
                                           n_patches=12)
