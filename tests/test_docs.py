"""The docs cannot rot: every command shown in README.md and docs/*.md still composes or is
accepted, every relative link and image exists, and every docs page is linked from the README.

Commands are read from the fenced shell blocks: `python train.py ...` and `python generate.py
...` must compose with Hydra's compose API (the groups and keys exist, the values parse, as
the entry point parses them: generate.py quotes free-text prompts first); `python -m s2s.X
...` must be a module whose `--help` works and lists every `--flag` the docs give it; `python
benchmarks/x.py` and `python docs/x.py` must exist. Placeholders such as `<run>` stand for a
user's value and are replaced by a plain word.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.train import compose_generate, compose_train

from s2s.cli_generate import FREE_TEXT_KEYS, quote_free_text

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PLACEHOLDER = re.compile(r"<[^<>=]+>")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def commands(page: Path) -> list[list[str]]:
    """Every `python ...` command of the page's shell blocks, continuation lines joined."""
    found = []
    for lang, body in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("python "):
                found.append(shlex.split(line, comments=True))
    return found


ALL = [(page, argv) for page in PAGES for argv in commands(page)]


def _id(item: tuple[Path, list[str]]) -> str:
    page, argv = item
    return f"{page.name}:{' '.join(argv[1:4])}"


def overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides of a train.py / generate.py command, as its entry point sees them:
    flags and hydra.* keys dropped (compose has no run directory), a sweep's first value."""
    out = []
    for arg in quote_free_text(argv[2:]):
        if arg.startswith("-") or arg.startswith("hydra."):
            continue
        key, _, value = arg.partition("=")
        if key not in FREE_TEXT_KEYS:
            value = PLACEHOLDER.sub("X", value)
            if "-m" in argv and "," in value and not value.startswith("["):
                value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


@pytest.mark.parametrize("item", ALL, ids=[_id(i) for i in ALL])
def test_documented_command_still_works(item):
    page, argv = item
    assert argv[0] == "python", argv
    if argv[1] == "train.py":
        compose_train(overrides(argv))
    elif argv[1] == "generate.py":
        compose_generate(*overrides(argv))
    elif argv[1] == "-m":
        module = argv[2]
        assert module.startswith("s2s."), f"{page.name}: {argv}"
        text = module_help(module)
        for flag in (a.split("=")[0] for a in argv[3:] if a.startswith("--")):
            assert flag in text, f"{page.name}: {module} has no {flag} (`{' '.join(argv)}`)"
    else:
        assert (REPO / argv[1]).is_file(), f"{page.name}: {argv[1]} does not exist"


@functools.cache
def module_help(module: str) -> str:
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, f"python -m {module} --help failed: {run.stderr[-500:]}"
    return run.stdout


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_and_images_exist(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} (no {path})"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_readme_is_short_and_commands_were_found():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
    kinds = {argv[1] for _, argv in ALL}
    assert {"train.py", "generate.py", "-m"} <= kinds  # the extraction itself works
