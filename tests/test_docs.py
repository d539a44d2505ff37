"""README.md and docs/*.md name only files, flags, targets, keys and links that exist.

Over every page: (a) repository paths such as `configs/x.json` or `docs/y.md` exist, and so do
bare module names in code spans (`run_history.py`) and `file.py::test_name` references,
(b) every `--flag` of a shown `python <script>.py ...` command is one the script's argparse
defines (read from its `--help`, one subprocess per script, so that check is marked slow), and
so is every flag of the flag tables of docs/retrieval.md and docs/data.md, (c) relative links
point to an existing file and, with `#anchor`, to a heading of that page, (d) every `make
<target> [VAR=value]` names a Makefile target and variable. Besides: README's Layout block names
every module (and nothing that is gone), the config key tables agree with `config.Config`
(keys and defaults) and the study key table with `studies.spec`, the ModelInfo / ArchiveInfo
field lists of docs/interfaces.md and docs/contributing.md with the dataclasses, and code
comments cite only docs pages and headings that exist.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# top folders of the repository whose files the pages name (dumps/ holds outputs and user data)
_TOP = r"(?:configs|benchmarks|docs|archives|models|losses|evaluation|studies|tests)"
_PATH = re.compile(r"(?<![\w./<-])(" + _TOP + r"/[\w./-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*```")
_SCRIPT = re.compile(r"python[\w./]*\s+(-m\s+[\w.]+|[\w./-]+\.py)\b(.*)")
_FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _prose_and_code(text: str):
    """(line number, line, inside a code fence) for every line."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        yield n, line, fenced


def path_mentions(text: str) -> list[tuple[int, str]]:
    """Repository paths a page names, outside links (those are checked as links)."""
    out = []
    for n, line, _ in _prose_and_code(text):
        line = _LINK.sub(" ", line)
        for m in _PATH.finditer(line):
            path = m.group(1).split("::")[0].rstrip(".,;:/")
            if any(c in path for c in "<>*") or "..." in path or path.endswith("-"):
                continue
            out.append((n, path))
    return out


def missing_paths(text: str) -> list[str]:
    return [f"line {n}: {p}" for n, p in path_mentions(text) if not (ROOT / p).exists()]


def commands(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, script, flags) of every `python <script>.py ...` / `python -m module ...` shown,
    in code blocks (continuation lines joined) and in inline code spans."""
    out = []
    lines = list(_prose_and_code(text))
    i = 0
    while i < len(lines):
        n, line, fenced = lines[i]
        pieces = [line] if fenced else re.findall(r"`([^`]*)`", line)
        if fenced:
            while pieces[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                pieces[-1] = pieces[-1].rstrip()[:-1] + " " + lines[i][1]
        for piece in pieces:
            piece = piece.split("#")[0] if fenced else piece
            for m in _SCRIPT.finditer(piece):
                script, rest = m.group(1), m.group(2)
                if script.startswith("-m"):
                    script = script.split()[1]
                    if script in ("pytest", "pip", "venv"):
                        continue
                out.append((n, script, _FLAG.findall(rest)))
        i += 1
    return out


@functools.lru_cache(maxsize=None)
def defined_flags(script: str) -> frozenset[str]:
    """The long options in `<script> --help` (a path, or `-m module`)."""
    args = ["-m", script] if not script.endswith(".py") else [script]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, *args, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{script} --help failed:\n{res.stderr[-2000:]}"
    return frozenset(_FLAG.findall(res.stdout)) | {"--help"}


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in _prose_and_code(text):
        m = None if fenced else re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def broken_links(page: Path, text: str) -> list[str]:
    out = []
    for n, line, fenced in _prose_and_code(text):
        if fenced:
            continue
        for m in _LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                out.append(f"line {n}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
                out.append(f"line {n}: {target}: no heading with that anchor")
    return out


# ---- the checkers themselves, on hand-made pages ----------------------------------------------

def test_checkers_catch_a_missing_file_a_wrong_link_and_list_commands(tmp_path):
    page = tmp_path / "p.md"
    text = ("# Title\n\n## Two words: `x`\n\nSee `configs/grid_bce.json` and `configs/nope.json`,\n"
            "[ok](#two-words-x), [bad](#three-words), [gone](missing.md).\n\n"
            "```bash\npython train.py configs/grid_bce.json --resume \\\n    --no-such-flag  # --x\n"
            "make test\n```\nInline: `python -m archives.sample --dataset DLRSD --out D`.\n")
    page.write_text(text)
    assert missing_paths(text) == ["line 5: configs/nope.json"]
    assert broken_links(page, text) == ["line 6: #three-words: no heading with that anchor",
                                        "line 6: missing.md: no such file"]
    assert commands(text) == [(9, "train.py", ["--resume", "--no-such-flag"]),
                              (13, "archives.sample", ["--dataset", "--out"])]
    assert slug("Approximate chi-square: `--index exact|approx`") == \
        "approximate-chi-square---index-exactapprox"


# ---- the real pages ---------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_repository_paths_exist(page):
    assert missing_paths(page.read_text()) == [], _rel(page)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_and_anchors_exist(page):
    assert broken_links(page, page.read_text()) == [], _rel(page)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_shown_scripts_exist(page):
    missing = [f"line {n}: {s}" for n, s, _ in commands(page.read_text())
               if s.endswith(".py") and not (ROOT / s).is_file()]
    assert missing == [], _rel(page)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_shown_flags_are_defined_by_the_script(page):
    wrong = []
    for n, script, flags in commands(page.read_text()):
        if script.endswith(".py") and not (ROOT / script).is_file():
            continue  # reported by test_shown_scripts_exist
        known = defined_flags(script)
        wrong += [f"line {n}: {script} {f}" for f in flags if f not in known]
    assert wrong == [], _rel(page)


# ---- module names, test references, make targets ------------------------------------------

_SKIP_DIRS = {".git", ".venv", "dumps", "build", "__pycache__", ".pytest_cache"}
_BARE = re.compile(r"(?<![\w./*<>-])([A-Za-z_]\w*\.py)\b(?!::)")
_TESTREF = re.compile(r"(?<![\w./-])([\w/]+\.py)::(\w+)")
_MAKE = re.compile(r"(?<![\w./-])make((?:[ \t]+(?:[A-Z_]+=\S+|[a-z][\w-]*|\.\.\.))+)")


@functools.lru_cache(maxsize=None)
def repo_files() -> frozenset[str]:
    """Paths (relative to the root) of the repository's own files."""
    out = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        out.update(os.path.relpath(os.path.join(folder, f), ROOT) for f in files)
    return frozenset(out)


