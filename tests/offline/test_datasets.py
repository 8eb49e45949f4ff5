"""Every loader format on tiny fixtures (malformed rows included), detection, label rules, and the
expected counts of the real benchmark data when it is present."""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reaseq.offline.datasets import (
    EXAMPLE_CHARS,
    FORMATS,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_REASONS,
    MAX_EXAMPLES,
    RawDataset,
    detect_format,
    load_dataset,
)

SHARED_DATA = Path(
    os.environ.get(
        "REASEQ_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
).resolve()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def check_contract(ds: RawDataset) -> None:
    """Shape every consumer relies on: columns, dtypes, unique items covering interactions."""
    inter, items = ds.interactions, ds.items
    assert tuple(inter.columns) == INTERACTION_COLUMNS
    assert tuple(items.columns) == ITEM_COLUMNS
    for column in ("user_id", "item_id"):
        assert pd.api.types.is_string_dtype(inter[column])
    for column in ("timestamp", "rating", "label"):
        assert inter[column].dtype == np.float64
    assert inter["order"].dtype == np.int64
    for column in ITEM_COLUMNS:
        assert pd.api.types.is_string_dtype(items[column])
        assert not items[column].isna().any()
    assert items["item_id"].is_unique
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert inter["order"].is_monotonic_increasing
    report = ds.report
    dropped = sum(n for reason, n in report.malformed.items() if reason not in ITEM_REASONS)
    assert report.rows_read - report.rows_kept == dropped
    assert report.rows_kept == len(inter)
    for reason, examples in report.examples.items():
        assert reason in report.malformed
        assert len(examples) <= MAX_EXAMPLES
        assert all(len(e) <= EXAMPLE_CHARS for e in examples)


# ----------------------------------------------------------------------------- recbole


RECBOLE_INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ti1\t5.0\t100
u1\ti2\t3.0\t100
u1\ti3\t4.0\t200

u2\ti1\t2.0\t50
u2\ti1
u2\ti2\t5.0\t60\textra
\ti2\t5.0\t70
u3\ti2\t4.0\tyesterday
u3\ti2\tgood\t80
u3\ti9\t1.0\t90
"""
RECBOLE_ITEM = """item_id:token\tasin:token\ttext:token_seq\tcategory_id:token\tbrand_id:token
i1\tB001\tBlue Pen Pens Acme\t3\t7
i2\tB002\tRed Stapler &amp; Staples\t4\t0
i2\tB002\tRed Stapler &amp; Staples\t4\t0
i3\tB003\tOnly three fields
"""


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    write(tmp_path / "shop" / "Toy.inter", RECBOLE_INTER)
    write(tmp_path / "shop" / "Toy.item", RECBOLE_ITEM)
    write(tmp_path / "shop" / "Toy.relation", "head_id:token\trelation:token\ttail_id:token\n")
    return tmp_path / "shop"


def test_recbole_rows_and_malformed(recbole_dir: Path) -> None:
    ds = load_dataset(recbole_dir)
    check_contract(ds)
    assert ds.report.format == "recbole" and ds.name == "Toy"
    assert ds.report.rows_read == 10  # the blank line is layout, not a row
    assert ds.report.rows_kept == 5
    assert ds.report.malformed == {
        "too_few_fields": 1,
        "too_many_fields": 1,
        "missing_user_id": 1,
        "bad_timestamp": 1,
        "bad_rating": 1,
        "duplicate_item_row": 1,
        "bad_item_row": 1,
        "item_without_metadata": 2,  # i3 (its item row is bad) and i9 (no row at all)
    }
    assert ds.report.examples["bad_timestamp"] == ["u3\ti2\t4.0\tyesterday"]
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["u1", "u1", "u1", "u2", "u3"]
    assert inter["item_id"].tolist() == ["i1", "i2", "i3", "i1", "i9"]
    assert inter["timestamp"].tolist() == [100.0, 100.0, 200.0, 50.0, 90.0]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0, 2.0, 1.0]
    assert inter["order"].tolist() == [0, 1, 2, 3, 9]
    assert inter["label"].isna().all()  # Amazon-like ratings: implicit under labels="auto"
    assert ds.has_timestamps and not ds.explicit_labels
    items = ds.items.set_index("item_id")
    assert items.loc["i1", "title"] == "Blue Pen Pens Acme"
    assert items.loc["i1", "text"] == "Blue Pen Pens Acme"  # asin and *_id columns are skipped
    assert items.loc["i2", "title"] == "Red Stapler & Staples"
    assert items.loc["i1", "category"] == "3"
    assert list(items.loc["i9"]) == ["", "", ""]
    summary = ds.report.summary()
    assert "bad_timestamp: 1" in summary and "10 read, 5 kept" in summary


def test_recbole_movielens_classes_and_explicit_labels(tmp_path: Path) -> None:
    directory = tmp_path / "ml-tiny"
    write(
        directory / "ml-tiny.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t5\n1\t11\t3\t6\n",
    )
    write(
        directory / "ml-tiny.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tHeat\t1995\tAction Crime\n",
    )
    ds = load_dataset(directory)
    check_contract(ds)
    assert ds.explicit_labels
    assert ds.interactions["label"].tolist() == [1.0, 0.0]
    items = ds.items.set_index("item_id")
    assert items.loc["10", "category"] == "Animation"
    assert items.loc["10", "text"] == "Toy Story. 1995. Animation Children's Comedy"
    assert load_dataset(directory, rating_threshold=3).interactions["label"].tolist() == [1, 1]
    implicit = load_dataset(directory, labels="implicit")
    assert not implicit.explicit_labels and implicit.interactions["label"].isna().all()


def test_recbole_without_timestamps_or_items(tmp_path: Path) -> None:
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\na\tb\na\tc\n")
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert not ds.has_timestamps and ds.interactions["timestamp"].isna().all()
    assert ds.report.malformed == {"item_without_metadata": 2}
    with pytest.raises(ValueError, match="labels='explicit' needs ratings or a label column"):
        load_dataset(tmp_path, labels="explicit")


# ----------------------------------------------------------------------------- lcrec-json


def test_lcrec_json(tmp_path: Path) -> None:
    inter = {"0": [0, 1, 2], "1": [2, 0], "2": "not a list", "3": [1, None, 1.5, 7]}
    items = {
        "0": {
            "title": "Kapton Tape.",
            "description": "Heat <b>resistant</b> &amp; strong.",
            "brand": "Acme",
            "categories": (
                "Industrial & Scientific,Tapes, Adhesives & Sealants,Adhesive Tapes,Kapton"
            ),
        },
        "1": {"title": "Beaker", "description": "", "brand": "", "categories": ""},
        "2": {"title": "Glue", "description": "", "brand": "B", "categories": "Root,Adhesives"},
        "5": ["not", "a", "dict"],
    }
    write(tmp_path / "Sci.inter.json", json.dumps(inter))
    write(tmp_path / "Sci.item.json", json.dumps(items, indent=2))
    assert detect_format(tmp_path) == "lcrec-json"
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert ds.name == "Sci" and not ds.has_timestamps and not ds.explicit_labels
    assert ds.report.rows_read == 10
    assert ds.report.malformed == {
        "bad_sequence": 1,
        "missing_item_id": 1,
        "bad_item_id": 1,
        "bad_item_row": 1,
        "item_without_metadata": 1,
    }
    inter_df = ds.interactions
    assert inter_df["user_id"].tolist() == ["0", "0", "0", "1", "1", "3", "3"]
    assert inter_df["item_id"].tolist() == ["0", "1", "2", "2", "0", "1", "7"]
    assert inter_df["order"].tolist() == [0, 1, 2, 3, 4, 5, 8]
    assert inter_df["timestamp"].isna().all() and inter_df["rating"].isna().all()
    table = ds.items.set_index("item_id")
    assert table.loc["0", "category"] == "Adhesive Tapes"  # third path level
    assert table.loc["2", "category"] == "Adhesives"  # shallow path: its last element
    assert table.loc["1", "category"] == ""
    assert table.loc["0", "text"] == (
        "Kapton Tape. Acme. Industrial & Scientific > Tapes, Adhesives & Sealants > "
        "Adhesive Tapes > Kapton. Heat resistant & strong."
    )
    with pytest.raises(ValueError, match="labels='explicit'"):
        load_dataset(tmp_path, labels="explicit")


# ----------------------------------------------------------------------------- movielens


def test_movielens_dat(tmp_path: Path) -> None:
    write(
        tmp_path / "ratings.dat",
        "1::10::5::978300760\n1::20::2::978302109\n2::10::4\n2::10::x::978301968\n"
        "2::30::3::978301000\n::10::4::978300000\n",
    )
    write(
        tmp_path / "movies.dat",
        "10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action|Crime|Thriller\n"
        "40::Broken line\n",
        encoding="latin-1",
    )
    assert detect_format(tmp_path) == "movielens-dat"
    assert detect_format(tmp_path / "movies.dat") == "movielens-dat"
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert ds.explicit_labels and ds.has_timestamps
    assert ds.interactions["label"].tolist() == [1.0, 0.0, 0.0]
    assert ds.report.malformed == {
        "too_few_fields": 1,
        "bad_rating": 1,
        "missing_user_id": 1,
        "bad_item_row": 1,
        "item_without_metadata": 1,
    }
    items = ds.items.set_index("item_id")
    assert items.loc["10", "title"] == "Amélie (2001)"
    assert items.loc["10", "text"] == "Amélie (2001). Comedy, Romance"
    assert items.loc["20", "category"] == "Action"


def test_movielens_100k(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t377\n")

    def flags(*on: int) -> str:
        return "|".join("1" if i in on else "0" for i in range(19))

    write(
        tmp_path / "u.item",
        f"242|Kolya (1996)|24-Jan-1997||http://x|{flags(5)}\n"
        f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{flags(6, 13, 16)}\n"
        f"377|Heavyweights (1994)|01-Jan-1994||http://z|{flags(4).replace('0', '2', 1)}\n"
        f"400|Café (1990)|01-Jan-1990||http://w|{flags()}\n",
        encoding="latin-1",
    )
    assert detect_format(tmp_path) == "movielens-100k"
    ds = load_dataset(tmp_path, name="tiny")
    check_contract(ds)
    assert ds.name == "tiny" and ds.explicit_labels
    assert ds.interactions["label"].tolist() == [0.0, 1.0]
    assert ds.report.malformed == {"too_few_fields": 1, "bad_item_row": 1}
    items = ds.items.set_index("item_id")
    assert items.loc["302", "category"] == "Crime"
    assert items.loc["302", "text"] == "L.A. Confidential (1997). Crime, Mystery, Thriller"
    assert items.loc["242", "category"] == "Comedy"
    assert items.loc["400", "title"] == "Café (1990)" and items.loc["400", "category"] == ""


# ----------------------------------------------------------------------------- amazon-json


def test_amazon_json_2014(tmp_path: Path) -> None:
    reviews = [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A1", "asin": "B02", "overall": 4.0, "unixReviewTime": 1400086400},
        {"asin": "B02", "overall": 4.0, "unixReviewTime": 1400086400},
        {"reviewerID": "A2", "asin": "B01", "overall": 3.0, "unixReviewTime": "soon"},
        {"reviewerID": "A2", "asin": "B03", "overall": 2.0, "unixReviewTime": 1400000001},
    ]
    lines = [json.dumps(r) for r in reviews] + ['{"reviewerID": "A3", "asin": ']
    write(tmp_path / "reviews_Office_Products_5.json.gz", "\n".join(lines) + "\n")
    meta = [
        {
            "asin": "B01",
            "title": "Gel Pen",
            "brand": "Pilot",
            "categories": [["Office Products", "Writing", "Pens", "Gel Pens"], ["Other"]],
            "description": "Smooth 'gel' ink.",
            "salesRank": {"Office Products": 5},
        },
        {"asin": "B02", "title": "Stapler", "categories": [["Office Products", "Staplers"]]},
        {"asin": "B02", "title": "Stapler", "categories": [["Office Products", "Staplers"]]},
        {"asin": "B99", "title": "Never reviewed"},
    ]
    meta_lines = [repr(m) for m in meta] + ["{'asin': 'B03', 'title': broken"]
    write(tmp_path / "meta_Office_Products.json.gz", "\n".join(meta_lines) + "\n")
    assert detect_format(tmp_path) == "amazon-json"
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert not ds.explicit_labels and ds.has_timestamps
    assert ds.report.rows_read == 6 and ds.report.rows_kept == 3
    assert ds.report.malformed == {
        "bad_json": 1,
        "missing_user_id": 1,
        "bad_timestamp": 1,
        "bad_item_row": 1,
        "duplicate_item_row": 1,
        "item_without_metadata": 1,
    }
    assert ds.interactions["item_id"].tolist() == ["B01", "B02", "B03"]
    assert ds.interactions["order"].tolist() == [0, 1, 4]
    items = ds.items.set_index("item_id")
    assert "B99" not in items.index  # meta covers the whole category; only reviewed items
    assert items.loc["B01", "category"] == "Pens"
    assert items.loc["B01", "text"] == (
        "Gel Pen. Pilot. Office Products > Writing > Pens > Gel Pens. Smooth 'gel' ink."
    )
    assert items.loc["B02", "category"] == "Staplers"
    explicit = load_dataset(tmp_path, labels="explicit", rating_threshold=4.5)
    assert explicit.interactions["label"].tolist() == [1.0, 0.0, 0.0]


def test_amazon_json_2018_meta_and_file_path(tmp_path: Path) -> None:
    review = {"reviewerID": "U", "asin": "X1", "overall": 5.0, "unixReviewTime": 1500000000}
    write(tmp_path / "Office_Products_5.json", json.dumps(review) + "\n")
    write(tmp_path / "Other_5.json", json.dumps(review) + "\n")
    meta = {
        "asin": "X1",
        "title": "Desk Lamp",
        "brand": "Lumo",
        "category": ["Office Products", "Office Furniture & Lighting", "Lamps"],
        "description": ["Bright LED.", "Dimmable."],
        "feature": ["USB port"],
    }
    write(tmp_path / "meta_Office_Products.json", json.dumps(meta) + "\n")
    write(tmp_path / "meta_Other.json", json.dumps(meta) + "\n")
    with pytest.raises(ValueError, match="several review JSON files"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path / "Office_Products_5.json")
    check_contract(ds)
    assert ds.report.format == "amazon-json"
    assert ds.report.source.endswith("meta_Office_Products.json")
    item = ds.items.iloc[0]
    assert item["category"] == "Lamps"
    assert item["text"] == (
        "Desk Lamp. Lumo. Office Products > Office Furniture & Lighting > Lamps. "
        "Bright LED. Dimmable. USB port"
    )


# ----------------------------------------------------------------------------- generic


GENERIC_INTERACTIONS = """user_id,item_id,timestamp,label,rating
u1,a,1700000000,1,5
u1,b,2023-11-14T22:14:00Z,0,2
u1,c,1700000000000,1,4
u2,a,not a time,1,5
u2,b,1700000100,2,5
u2,c,1700000200,1,5,extra
u3,a,1700000300,0
u3,"b",1700000400,0,1
"""
GENERIC_ITEMS = """item_id,title,description,brand,price,category
a,"Pan, large",Cast iron.,Acme,19.99,kitchen
b,Rake,Steel tines,Yard Co,9.5,garden
b,Rake,Steel tines,Yard Co,9.5,garden
b,Rake v2,Other,Yard Co,9.5,garden
,Nameless,x,y,1,z
"""


def test_generic_csv(tmp_path: Path) -> None:
    write(tmp_path / "interactions.csv", GENERIC_INTERACTIONS)
    write(tmp_path / "items.csv", GENERIC_ITEMS)
    assert detect_format(tmp_path) == "generic"
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert ds.explicit_labels and ds.has_timestamps  # a label column: explicit under "auto"
    assert ds.report.rows_read == 8 and ds.report.rows_kept == 4
    assert ds.report.malformed == {
        "too_many_fields": 1,
        "too_few_fields": 1,
        "bad_timestamp": 1,
        "bad_label": 1,
        "duplicate_item_row": 1,
        "conflicting_item_row": 1,
        "bad_item_row": 1,
        "item_without_metadata": 1,
    }
    inter = ds.interactions
    assert inter["label"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert inter["timestamp"].tolist() == [1.7e9, 1700000040.0, 1.7e9, 1700000400.0]
    assert inter["order"].tolist() == [0, 1, 2, 6]  # the too-long line is not in the frame
    items = ds.items.set_index("item_id")
    assert items.loc["a", "title"] == "Pan, large"
    assert items.loc["a", "text"] == "Pan, large. Acme. kitchen. Cast iron."  # price skipped
    assert items.loc["b", "title"] == "Rake" and items.loc["b", "category"] == "garden"
    assert list(items.loc["c"]) == ["", "", ""]
    implicit = load_dataset(tmp_path, labels="implicit")
    assert implicit.interactions["label"].isna().all() and not implicit.explicit_labels


def test_generic_parquet_without_labels(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "user_id": [1, 1, 2, None],
            "item_id": ["x", "y", "x", "y"],
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]),
        }
    ).to_parquet(tmp_path / "interactions.parquet")
    pd.DataFrame({"item_id": ["x", "y"], "name": ["Mug", "Cup"], "rank": [1, 2]}).to_parquet(
        tmp_path / "items.parquet"
    )
    ds = load_dataset(tmp_path)
    check_contract(ds)
    assert not ds.explicit_labels
    assert ds.interactions["user_id"].tolist() == ["1", "1", "2"]
    assert ds.interactions["timestamp"].iloc[0] == pd.Timestamp("2024-01-01", tz="UTC").timestamp()
    assert ds.report.malformed == {"missing_user_id": 1}
    assert ds.items.set_index("item_id").loc["x", "text"] == "Mug"
    with pytest.raises(ValueError, match="labels='explicit'"):
        load_dataset(tmp_path, labels="explicit")


def test_generic_missing_columns_is_clear(tmp_path: Path) -> None:
    write(tmp_path / "interactions.csv", "user,item\n1,2\n")
    with pytest.raises(ValueError, match="needs columns user_id and item_id"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------- detection, misc


def test_detection_errors(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "hello")
    with pytest.raises(ValueError, match=r"\*\.inter \(recbole\).*found notes\.txt"):
        detect_format(tmp_path)
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(tmp_path, format="nope")
    with pytest.raises(ValueError, match="no recbole files"):
        load_dataset(tmp_path, format="recbole")
    write(tmp_path / "a.inter", "user_id:token\titem_id:token\n1\t2\n")
    write(tmp_path / "b.inter", "user_id:token\titem_id:token\n1\t3\n")
    with pytest.raises(ValueError, match=r"several \*\.inter files \(a\.inter, b\.inter\)"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path / "b.inter")
    assert ds.name == "b" and ds.interactions["item_id"].tolist() == ["3"]
    with pytest.raises(ValueError, match="labels must be"):
        load_dataset(tmp_path / "a.inter", labels="sometimes")  # type: ignore[arg-type]


def test_examples_are_capped(tmp_path: Path) -> None:
    long_user = "u" * 500
    rows = "".join(f"{long_user}\ti{k}\tbad\n" for k in range(10))
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    ds = load_dataset(tmp_path)
    assert ds.report.malformed["bad_timestamp"] == 10 and ds.interactions.empty
    assert len(ds.report.examples["bad_timestamp"]) == MAX_EXAMPLES
    assert all(len(e) == EXAMPLE_CHARS for e in ds.report.examples["bad_timestamp"])
    check_contract(ds)


def test_formats_constant() -> None:
    assert FORMATS == (
        "recbole",
        "lcrec-json",
        "movielens-dat",
        "movielens-100k",
        "amazon-json",
        "generic",
    )


# ----------------------------------------------------------------------------- real data

REAL = [
    # directory, format, users, items, interactions, explicit labels, timestamps
    ("amazon18-scientific", "lcrec-json", 8_317, 4_344, 58_492, False, False),
    ("amazon14-office", "recbole", 4_905, 2_420, 53_258, False, True),
    ("ml-100k", "recbole", 943, 1_682, 100_000, True, True),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data at {SHARED_DATA}")
@pytest.mark.parametrize(("directory", "fmt", "users", "items", "rows", "explicit", "ts"), REAL)
def test_real_data_counts(
    directory: str, fmt: str, users: int, items: int, rows: int, explicit: bool, ts: bool
) -> None:
    path = SHARED_DATA / directory
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    assert detect_format(path) == fmt
    start = time.perf_counter()
    ds = load_dataset(path)
    assert time.perf_counter() - start < 5.0
    check_contract(ds)
    inter = ds.interactions
    assert inter["user_id"].nunique() == users
    assert len(ds.items) == items and inter["item_id"].nunique() == items
    assert len(inter) == rows and ds.report.rows_read == rows
    assert ds.report.malformed == {}
    assert ds.explicit_labels == explicit and ds.has_timestamps == ts
    assert (ds.items["text"] != "").all()
    if explicit:
        assert math.isclose(inter["label"].mean(), (inter["rating"] >= 4).mean())
    else:
        assert inter["label"].isna().all()


def test_each_format_has_its_own_module() -> None:
    """The package layout names the formats: a format's loader is found by the format's name."""
    from reaseq.offline.datasets.dispatch import _LOADERS

    modules = {fmt: loader.__module__.rsplit(".", 1)[1] for fmt, loader in _LOADERS.items()}
    assert modules == {
        "recbole": "recbole",
        "lcrec-json": "lcrec",
        "movielens-dat": "movielens",
        "movielens-100k": "movielens",
        "amazon-json": "amazon_json",
        "generic": "generic",
    }
    assert tuple(modules) == FORMATS
