"""The evaluation protocols of DESIGN §3.4, checked on tiny hand-made logs."""

import numpy as np
import pandas as pd

from reaseq.offline.datasets import LoadReport, RawDataset
from reaseq.offline.prepare import Prepared, prepare


def raw(rows: list[tuple], explicit: bool, n_items: int = 10) -> RawDataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    inter["label"] = (inter["rating"] >= 4).astype(float) if explicit else np.nan
    inter["order"] = np.arange(len(inter))
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(n_items)]})
    items["title"] = items["text"] = items["item_id"]
    items["category"] = ""
    report = LoadReport("mem", "generic", len(rows), len(rows), {}, {})
    return RawDataset("t", inter, items, True, explicit, report)


def test_implicit_leave_last_out_with_one_negative_per_positive() -> None:
    rows = [("u1", f"i{k}", 10 - k, 5.0) for k in range(5)]  # file order is reverse time
    rows += [("u2", "i7", 1, 5.0), ("u2", "i8", 2, 5.0), ("u2", "i9", 3, 5.0)]
    data = prepare(raw(rows, explicit=False))
    s = data.samples
    pos = s[s.label == 1]
    assert len(pos) == (5 - 1) + (3 - 1)  # every interaction after the first
    assert len(s[s.label == 0]) == len(pos)
    u1 = int(np.flatnonzero(data.user_ids == "u1")[0])
    # time order: i4 (t=6) ... i0 (t=10); last = i0 -> test, i1 -> val
    items = data.items.set_index("item_row")["item_id"]
    test = pos[(pos.user_row == u1) & (pos.split == "test")]
    assert items[test.item_row.iloc[0]] == "i0" and test.hist_end.iloc[0] == 4
    val = pos[(pos.user_row == u1) & (pos.split == "val")]
    assert items[val.item_row.iloc[0]] == "i1"
    # negatives never touched by the user, with the same history as their positive
    neg = s[s.label == 0]
    touched = {"u1": {f"i{k}" for k in range(5)}, "u2": {"i7", "i8", "i9"}}
    for row in neg.itertuples():
        assert items[row.item_row] not in touched[data.user_ids[row.user_row]]
    hist = data.histories(test, max_len=3, pad=-1)
    assert [items[i] for i in hist[0]] == ["i3", "i2", "i1"]  # most recent 3, oldest first


def test_explicit_global_time_split_and_positive_behaviors() -> None:
    rows = [("u1", f"i{k}", k, 5.0 if k % 2 == 0 else 2.0) for k in range(10)]
    data = prepare(raw(rows, explicit=True))
    s = data.samples.sort_values("item_row")
    assert len(s) == 10 and set(s.label) == {0.0, 1.0}
    assert s.split.tolist() == ["train"] * 8 + ["val", "test"]
    # behaviors are the earlier positives: i0, i2, i4, i6 before i8
    assert data.beh_items.tolist() == [0, 2, 4, 6, 8]
    assert s[s.item_row == 9].hist_end.iloc[0] == 5
    assert s[s.item_row == 8].hist_end.iloc[0] == 4


def test_prepared_round_trips_through_files(tmp_path) -> None:
    data = prepare(raw([("u1", f"i{k}", k, 5.0) for k in range(4)], explicit=False))
    data.save(tmp_path)
    again = Prepared.load(tmp_path)
    pd.testing.assert_frame_equal(again.samples, data.samples)
    np.testing.assert_array_equal(again.beh_items, data.beh_items)
