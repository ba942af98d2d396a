"""The documentation runs as written: every ```python and ```bash (or ```console) block of README.md
and docs/*.md is executed, in document order, README first, all in one scratch directory, so a page
can use what an earlier snippet made (the quick start's `models/antiberty`).

A block that cannot run offline here (it needs the hub, a GPU, a cluster, Docker, an unfinished API,
or is too heavy for the suite) carries an HTML comment on the line right before its fence:

    <!-- shown-only: needs the Hugging Face Hub -->

Every other runnable block must exit 0. The quick checks (not `slow`) make sure that each block is
either run or marked, that every fence names a language, that links between the pages resolve, and
that the README stays short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

RUNNABLE = {"python", "bash", "console"}  # the languages this test executes
DISPLAY = {"text"}  # shown as they are (file trees, output)
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARK = re.compile(r"^\s*<!--\s*shown-only:(?P<reason>.*?)-->\s*$")
SNIPPET_TIMEOUT_S = 600


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    shown_only: str | None  # the reason, for a marked block

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order, with the shown-only mark on the line before each."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower()
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) \
                    and not closing["info"].strip():
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        mark = MARK.match(lines[i - 1]) if i > 0 else None
        found.append(Block(doc, i + 1, language, "\n".join(body) + "\n",
                           mark["reason"].strip() if mark else None))
        i = j + 1
    return found


def marks_without_fence(doc: Path) -> list[int]:
    """Lines of shown-only marks that are not right before a fence: a stale mark hides nothing, or the
    wrong thing."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    return [n + 1 for n, text in enumerate(lines)
            if MARK.match(text) and not (n + 1 < len(lines) and FENCE.match(lines[n + 1]))]


def console_commands(code: str) -> str:
    """The commands of a ```console block: `$ ` lines and their backslash continuations; the rest is output."""
    commands: list[str] = []
    continuing = False
    for text in code.splitlines():
        if continuing or text.startswith("$ "):
            commands.append(text if continuing else text[2:])
            continuing = text.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


# --- quick checks: every block run or marked, links resolve, the README stays short ---

def test_every_runnable_block_is_run_or_marked() -> None:
    """Each fence names a language; each python/bash/console block runs unless marked, with a reason;
    every mark sits right before a runnable block; and the quick start is one of the blocks that run."""
    problems = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        found = blocks(doc)
        # an independent count of the opening fences: the parser must see every one
        openings = sum(1 for line in text.splitlines() if re.match(r"^\s*(```|~~~)\S", line))
        if openings != sum(1 for block in found if block.language):
            problems.append(f"{doc.relative_to(ROOT)}: {openings} fences with a language, the parser saw "
                            f"{sum(1 for block in found if block.language)}")
        for block in found:
            if block.language not in RUNNABLE | DISPLAY:
                problems.append(f"{block.where}: fence language {block.language or '(none)'!r}; use one of "
                                f"{sorted(RUNNABLE | DISPLAY)}")
            if block.shown_only is not None and block.language not in RUNNABLE:
                problems.append(f"{block.where}: a shown-only mark on a {block.language!r} block, which never runs")
            if block.shown_only == "":
                problems.append(f"{block.where}: a shown-only mark must say why")
        problems += [f"{doc.relative_to(ROOT)}:{n}: shown-only mark not right before a fence"
                     for n in marks_without_fence(doc)]
    assert not problems, "\n".join(problems)
    quick_start = [b for b in blocks(README)
                   if b.language == "bash" and "mlm-export predict models/antiberty" in b.code]
    assert quick_start and all(b.shown_only is None for b in quick_start), "the README's quick start must run"
    export = [b for b in blocks(README) if "mlm-export antiberty" in b.code and b.language == "bash"]
    assert export and "antiberty_export" in (export[0].shown_only or ""), "the quick start's export is seeded"


