"""The README as a new user reads it: every file it points to is in the repository, every command
block that runs `reaseq` makes it callable first, and the metrics example's filter prints the
lines it shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOP_LEVEL = ("reaseq", "tests", "configs", "proto")  # tracked folders a path can start with
ACTIVATE = ". .venv/bin/activate"


def file_references(text: str) -> set[str]:
    """Repository paths (`reaseq/...`, `tests/...`, `configs/...`, `proto/...`), documents
    (`*.md`, linked or named) and relative link targets mentioned anywhere in `text`."""
    starts = "|".join(TOP_LEVEL)
    paths = re.findall(rf"(?<![\w./-])((?:{starts})/[\w./*-]*)", text)
    documents = re.findall(r"(?<![\w/.-])([\w./-]+\.md)\b", text)
    links = re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", text)
    return {p.rstrip(".") for p in (*paths, *documents, *links)}


def exists(reference: str) -> bool:
    """A path, a glob (`test_publish*.py`) matching at least one file, or a folder."""
    if any(c in reference for c in "*?["):
        return any(ROOT.glob(reference))
    return (ROOT / reference).exists()


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_reference_finder_sees_paths_documents_and_links() -> None:
    text = "see `reaseq/cli.py`, DEVELOPERS.md and [design](docs/DESIGN.md); not `artifacts/x`"
    assert file_references(text) == {"reaseq/cli.py", "DEVELOPERS.md", "docs/DESIGN.md"}
    assert not exists("DEVELOPERS.md") and exists("tests/offline/test_publish*.py")


def test_every_file_the_readme_points_to_is_in_the_repository() -> None:
    references = file_references(README)
    assert "reaseq/cli.py" in references  # the finder works on the real README
    missing = sorted(r for r in references if not exists(r))
    assert not missing, f"README.md points to files that are not in the repository: {missing}"


def first_command(block: str) -> str:
    """The block's first `reaseq` line (else its first line): a readable test id."""
    lines = block.splitlines()
    return next((line for line in lines if line.startswith("reaseq")), lines[0])[:40]


@pytest.mark.parametrize("block", bash_blocks(README), ids=first_command)
def test_command_blocks_put_reaseq_on_the_path_first(block: str) -> None:
    """`make setup` installs into .venv: a bare `reaseq` only works once it is activated."""
    lines = [line.strip() for line in block.splitlines()]
    calls = [i for i, line in enumerate(lines) if re.match(r"(\w+=\S+\s+)*reaseq\s", line)]
    if calls:
        assert ACTIVATE in lines[: calls[0]], f"activate .venv before:\n{block}"


def test_the_metrics_example_prints_what_it_shows() -> None:
    (block,) = [b for b in bash_blocks(README) if "/metrics | grep" in b]
    lines = block.splitlines()
    (start,) = [i for i, line in enumerate(lines) if "/metrics | grep" in line]
    pattern = re.search(r"grep -E '([^']+)'", lines[start]).group(1)
    shown = []
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        shown.append(line.removeprefix("#   ").split()[0])
    assert shown, "the example shows no output"
    assert [s for s in shown if not re.match(pattern, s)] == []
    names = {re.match(r"[a-z_]+", s).group(0) for s in shown}
    metrics = (ROOT / "reaseq/service/metrics.py").read_text()
    for name in names:  # counters are exported with a _total suffix
        assert f'"{name.removesuffix("_total")}"' in metrics, name
