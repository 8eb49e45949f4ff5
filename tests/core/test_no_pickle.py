"""No artifact is ever unpickled: unpickling runs code chosen by whoever wrote the file, and
releases, checkpoints and caches come from disks and stores other people can write.

Checked two ways: the source of `reaseq/` (service and offline) read as syntax trees, so every
`np.load` says `allow_pickle=False`, every `torch.load` says `weights_only=True`, and no pickle
module is imported at all; and a release whose .npy file is a pickle is refused by the loader
without running it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from reaseq.core.release import (
    ITEM_IDS,
    MANIFEST_FILE,
    ReleaseCheckError,
    ReleaseManifest,
    Snapshot,
    combine_hashes,
    sha256_file,
    snapshot_files,
)

SOURCE_ROOT = Path(__file__).resolve().parents[2] / "reaseq"
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
# (module, function) -> the keyword and the constant it must be passed as
REQUIRED_KEYWORD = {
    ("numpy", "load"): ("allow_pickle", False),
    ("torch", "load"): ("weights_only", True),
}
FORBIDDEN_CALLS = {("pandas", "read_pickle"), ("numpy", "loads")}


def unpickling_problems(source: str, filename: str) -> list[str]:
    """Every place in `source` that could unpickle, as `file:line: what`."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module (`import numpy as np`)
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                root = name.name.split(".")[0]
                aliases[name.asname or root] = name.name if name.asname else root
                if root in PICKLE_MODULES:
                    problems.append(f"{filename}:{node.lineno}: imports {name.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PICKLE_MODULES:
                problems.append(f"{filename}:{node.lineno}: imports from {node.module}")
            for name in node.names:  # `from numpy import load` would dodge the call check
                if (root, name.name) in REQUIRED_KEYWORD or (root, name.name) in FORBIDDEN_CALLS:
                    problems.append(f"{filename}:{node.lineno}: imports {root}.{name.name}")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not isinstance(owner, ast.Name) or owner.id not in aliases:
            continue
        call = (aliases[owner.id].split(".")[0], node.func.attr)
        where = f"{filename}:{node.lineno}: {owner.id}.{node.func.attr}"
        if call in FORBIDDEN_CALLS:
            problems.append(f"{where} unpickles")
        if call in REQUIRED_KEYWORD:
            keyword, value = REQUIRED_KEYWORD[call]
            passed = [k.value for k in node.keywords if k.arg == keyword]
            literal = (
                isinstance(passed[0], ast.Constant) and passed[0].value is value
                if passed
                else False
            )
            if not literal:
                problems.append(f"{where} without {keyword}={value}")
    return problems


def test_no_source_file_can_unpickle() -> None:
    files = sorted(SOURCE_ROOT.rglob("*.py"))
    assert len(files) > 50, "the source tree was not found"
    problems = []
    for path in files:
        problems += unpickling_problems(path.read_text(), str(path.relative_to(SOURCE_ROOT.parent)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("import numpy as np\nnp.load('a.npy')", "without allow_pickle=False"),
        ("import numpy\nnumpy.load('a.npy', allow_pickle=True)", "without allow_pickle=False"),
        ("import numpy as xp\nxp.load('a.npy', mmap_mode='r')", "without allow_pickle=False"),
        ("import torch\ntorch.load('m.pt')", "without weights_only=True"),
        ("import torch\ntorch.load('m.pt', weights_only=False)", "without weights_only=True"),
        ("import torch\nflag = True\ntorch.load('m.pt', weights_only=flag)", "weights_only=True"),
        ("import pickle\npickle.loads(b'')", "imports pickle"),
        ("from joblib import load", "imports from joblib"),
        ("from numpy import load", "imports numpy.load"),
        ("import pandas as pd\npd.read_pickle('x')", "unpickles"),
    ],
)
def test_the_check_finds_each_way_to_unpickle(source: str, needle: str) -> None:
    problems = unpickling_problems(source, "example.py")
    assert any(needle in p for p in problems), problems


def test_the_check_passes_safe_loads() -> None:
    safe = (
        "import numpy as np\nimport torch\n"
        "np.load('a.npy', allow_pickle=False)\n"
        "np.load('a.npy', mmap_mode='r', allow_pickle=False)\n"
        "torch.load('m.pt', map_location='cpu', weights_only=True)\n"
    )
    assert unpickling_problems(safe, "example.py") == []


# --- a release whose .npy is a pickle --------------------------------------------------------


class WritesMarker:
    """Unpickling this creates `path`: proof that a pickle was (or was not) run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (self.path.touch, ())


def plant_pickle(folder: Path, marker: Path) -> None:
    """Replace the release's item ids by an object array (a pickle inside the .npy) and re-hash
    the manifest, as someone able to write the store could: the hashes then all match."""
    objects = np.array(["i0000000", WritesMarker(marker)], dtype=object)
    np.save(folder / ITEM_IDS, objects, allow_pickle=True)
    manifest = ReleaseManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    manifest.files[ITEM_IDS] = sha256_file(folder / ITEM_IDS)
    names = snapshot_files(manifest.value_format)
    manifest.snapshot_sha256 = combine_hashes([manifest.files[n] for n in names])
    (folder / MANIFEST_FILE).write_text(manifest.model_dump_json())


@pytest.fixture
def pickled_release(tmp_path: Path) -> tuple[Path, Path]:
    """(a releases folder whose active release carries a pickle, the pickle's marker file)."""
    from reaseq.offline.publish import EmbeddedPublisher
    from tests.core.tiny_release import tiny_release

    releases = tmp_path / "releases"
    release = EmbeddedPublisher(releases).publish(
        tiny_release(tmp_path / "exports", "pickled", value_format=2)
    )
    marker = tmp_path / "pickle-ran"
    plant_pickle(releases / release, marker)
    # the payload is live: loading it with pickling allowed does run it
    np.load(releases / release / ITEM_IDS, allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    return releases, marker


def test_a_pickled_snapshot_file_is_refused_unread(pickled_release: tuple[Path, Path]) -> None:
    releases, marker = pickled_release
    with pytest.raises(ReleaseCheckError, match=r"item_ids\.npy is not a plain numeric") as info:
        Snapshot.open(releases / "pickled")
    assert "never unpickled" in str(info.value) and "allow_pickle" in str(info.value)
    assert not marker.exists()


@pytest.mark.anyio
async def test_the_service_refuses_a_release_with_a_pickle(
    pickled_release: tuple[Path, Path],
) -> None:
    from reaseq.service.errors import NotReady
    from reaseq.service.ranking import Ranker
    from reaseq.service.settings import ServiceSettings

    releases, marker = pickled_release
    settings = ServiceSettings(_env_file=None, store="embedded", releases_dir=releases)
    ranker = await Ranker.open(settings, follow=False)
    try:
        assert not ranker.is_ready()
        with pytest.raises(NotReady, match=r"release pickled refused: .*never unpickled"):
            await ranker.check_ready()
    finally:
        await ranker.close()
    assert not marker.exists()