def missing_modules(text: str, files=None) -> list[str]:
    """Bare `name.py` mentions (no folder) that name no file of the repository."""
    names = {os.path.basename(f) for f in (repo_files() if files is None else files)}
    return [f"line {n}: {m}" for n, line, _ in _prose_and_code(text)
            for m in _BARE.findall(_LINK.sub(" ", line)) if m not in names]


def missing_test_refs(text: str) -> list[str]:
    """`file.py::name` references whose file does not define ``name``."""
    out = []
    for n, line, _ in _prose_and_code(text):
        for path, name in _TESTREF.findall(line):
            file = ROOT / path
            if not file.is_file() or not re.search(rf"^\s*(?:def|class)\s+{name}\b",
                                                   file.read_text(), re.M):
                out.append(f"line {n}: {path}::{name}")
    return out


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line, text) of every code line in a fence (comment removed) and of every inline code
    span of the prose (a span may run over a line break)."""
    out, para, start = [], [], 0
    lines = list(_prose_and_code(text))

    def flush():
        joined = " ".join(para)
        out.extend((start, s) for s in re.findall(r"`([^`]+)`", joined))
        para.clear()

    for n, line, fenced in lines:
        if fenced or not line.strip():
            flush()
            if fenced:
                out.append((n, line.split("#")[0]))
            continue
        if not para:
            start = n
        para.append(line)
    flush()
    return out


def makefile_names(makefile: str) -> tuple[set[str], set[str]]:
    """(targets, variables) a Makefile defines."""
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:+]?=", makefile, re.M))
    return targets, variables


def wrong_make_commands(text: str, makefile: str) -> list[str]:
    """`make <target> [VAR=value]` uses whose target or variable the Makefile lacks."""
    targets, variables = makefile_names(makefile)
    out = []
    for n, span in code_spans(text):
        for m in _MAKE.finditer(span):
            for word in m.group(1).split():
                name = word.split("=")[0]
                if word != "..." and name not in (variables if "=" in word else targets):
                    out.append(f"line {n}: make {word}")
    return out


def test_module_test_ref_and_make_checkers_catch_what_is_gone(tmp_path):
    text = ("Modules `config.py`, `gone_module.py` and prep_*_noisy.py; see\n"
            "`tests/test_docs.py::test_module_test_ref_and_make_checkers_catch_what_is_gone` and\n"
            "`tests/test_docs.py::no_such_test`.\n\n"
            "```bash\nmake test   # make nothing\nmake demo DATASET=BEN\n```\n"
            "Then `make\ncleanall` or `make demo DATSET=BEN`.\n")
    assert missing_modules(text) == ["line 1: gone_module.py"]
    assert missing_test_refs(text) == ["line 3: tests/test_docs.py::no_such_test"]
    makefile = ("DATASET ?= DLRSD\n.PHONY: test demo\ntest: install\n\tpytest\n"
                "demo:\n\tpython demo.py\n")
    assert makefile_names(makefile) == ({"test", "demo"}, {"DATASET"})
    assert wrong_make_commands(text, makefile) == ["line 9: make cleanall",
                                                   "line 9: make DATSET=BEN"]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_modules_and_test_references_exist(page):
    text = page.read_text()
    assert missing_modules(text) + missing_test_refs(text) == [], _rel(page)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_make_commands_name_makefile_targets(page):
    assert wrong_make_commands(page.read_text(), (ROOT / "Makefile").read_text()) == [], \
        _rel(page)


# ---- flag tables ------------------------------------------------------------------------------

# pages whose `| flag | ...` tables document these scripts' options
FLAG_TABLES = {"docs/retrieval.md": ("retrieval.py",),
               "docs/data.md": ("prep_DLRSD_noisy.py", "prep_BEN_noisy.py")}


def tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """(line of the header, header cells, rows of cells) of every markdown table."""
    out, current = [], None
    for n, line, fenced in _prose_and_code(text):
        is_row = not fenced and line.lstrip().startswith("|")
        if not is_row:
            current = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if current is None:
            current = (n, cells, [])
            out.append(current)
        elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
            current[2].append(cells)
    return out


def table_flags(text: str) -> list[tuple[int, str]]:
    """(header line, flag) of every `--flag` in the tables whose first column is `flag`."""
    return [(n, f) for n, header, rows in tables(text) if header and header[0] == "flag"
            for row in rows for cell in row for f in _FLAG.findall(cell)]


def test_flag_table_reader_takes_the_flags_of_flag_tables_only():
    text = ("| flag | meaning |\n|---|---|\n| `--metric` | also `--index exact\\|approx` |\n"
            "| `-o/--out_folder` | x |\n\n| key | meaning |\n|---|---|\n| `--not-a-flag` | x |\n")
    assert table_flags(text) == [(1, "--metric"), (1, "--index"), (1, "--out_folder")]


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(FLAG_TABLES))
def test_flag_tables_name_defined_flags(page):
    flags = table_flags((ROOT / page).read_text())
    assert flags, f"{page}: no flag table found"
    known = set().union(*(defined_flags(s) for s in FLAG_TABLES[page]))
    assert [f"table at line {n}: {f}" for n, f in flags if f not in known] == []


# ---- config keys and study keys ---------------------------------------------------------------

_NO_DEFAULT = object()


def section(text: str, heading: str) -> str:
    """The text under the heading ``heading`` (its level), up to the next heading of that level
    or above."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m and m.group(2).strip() == heading:
            level, out = len(m.group(1)), []
            for rest in lines[i + 1:]:
                h = re.match(r"^(#{1,6})\s", rest)
                if h and len(h.group(1)) <= level:
                    break
                out.append(rest)
            return "\n".join(out)
    raise AssertionError(f"no heading {heading!r}")