def github_anchor(heading: str) -> str:
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    in_fence = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (heading := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            slug = github_anchor(heading[1])
            result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return result


def prose(doc: Path) -> str:
    """The text outside fenced blocks and inline code, where links live."""
    kept, in_fence = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def test_links_between_pages_resolve() -> None:
    """Relative links (pages, images such as docs/bench.png) point at files that exist, and their
    #anchors at headings that exist."""
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc)):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{doc.relative_to(ROOT)}: link to {target}: no such heading in {file.name}")
    assert not problems, "\n".join(problems)


def test_readme_stays_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; reference material belongs in docs/"


# --- the snippets themselves ---

@dataclass
class Workspace:
    """One scratch directory for every page, so that later snippets find what earlier ones wrote."""

    cwd: Path
    scripts: Path
    done: dict[Path, list[str]] = field(default_factory=dict)  # page -> its failures

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # `python -m benchmarks` runs from a checkout: the repository on the path, as its root would be
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
        env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"  # a snippet that needs the hub is marked
        env["PYTHONUNBUFFERED"] = "1"
        env["RAY_prestart_worker_first_driver"] = "0"  # as tests/test_batch.py: no idle Ray workers on 2 cores
        return env

    def run_page(self, doc: Path) -> list[str]:
        if doc in self.done:
            return self.done[doc]
        failures: list[str] = []
        for number, block in enumerate(blocks(doc)):
            if block.language not in RUNNABLE or block.shown_only is not None:
                continue
            failure = self.run_block(block, number)
            if failure:
                failures.append(failure)
                break  # later snippets of the page build on this one
        self.done[doc] = failures
        return failures

    def run_block(self, block: Block, number: int) -> str | None:
        stem = f"{block.doc.stem}-{number:02d}-line{block.line}"
        if block.language == "python":
            script = self.scripts / f"{stem}.py"
            script.write_text(block.code, encoding="utf-8")
            command = [sys.executable, str(script)]
        else:
            code = console_commands(block.code) if block.language == "console" else block.code
            script = self.scripts / f"{stem}.sh"
            script.write_text(code, encoding="utf-8")
            command = ["bash", "-e", "-o", "pipefail", str(script)]
        start = time.monotonic()
        try:
            result = subprocess.run(command, cwd=self.cwd, env=self.env(), capture_output=True, text=True,
                                    timeout=SNIPPET_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{block.where}: still running after {SNIPPET_TIMEOUT_S} s:\n{block.code}"
        print(f"{block.where}: {block.language}, exit {result.returncode}, {time.monotonic() - start:.1f} s")
        if result.returncode == 0:
            return None
        return (f"{block.where}: the {block.language} block exited {result.returncode} (mark it "
                f"`<!-- shown-only: why -->` only if it cannot run offline):\n{block.code}\n"
                f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n--- stderr (tail) ---\n{result.stderr[-5000:]}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, antiberty_export: Any, splade_artifact: Path) -> Workspace:
    """The scratch directory, holding at models/antiberty the AntiBERTy artifact the suite exports once
    (the quick start's export, plus fp16 and bf16): a second export here would cost two minutes; and at
    models/splade the SPLADE artifact of docs/tasks.md, exported once for tests/test_tasks.py."""
    cwd = tmp_path_factory.mktemp("docs-cwd")
    shutil.copytree(antiberty_export.path, cwd / "models" / "antiberty")
    shutil.copytree(splade_artifact, cwd / "models" / "splade")
    return Workspace(cwd, tmp_path_factory.mktemp("docs-snippets"))


@pytest.mark.slow  # conftest groups it with the AntiBERTy export it copies
@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(ROOT)) for doc in DOCS])
def test_snippets_run_as_written(doc: Path, workspace: Workspace) -> None:
    """README.md first (its quick start's artifact is seeded from the suite's export), then each page."""
    if doc != README:
        readme = workspace.run_page(README)
        if readme:
            pytest.fail(f"{doc.relative_to(ROOT)} builds on the README's quick start, which failed:\n{readme[0]}")
    failures = workspace.run_page(doc)
    assert not failures, "\n\n".join(failures)
