"""Which format a path holds, and which files of it a loader reads, from file names alone."""

from __future__ import annotations

from pathlib import Path

from reaseq.offline.datasets.base import FORMATS

_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def _unique(candidates: list[Path], what: str, directory: Path) -> Path | None:
    """The one candidate file, None if there is none, a clear error if the choice is ambiguous."""
    if len(candidates) > 1:
        names = ", ".join(sorted(p.name for p in candidates))
        raise ValueError(
            f"{directory}: several {what} files ({names}); pass the path of the one to load"
        )
    return candidates[0] if candidates else None


def _sibling(directory: Path, *names: str) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def _is_json(name: str) -> bool:
    return name.endswith(_JSON_SUFFIXES)


def _amazon_key(name: str) -> str:
    """Category key shared by a review file and its meta file ('reviews_X_5.json.gz' -> 'x')."""
    for suffix in _JSON_SUFFIXES:
        name = name.removesuffix(suffix)
    name = name.removeprefix("reviews_").removeprefix("meta_").removesuffix("_5")
    return name.lower()


def _find_files(fmt: str, path: Path) -> dict[str, Path | None] | None:
    """The files `fmt` would read under `path` (a directory, or one of the format's files);
    None when `path` does not look like `fmt`."""
    directory, chosen = (path.parent, path) if path.is_file() else (path, None)
    name = chosen.name if chosen is not None else ""
    files = sorted(p for p in directory.iterdir() if p.is_file())

    def pick(inter_suffix: str, item_suffix: str) -> dict[str, Path | None] | None:
        """Stem-paired files such as X.inter + X.item; a chosen file selects its stem."""
        if chosen is None:
            inter = _unique(
                [p for p in files if p.name.endswith(inter_suffix)], f"*{inter_suffix}", path
            )
        elif name.endswith((inter_suffix, item_suffix)):
            stem = name.removesuffix(inter_suffix).removesuffix(item_suffix)
            inter = _sibling(directory, stem + inter_suffix)
        else:
            return None
        if inter is None:
            return None
        stem = inter.name.removesuffix(inter_suffix)
        return {"inter": inter, "item": _sibling(directory, stem + item_suffix)}

    def fixed(inter_name: str, item_name: str) -> dict[str, Path | None] | None:
        """Fixed file names such as ratings.dat + movies.dat."""
        if chosen is not None and name not in (inter_name, item_name):
            return None
        inter = _sibling(directory, inter_name)
        return {"inter": inter, "item": _sibling(directory, item_name)} if inter else None

    if fmt == "recbole":
        return pick(".inter", ".item")
    if fmt == "lcrec-json":
        return pick(".inter.json", ".item.json")
    if fmt == "movielens-dat":
        return fixed("ratings.dat", "movies.dat")
    if fmt == "movielens-100k":
        return fixed("u.data", "u.item")
    if fmt == "amazon-json":
        return _find_amazon(directory, chosen, files, path)
    if fmt == "generic":
        if chosen is not None and chosen.suffix in (".csv", ".parquet") and chosen.stem != "items":
            inter: Path | None = chosen
        elif chosen is None or chosen.stem == "items":
            inter = _sibling(directory, "interactions.csv", "interactions.parquet")
        else:
            return None
        if inter is None:
            return None
        return {"inter": inter, "item": _sibling(directory, "items.csv", "items.parquet")}
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or 'auto'")


def _find_amazon(
    directory: Path, chosen: Path | None, files: list[Path], path: Path
) -> dict[str, Path | None] | None:
    """A review JSON-lines file and the meta_* file of the same category beside it."""
    lcrec = (".inter.json", ".item.json")
    metas = [p for p in files if p.name.startswith("meta_") and _is_json(p.name)]
    reviews = [
        p
        for p in files
        if _is_json(p.name) and not p.name.startswith("meta_") and not p.name.endswith(lcrec)
    ]
    if chosen is not None:
        if not _is_json(chosen.name) or chosen.name.endswith(lcrec):
            return None
        if not chosen.name.startswith("meta_"):
            reviews = [chosen]
    elif not metas:
        return None  # a directory is only amazon-json with a meta file in it
    review = _unique(reviews, "review JSON", path)
    if review is None:
        return None
    matching = [m for m in metas if _amazon_key(m.name) == _amazon_key(review.name)]
    meta = _unique(matching, "meta_*.json", path) or _unique(metas, "meta_*.json", path)
    return {"inter": review, "item": meta}


_LOOKED_FOR = (
    "*.inter (recbole), *.inter.json + *.item.json (lcrec-json), ratings.dat (movielens-dat), "
    "u.data (movielens-100k), review *.json[.gz] + meta_*.json[.gz] (amazon-json), "
    "interactions.csv|parquet (generic)"
)


def detect_format(path: str | Path) -> str:
    """The format of the dataset at `path` (a directory, or one file of the dataset)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    for fmt in FORMATS:
        files = _find_files(fmt, path)
        if files is None:
            continue
        if fmt in ("lcrec-json", "amazon-json") and files.get("item") is None:
            continue  # these two are only recognised with their item file beside them
        return fmt
    directory = path if path.is_dir() else path.parent
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    raise ValueError(
        f"cannot detect the dataset format of {path}: looked for {_LOOKED_FOR}; found {found}"
    )