def parse_default(cell: str):
    """A default column's cell as a value: JSON (`1e-3`, `"Adam"`, `null`, `[]`), else the bare
    word (`densenet121`); an empty cell is no default."""
    cell = cell.strip().strip("`").strip()
    if not cell:
        return _NO_DEFAULT
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def key_rows(text: str) -> list[tuple[str, object]]:
    """(key, documented default) of every row of the `| key | ... | default | ...` tables; a
    cell naming several keys (`a, b, c`) gives one row per key, with the defaults split alike."""
    out = []
    for _, header, rows in tables(text):
        if not header or header[0] != "key" or "default" not in header:
            continue
        col = header.index("default")
        for row in rows:
            keys = [k.strip().strip("`") for k in row[0].split(",")]
            defaults = row[col].split(", ")
            if len(defaults) != len(keys):
                defaults = [row[col]] * len(keys)
            out += [(key, parse_default(d)) for key, d in zip(keys, defaults)]
    return out


def config_defaults() -> dict[str, object]:
    """Every Config key: its default as JSON would hold it (lists, dicts), or _NO_DEFAULT."""
    from config import Config

    out = {}
    for f in dataclasses.fields(Config):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = _NO_DEFAULT
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def wrong_defaults(rows, defaults) -> list[str]:
    """Rows naming a config key whose documented default differs from the code's. A table may
    leave the default of an object-valued key (dumps) to its meaning column."""
    out = []
    for key, doc in rows:
        if key not in defaults:
            continue
        code = defaults[key]
        if doc is _NO_DEFAULT and (code is _NO_DEFAULT or isinstance(code, dict)):
            continue
        if doc is _NO_DEFAULT or code is _NO_DEFAULT or doc != code:
            out.append(f"{key}: documented {'none' if doc is _NO_DEFAULT else repr(doc)}, "
                       f"code {'none (required)' if code is _NO_DEFAULT else repr(code)}")
    return out


