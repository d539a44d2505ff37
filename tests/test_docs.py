"""README.md and docs/*.md name only files, flags and links that exist.

Three checks over every page: (a) repository paths such as `configs/x.json` or `docs/y.md` exist,
(b) every `--flag` of a shown `python <script>.py ...` command is one the script's argparse
defines (read from its `--help`, one subprocess per script, so that check is marked slow),
(c) relative links point to an existing file and, with `#anchor`, to a heading of that page.
"""
from __future__ import annotations

import functools
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
