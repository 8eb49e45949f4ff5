"""The evaluation protocols of DESIGN §3.4, checked on tiny hand-made logs."""

import numpy as np
import pandas as pd

from reaseq.offline.datasets import LoadReport, RawDataset
from reaseq.offline.prepare import PrepareConfig, Prepared, prepare


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
    rows = [("u1", f"i{k}", k, 5.0) for k in range(4)] + [
        ("u2", "i5", 0, 5.0),
        ("u2", "i6", 1, 5.0),
    ]
    data = prepare(raw(rows, explicit=False))  # u2 gives u1 logged items it never touched
    data.save(tmp_path)
    again = Prepared.load(tmp_path)
    pd.testing.assert_frame_equal(again.samples, data.samples)
    np.testing.assert_array_equal(again.beh_items, data.beh_items)


def test_negatives_come_from_logged_items_only_and_are_seeded() -> None:
    """A catalog row nobody ever touched is a trivially easy negative: never sample one."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):  # each user touches 5 of the logged items i0..i9
        for t, k in enumerate(rng.choice(10, size=5, replace=False)):
            rows.append((f"u{u}", f"i{k}", t, 5.0))
    data = prepare(raw(rows, explicit=False, n_items=40))  # i10..i39: in the catalog, never used
    items = data.items.set_index("item_row")["item_id"]
    neg = data.samples[data.samples.label == 0]
    assert len(neg) == 30 * 4
    assert set(items[neg.item_row]) <= {f"i{k}" for k in range(10)}
    again = prepare(raw(rows, explicit=False, n_items=40))
    pd.testing.assert_frame_equal(again.samples, data.samples)  # deterministic (seed 0)
    other = prepare(raw(rows, explicit=False, n_items=40), PrepareConfig(seed=1))
    assert not other.samples.item_row.equals(data.samples.item_row)


def test_train_period_behaviors_end_before_each_users_first_held_out_sample() -> None:
    rows = [("u1", f"i{k}", k, 5.0) for k in range(5)] + [
        ("u2", "i7", 1, 5.0),
        ("u2", "i8", 2, 5.0),
    ]
    data = prepare(raw(rows, explicit=False))
    items = data.items.set_index("item_row")["item_id"]
    log = data.train_period_behaviors()
    by_user = {data.user_ids[u]: [items[i] for i in g.item_row] for u, g in log.groupby("user_row")}
    assert by_user == {"u1": ["i0", "i1", "i2"]}  # u2: its first item is val-period, then test


def test_explicit_train_period_is_the_positives_before_the_global_time_split() -> None:
    rows = [("u1", f"i{k}", 2 * k, 5.0 if k % 2 == 0 else 2.0) for k in range(10)]
    rows += [("u2", "i1", 1, 5.0)]
    data = prepare(raw(rows, explicit=True))  # 11 ratings: u1's i9 -> test, its i8 -> val
    log = data.train_period_behaviors()
    by_user = {data.user_ids[u]: g.item_row.tolist() for u, g in log.groupby("user_row")}
    assert by_user == {"u1": [0, 2, 4, 6], "u2": [1]}