def test_key_table_checkers_catch_a_wrong_default_and_a_missing_key():
    text = ("| key | type | default | meaning |\n|---|---|---|---|\n"
            "| model_name | str, required | | x |\n| batch_size | int | 64 | x |\n"
            "| optimizer | str | \"Adam\" | x |\n| a_b, c | int | 1, 2 | x |\n"
            "| dumps | object | | x |\n| backbone | str | `densenet121` | x |\n")
    rows = key_rows(text)
    assert [k for k, _ in rows] == ["model_name", "batch_size", "optimizer", "a_b", "c", "dumps",
                                    "backbone"]
    assert rows[3] == ("a_b", 1) and rows[4] == ("c", 2)
    defaults = config_defaults()
    assert wrong_defaults(rows, defaults) == ["batch_size: documented 64, code 128"]
    assert wrong_defaults([("seed", _NO_DEFAULT)], defaults) == \
        ["seed: documented none, code 0"]
    assert set(defaults) - {k for k, _ in rows} >= {"seed", "learning_rate"}


def test_training_config_table_lists_every_config_key_with_its_default():
    rows = key_rows(section((ROOT / "docs/training.md").read_text(), "Configuration"))
    documented = [k for k, _ in rows]
    defaults = config_defaults()
    assert sorted(set(documented) ^ set(defaults)) == [], \
        "keys in docs/training.md's table but not in Config, or the other way round"
    assert len(documented) == len(set(documented)), "a key is listed twice"
    assert wrong_defaults(rows, defaults) == []


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_config_key_table_states_the_code_defaults(page):
    assert wrong_defaults(key_rows(page.read_text()), config_defaults()) == [], _rel(page)


def test_study_key_table_matches_the_study_reader():
    from config import Config
    from studies import spec

    rows = tables(section((ROOT / "docs/studies.md").read_text(), "Robustness studies"))[0][2]
    named = {k for row in rows for k in re.findall(r"`(\w+)`", row[0])}
    assert set(spec.STUDY_KEYS) - named == set(), "study keys missing from docs/studies.md"
    assert named - set(spec.STUDY_KEYS) - set(Config.keys()) == set()
    objects = {re.findall(r"`(\w+)`", row[0])[0]: json.loads(re.findall(r"`(\{[^`]*\})`",
                                                                         row[1])[0])
               for row in rows if re.search(r"`\{", row[1])}
    assert objects == {"sample_archive": spec.SAMPLE_KEYS, "retrieval": spec.RETRIEVAL_KEYS}


# ---- README's Layout block --------------------------------------------------------------------

LAYOUT_DIRS = ("archives", "models", "losses", "evaluation", "studies")


def layout_names(text: str) -> dict[str, set[str]]:
    """{folder ("" for the top level): file names or patterns} of README's Layout block; a line
    starting with `folder/` and the indented lines after it belong to that folder."""
    block = section(text, "Layout").split("```")[1]
    out: dict[str, set[str]] = {}
    current = ""
    for line in block.splitlines():
        m = re.match(r"^([\w-]+)/\s", line)
        if m:
            current, line = m.group(1), line[m.end():]
        elif not line.startswith(" "):
            current = ""
        out.setdefault(current, set()).update(re.findall(r"[\w*]+\.(?:py|c|json)\b", line))
    return out


def layout_expected(files) -> list[str]:
    """The files README's Layout block must name: every module at the top level and in
    LAYOUT_DIRS (not __init__.py) and the study files."""
    out = []
    for f in files:
        folder, name = os.path.split(f)
        if (folder == "" or folder in LAYOUT_DIRS) and name.endswith(".py") and \
                name != "__init__.py":
            out.append(f)
        elif folder == "studies" and name.endswith(".json"):
            out.append(f)
    return sorted(out)


def layout_problems(text: str, files) -> tuple[list[str], list[str]]:
    """(files the block does not name, names in the block that match no file)."""
    names = layout_names(text)
    missing = [f for f in layout_expected(files)
               if not any(fnmatch.fnmatch(os.path.basename(f), p)
                          for p in names.get(os.path.dirname(f), ()))]
    stale = [os.path.join(folder, p) for folder, pats in names.items() for p in sorted(pats)
             if not any(fnmatch.fnmatch(f, os.path.join(folder, p)) for f in files)]
    return missing, stale


