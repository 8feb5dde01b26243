"""Result-store options through the stock client: SQLite file placement and retention,
DictDB culling limits, and --nodb's refusals (docs/store.md)."""

from __future__ import annotations

import pytest

import e2e_util


def _run(rc, n):
    # Builtins travel by reference; the engines cannot import this module.
    return [ar.msg_ids[0] for ar in [rc.load_balanced_view().apply_async(pow, i, 2) for i in range(n)] if ar.get(timeout=30) is not None]


def test_sqlite_location_filename_and_record_retention(ippx_controller_factory, tmp_path):
    where = tmp_path / "elsewhere"
    ctl = ippx_controller_factory(
        "--sqlitedb", f"--SQLiteDB.location={where}", "--SQLiteDB.filename=results.sqlite", "--SQLiteDB.max_records=10"
    )
    ctl.start_engines(1)
    rc = ctl.wait_for_engines(1)
    ids = _run(rc, 30)
    assert (where / "results.sqlite").exists()
    assert not (ctl.profile_dir / "tasks.db").exists()
    # Retention runs about once a second; the newest records stay.
    recs = e2e_util.wait_for(
        lambda: (r := rc.db_query({"msg_id": {"$ne": ""}}, keys=["msg_id"])) and len(r) <= 10 and r,
        timeout=10,
        what="retention down to 10 records",
    )
    assert ids[-1] in {r["msg_id"] for r in recs}
    assert rc.get_result(ids[-1], owner=False).get(timeout=10) == 29 * 29


def test_dictdb_record_limit_culls_oldest(ippx_controller_factory):
    ctl = ippx_controller_factory("--dictdb", "--DictDB.record_limit=20", "--DictDB.cull_fraction=0.5")
    ctl.start_engines(1)
    rc = ctl.wait_for_engines(1)
    ids = _run(rc, 45)
    hist = rc.hub_history()
    assert 10 <= len(hist) <= 20
    assert hist[-1] == ids[-1]
    assert ids[0] not in hist
    with pytest.raises(Exception) as e:
        rc.get_result(ids[0], owner=False).get(timeout=10)
    assert "culled" in str(e.value) or "No such message" in str(e.value)


def test_nodb_refuses_reads(ippx_controller_factory):
    ctl = ippx_controller_factory("--nodb")
    ctl.start_engines(1)
    rc = ctl.wait_for_engines(1)
    ids = _run(rc, 3)
    for call in (rc.hub_history, lambda: rc.db_query({"msg_id": {"$ne": ""}}), lambda: rc.resubmit(ids[:1])):
        with pytest.raises(Exception) as e:
            call()
        assert "NoDB" in str(e.value)
    assert rc.result_status(ids)["completed"] == ids
    rc.purge_hub_results("all")
