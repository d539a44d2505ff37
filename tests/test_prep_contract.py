"""The prep contract shared by the prep scripts: same flags where they mean the same, one error
type, one report format (summary + JSON report + records_meta.json)."""
import hashlib

import pytest

import prep_BEN_noisy
import prep_DLRSD_noisy
from archives import ben, dlrsd, prep_cli, registry

COMMON = ("out_folder", "noise_levels", "seed", "schema", "workers", "skip_invalid", "quiet")


def test_both_scripts_take_the_common_flags_with_the_same_meaning():
    d = vars(prep_DLRSD_noisy.parse_args(["-r_dlrsd", "a", "-r_ucm", "b"]))
    b = vars(prep_BEN_noisy.parse_args(["-r", "a"]))
    assert set(COMMON) <= set(d) and set(COMMON) <= set(b)
    for key in ("seed", "schema", "workers", "skip_invalid", "quiet"):
        assert d[key] == b[key], key
    assert (d["seed"], d["schema"], d["workers"]) == (42, "compact", prep_cli.DEFAULT_WORKERS)
    assert d["noise_levels"] == list(registry.DLRSD.noise_levels)
    assert b["noise_levels"] == list(registry.BEN.noise_levels)
    assert d["out_folder"] == "dumps/data/DLRSD"
    flags = ["--workers", "3", "--quiet", "--skip-invalid", "--seed", "7", "--noise-levels", "20"]
    d = vars(prep_DLRSD_noisy.parse_args(["-r_dlrsd", "a", "-r_ucm", "b", *flags]))
    b = vars(prep_BEN_noisy.parse_args(["-r", "a", *flags]))
    assert {k: d[k] for k in COMMON[1:]} == {k: b[k] for k in COMMON[1:]} == {
        "noise_levels": [20], "seed": 7, "schema": "compact", "workers": 3,
        "skip_invalid": True, "quiet": True}


@pytest.mark.parametrize("parse", [lambda a: prep_DLRSD_noisy.parse_args(["-r_dlrsd", "a",
                                                                          "-r_ucm", "b", *a]),
                                   lambda a: prep_BEN_noisy.parse_args(["-r", "a", *a])])
def test_workers_below_one_is_a_usage_error(parse, capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--workers", "0"])
    assert info.value.code == 2 and "--workers: must be >= 1, got 0" in capsys.readouterr().err


def test_one_error_type_and_one_error_line(tmp_path, capsys):
    assert issubclass(dlrsd.InvalidInput, prep_cli.PrepError)
    assert issubclass(ben.InvalidPatch, prep_cli.PrepError)
    assert issubclass(prep_cli.PrepError, ValueError)
    missing = tmp_path / "none"
    assert prep_DLRSD_noisy.main(["-r_dlrsd", str(missing), "-r_ucm", str(missing),
                                  "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert prep_BEN_noisy.main(["-r", str(missing), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("error: ") and str(missing) in l for l in lines)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.tfrecord"))}


def test_dlrsd_records_do_not_depend_on_workers(dlrsd_sample, tmp_path, capsys):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert prep_DLRSD_noisy.main(["-r_dlrsd", str(dlrsd_sample / "DLRSD"), "-r_ucm",
                                      str(dlrsd_sample / "UCMerced_LandUse"), "-o", str(out),
                                      "--noise-levels", "40", "--workers", str(workers),
                                      "--quiet", "--layout", "files"]) == 0
        outs.append(_digests(out / "TFRecord"))
    assert len(outs[0]) == 4 and outs[0] == outs[1]
    printed = capsys.readouterr()
    assert printed.out.count("DLRSD prep (compact schema, seed 42)") == 2
    assert "img/s" not in printed.err  # --quiet: no progress bar


def test_ben_quiet_and_the_same_report_format(ben_sample, tmp_path, capsys):
    raw = ben_sample
    out = tmp_path / "ben"
    argv = ["-r", str(raw), "-o", str(out), "--noise-levels", "20", "--workers", "1", "--quiet"]
    argv += sum(([f"-{s}", str(raw / f"{s}.csv")] for s in ("train", "val", "test")), [])
    assert prep_BEN_noisy.main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("BEN prep (compact schema, seed 42) -> ")
    assert "noise 20%: pairs changed" in printed.out and "\nskipped: 0\n" in printed.out
    assert "listed but absent under the root" in printed.out
    assert "it/s" not in printed.err and "%|" not in printed.err
    assert (out / "TFRecord" / "records_meta.json").is_file()