def test_layout_checker_catches_a_missing_and_a_stale_module():
    text = ("# R\n\n## Layout\n\n```\ntrain.py old.py   entry points\n"
            "models/     grid.py, gone.py,\n            base.py\n"
            "studies/    spec.py; long_*.json\ntests/      pytest suite\n```\n\n## License\n")
    files = ["train.py", "config.py", "models/grid.py", "models/base.py", "models/new.py",
             "models/__init__.py", "studies/spec.py", "studies/long_a.json", "tests/test_x.py"]
    assert layout_problems(text, files) == (["config.py", "models/new.py"],
                                            ["old.py", "models/gone.py"])


def test_readme_layout_names_every_module():
    missing, stale = layout_problems((ROOT / "README.md").read_text(), sorted(repo_files()))
    assert missing == [], "modules README's Layout block does not name"
    assert stale == [], "names in README's Layout block that match no file"


# ---- field lists of the registries ------------------------------------------------------------

def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_model_and_archive_field_lists_match_the_dataclasses():
    from archives.registry import ArchiveInfo
    from models.registry import ModelInfo

    interfaces = (ROOT / "docs/interfaces.md").read_text()
    listed = re.search(r"one `ModelInfo` per model_name \(([^)]*)\)", interfaces).group(1)
    assert {n.strip() for n in listed.split(",")} == field_names(ModelInfo)
    described = section(interfaces, "Archive descriptions (`archives/registry.py`)")
    assert field_names(ArchiveInfo) - set(re.findall(r"`(\w+)", described)) == set()
    contributing = section((ROOT / "docs/contributing.md").read_text(), "2. The registry entry")
    named = set(re.findall(r"`([a-z_]+)`", re.split(r"The\s+fields\s+say", contributing)[1]))
    assert named - field_names(ModelInfo) == set(), "contributing.md names a field that is gone"
    assert field_names(ModelInfo) - {"name", "model_class", "family"} - named == set()


# ---- citations in code comments ---------------------------------------------------------------

_CITE = re.compile(r"(docs/[\w-]+\.md|README(?:\.md)?)(#[\w-]+)?"
                   r"(?:,\s*[\"'](?P<section>[^\"']+)[\"'])?")


def heading_texts(text: str) -> set[str]:
    """Every heading, backticks removed and white space collapsed."""
    return {" ".join(m.group(1).replace("`", "").split())
            for _, line, fenced in _prose_and_code(text)
            if not fenced and (m := re.match(r"^#{1,6}\s+(.*)$", line))}


def wrong_citations(code: str) -> list[str]:
    """Citations of docs pages (or README) in ``code`` whose page, #anchor or quoted section
    ("Heading", or the part of a heading before its parenthesis) does not exist, and citations
    of document sections by number."""
    out = [f"cites {m.group(0)!r}" for m in
           re.finditer(r"\bSPEC\b[^\n]{0,20}\bsection\b|(?i:\bsection\s+\d+)", code)]
    for m in _CITE.finditer(code):
        page = ROOT / (m.group(1) if m.group(1).endswith(".md") else "README.md")
        if not page.is_file():
            out.append(f"{m.group(1)}: no such page")
            continue
        text = page.read_text()
        if m.group(2) and m.group(2)[1:] not in anchors(text):
            out.append(f"{m.group(1)}{m.group(2)}: no heading with that anchor")
        if m.group("section"):
            wanted = " ".join(re.sub(r"\n\s*#", " ", m.group("section")).replace("`", "").split())
            if not any(h == wanted or h.startswith(wanted + " (") for h in heading_texts(text)):
                out.append(f'{m.group(1)}, "{wanted}": no such heading')
    return out


def test_citation_checker_catches_a_missing_page_heading_and_section_number():
    code = ('# see docs/training.md, "Multi-worker training" and docs/data.md, "Preparing the\n'
            '# records"; docs/nope.md; docs/data.md, "No such part"; SPEC section 4;\n'
            "# docs/data.md#preparing-the-records, docs/data.md#gone; README, 'Install'")
    assert wrong_citations(code) == ["cites 'SPEC section'", 'docs/nope.md: no such page',
                                     'docs/data.md, "No such part": no such heading',
                                     "docs/data.md#gone: no heading with that anchor"]


def test_code_cites_only_existing_docs_pages_and_headings():
    wrong = []
    for rel in sorted(repo_files()):
        if rel.endswith(".py") and rel != "tests/test_docs.py":
            wrong += [f"{rel}: {w}" for w in wrong_citations((ROOT / rel).read_text())]
    assert wrong == []
