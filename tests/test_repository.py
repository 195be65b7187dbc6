"""The repository stands on its own: no tracked text file points outside it.

A clone has only what is committed. A path into the folder the project was developed
beside (its reference docs and data), or any absolute path of the development machine, is
a broken link for everyone else: docs must point at docs/, data at tests/data/.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEXT_SUFFIXES = {
    ".py", ".md", ".toml", ".json", ".jsonl", ".yaml", ".yml", ".sh", ".cfg", ".txt", ".ini",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".gitignore", ".dockerignore"}
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
    "dist",
}

# Written with character classes so that this file does not match itself.
OUTSIDE = re.compile(
    r"(?:\.\.[/\\])+share[d]\b"  # a parent-escaping path to the reference folder
    r"|/wor[k]/"  # an absolute path on the development machine
    r"|\bshare[d]/(?:docs|data|seeds|hooks)\b"  # the reference folder's sub-folders by name
)


def _candidates() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: walk the tree
        found = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [
                d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
            ]
            found += [Path(dirpath) / f for f in filenames]
        return found


def _is_text(path: Path) -> bool:
    return path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES


def test_no_tracked_file_points_outside_the_repository():
    files = [p for p in _candidates() if _is_text(p) and p.is_file()]
    assert any(p.name == "README.md" for p in files), "found no files to check"
    hits = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if not OUTSIDE.search(text):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for m in OUTSIDE.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()[:120]}")
    where = "\n".join(hits)
    assert not hits, f"paths outside the repository (a clone does not have them):\n{where}"


def test_the_pattern_catches_outside_paths_and_not_prose():
    bad = ["see ../" + "shared/" + "docs/X.md", "../../" + "shared", "/wo" + "rk/x/data/y",
           "/wo" + "rk/main/README.md", "`shar" + "ed/data/gsm8k/train.jsonl`"]  # fmt: skip
    good = ["a left-padded shared KV cache", "shared pages count once", "shared_memory",
            "tests/data/gsm8k/train_sample.jsonl", "docs/ALGORITHMS.md", "network/work"]  # fmt: skip
    assert [s for s in bad if not OUTSIDE.search(s)] == []
    assert [s for s in good if OUTSIDE.search(s)] == []
