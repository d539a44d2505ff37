"""locks.py (exclusive lock files naming their holder) and atomic_files' temporaries: names
that cannot be guessed, never written through a link, clean-up of our own names only."""
import json
import os
import stat
import time

import pytest

import atomic_files
import locks
from atomic_files import WriteError, atomic_path, write_json_atomic
from conftest import temp_name

DEAD_PID = 999999999


def plant(path, **fields):
    """A lock file as another process would have left it."""
    info = {"pid": os.getpid(), "host": locks.hostname(), "since": "2026-01-02 03:04:05",
            "start": None, "purpose": "test", "token": "planted"}
    info.update(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def test_one_holder_at_a_time_and_release(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    with locks.acquire(path, "first") as lock:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == locks.hostname()
        assert held["purpose"] == "first" and held["since"] and lock.held
        with pytest.raises(locks.LockHeld) as info:
            locks.acquire(path, "second", what="the folder")
        msg = str(info.value)
        assert msg.startswith("the folder: in use by pid ")
        assert f"pid {os.getpid()} on host {locks.hostname()} since {held['since']}" in msg
        assert f"delete {path}" in msg and isinstance(info.value, ValueError)
    assert not path.exists()
    locks.acquire(path, "again").release()  # free again after release
    assert not path.exists()


def test_stale_lock_is_taken_over_with_a_note_others_are_not(tmp_path):
    path = tmp_path / "x.lock"
    plant(path, pid=DEAD_PID)  # same host, process gone
    notes = []
    with locks.acquire(path, "mine", log=notes.append):
        assert json.loads(path.read_text())["purpose"] == "mine"
    assert len(notes) == 1 and f"stale lock of pid {DEAD_PID} on host" in notes[0]
    # another host, no heartbeat: never judged from here, even with a pid not alive here
    plant(path, pid=DEAD_PID, host="elsewhere.example")
    with pytest.raises(locks.LockHeld, match=f"pid {DEAD_PID} on host elsewhere.example"):
        locks.acquire(path, "mine")
    # a live pid whose process started at another time: the pid was reused, the lock is stale
    plant(path, pid=os.getpid(), start="1")
    assert locks.is_stale(locks.read(path)) == (locks._process_start(os.getpid()) is not None)
    plant(path, pid=os.getpid(), start=locks._process_start(os.getpid()))
    assert not locks.is_stale(locks.read(path))


def test_heartbeat_tells_a_dead_host_from_a_live_one(tmp_path):
    path = tmp_path / "x.lock"
    old = time.time() - 3600
    plant(path, pid=1, host="node7.example", heartbeat_s=60)
    with pytest.raises(locks.LockHeld, match="node7.example"):  # touched recently: alive
        locks.acquire(path, "mine")
    os.utime(path, (old, old))  # silent for an hour (> 15 min and > 10 beats): that node died
    notes = []
    with locks.acquire(path, "mine", log=notes.append):
        assert "stale lock of pid 1 on host node7.example" in notes[0]
    plant(path, pid=1, host="node7.example")  # no heartbeat: never judged from here
    os.utime(path, (old, old))
    with pytest.raises(locks.LockHeld):
        locks.acquire(path, "mine")
    path.unlink()
    # a holder with a heartbeat keeps touching its file
    with locks.acquire(path, "mine", heartbeat_s=0.05) as lock:
        assert json.loads(path.read_text())["heartbeat_s"] == 0.05
        os.utime(path, (old, old))
        deadline = time.time() + 30
        while path.stat().st_mtime == old and time.time() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > old and lock.held
    assert not path.exists()


def test_unreadable_lock_is_held_while_young_and_junk_when_old(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("")  # a holder between creating and writing it
    with pytest.raises(locks.LockHeld, match="whose lock file cannot be read yet"):
        locks.acquire(path, "mine")
    old = time.time() - 3600
    os.utime(path, (old, old))  # a crash left it empty long ago
    with locks.acquire(path, "mine"):
        assert json.loads(path.read_text())["purpose"] == "mine"


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "x.lock"
    lock = locks.acquire(path, "mine")
    plant(path, token="someone-else")
    lock.release()
    assert json.loads(path.read_text())["token"] == "someone-else"


# ---------------------------------------------------------------- temporaries
def test_temporary_is_a_new_file_with_an_unguessable_name(tmp_path):
    target = tmp_path / "val.tfrecord"
    names = []
    for _ in range(2):
        with atomic_path(target) as tmp:
            assert tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_size == 0
            assert tmp.parent == tmp_path and tmp.suffix == ".tfrecord"
            assert atomic_files.is_temp_name(tmp.name) and tmp.name.startswith("val.tmp-")
            mask = os.umask(0)
            os.umask(mask)
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o666 & ~mask
            names.append(tmp.name)
            tmp.write_bytes(b"data")
    assert names[0] != names[1]  # random part differs; the pid alone no longer names it
    assert target.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == [
        "val.tfrecord"]


def test_link_planted_at_the_old_temporary_name_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    # the name the earlier scheme would have used for this process
    (out / f"val.tmp-{os.getpid()}.tfrecord").symlink_to(victim)
    with atomic_path(out / "val.tfrecord") as tmp:
        tmp.write_bytes(b"records")
    assert victim.read_text() == "precious"
    assert not (out / "val.tfrecord").is_symlink() and (out / "val.tfrecord").read_bytes() == \
        b"records"


def test_link_at_the_final_name_is_refused_not_replaced(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    link = tmp_path / "config.json"
    link.symlink_to(victim)
    with pytest.raises(WriteError, match=f"^{link}: is a symbolic link \\(to {victim}\\)"):
        write_json_atomic(link, {"a": 1})
    assert link.is_symlink() and victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "victim.json"]


def test_prep_write_probe_does_not_follow_a_planted_link(tmp_path):
    from archives.common import check_writable

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".write-probe-{os.getpid()}").symlink_to(victim)  # the earlier probe name
    check_writable(out)
    assert victim.read_text() == "precious"


def test_clean_up_of_a_foreign_temporary_and_a_live_one(tmp_path):
    mine_dead = tmp_path / temp_name("a", ".h5", DEAD_PID)
    mine_dead.write_bytes(b"x")
    with atomic_path(tmp_path / "b.h5") as live:  # this process's own temporary: kept
        assert atomic_files.remove_stale_temps(tmp_path) == [mine_dead]
        assert live.exists()
    # unless asked for (an interrupted prep sweeps its own before it reports); a temporary
    # gone before its rename is named, nothing is published
    with pytest.raises(WriteError, match=r"c\.h5: not published: its temporary .* was removed"):
        with atomic_path(tmp_path / "c.h5") as live:
            assert atomic_files.remove_stale_temps(tmp_path, own=True) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5"]
