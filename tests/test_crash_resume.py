"""Crash safety: `lookalike index` SIGKILLed and restarted ends as one run would; a torn index is rebuilt on open.

The bounded CI variant of bench/kill_harness.py (whose full run, 20 kills on 1,800 chips, is a script):
the same functions, on 2 scenes cut into 160 chips, with 5 kills.
"""
import importlib.util
import logging
import shutil
import sqlite3

import numpy as np
import pytest

from helpers import REPO_ROOT, ids_by_path

CI_SCENES = 2
CI_CHIP_SIZE = 96  # 10 x 8 chips per 934 x 724 NAIP scene
CI_KILLS = 5
CI_SEED = 5
RUN_TIMEOUT_S = 120

# A batch is one SQLite transaction: a kill inside it must leave none of its rows. (Until store.py used
# db.atomic(), `with self.db.conn:` opened no transaction and sqlite-utils 4 committed each statement on its
# own, so a kill there left image rows without vectors that the restarted run took as done.)


def load_harness():
    spec = importlib.util.spec_from_file_location("kill_harness", REPO_ROOT / "bench" / "kill_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load_harness()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir, shared_data_dir):
    """(setup, work dir, reference run): one uninterrupted `lookalike index` of the CI scenes."""
    scenes = harness.default_scenes(CI_SCENES)
    assert len(scenes) == CI_SCENES, f"expected NAIP scenes in {harness.NAIP_DIR}"
    setup = harness.Setup(scenes=scenes, model_dir=model_dir, chip_size=CI_CHIP_SIZE, batch_size=16)
    work_dir = tmp_path_factory.mktemp("kills")
    return setup, work_dir, harness.build_reference(setup, work_dir, timeout=RUN_TIMEOUT_S)


def failed_checks(result) -> dict:
    return {name: ok for name, ok in result["summary"]["checks"].items() if not ok}


def test_killed_at_random_moments_ends_as_one_run_would(reference):
    setup, work_dir, ref = reference
    result = harness.kill_and_resume(setup, work_dir, ref, kills=CI_KILLS, seed=CI_SEED, name="random",
                                     timeout=RUN_TIMEOUT_S)
    summary, figures = result["summary"], result["comparison"]["figures"]
    assert summary["chips"] == 2 * 10 * 8
    assert summary["kills_mid_run"] >= 1, result["runs"]
    assert summary["max_redone_per_kill"] <= harness.IN_FLIGHT_BATCHES * setup.batch_size
    assert not failed_checks(result), (failed_checks(result), summary["problems"], figures)
    assert figures["min_cosine"] >= harness.COSINE_FLOOR


def test_a_kill_inside_a_batch_write_leaves_no_half_written_image(reference):
    """SIGKILL right after the catalogue row of the second chip of the second batch, before its vector.

    Random kills land inside a batch's write only now and then; this one always does.
    """
    setup, work_dir, ref = reference
    result = harness.kill_and_resume(setup, work_dir, ref, die_at=setup.batch_size + 2, name="mid-write",
                                     timeout=RUN_TIMEOUT_S)
    killed, last = result["runs"]
    assert killed["killed"] and last["returncode"] == 0, result["runs"]
    assert killed["committed"] % setup.batch_size == 0, "a killed run must commit whole batches only"
    assert not failed_checks(result), (failed_checks(result), result["comparison"]["figures"]["orphans"])


def test_the_comparison_catches_a_broken_store(reference, tmp_path):
    """The harness must be able to fail: a lost vector and an altered one are both reported."""
    _, work_dir, _ = reference
    broken_dir = tmp_path / "broken"
    shutil.copytree(work_dir / "reference", broken_dir)
    db = sqlite3.connect(broken_dir / "catalogue.db")
    first, second = (row[0] for row in db.execute("SELECT id FROM images ORDER BY id LIMIT 2"))
    db.execute("DELETE FROM vectors WHERE image_id = ?", [first])
    db.execute("UPDATE vectors SET vector = ? WHERE image_id = ?",
               [np.ones(db.execute("SELECT length(vector) / 4 FROM vectors LIMIT 1").fetchone()[0], "<f4").tobytes(),
                second])
    db.commit()
    db.close()
    comparison = harness.compare_stores(work_dir / "reference", broken_dir)
    checks, figures = comparison["checks"], comparison["figures"]
    assert not checks["one_vector_per_live_image"] and figures["orphans"]["images_without_vector"] == 1
    assert not checks["vectors_match"] and figures["min_cosine"] < harness.COSINE_FLOOR
    assert checks["faiss_consistent_on_open"]  # the index file still holds the lost vector: rebuilt on open
    assert any("out of step" in message for message in figures["open_warnings"])


# -- a torn, missing or stale index file --------------------------------------------------------------------
def tear(index_path, how: str, *, stale_copy=None) -> None:
    if how == "truncated":
        index_path.write_bytes(index_path.read_bytes()[: index_path.stat().st_size // 2])
    elif how == "deleted":
        index_path.unlink()
    elif how == "stale":  # what a kill leaves: the file saved some batches before the catalogue's last commit
        shutil.copy2(stale_copy, index_path)


@pytest.mark.parametrize("how, message", [("truncated", "unreadable"), ("deleted", "missing"),
                                          ("stale", "out of step")])
# A stale file is brought up to date in place (no retraining); a torn or missing one is rebuilt.
def test_a_torn_index_file_is_rebuilt_on_open(how, message, index, chips_dir, store_dir, open_store, caplog):
    from store.store import INDEX_NAME

    index([chips_dir], store_dir)
    stale_copy = store_dir.parent / "stale.faiss"
    shutil.copy2(store_dir / INDEX_NAME, stale_copy)  # 12 vectors; the run below leaves 9
    for path in sorted(chips_dir.glob("*.jpg"))[:3]:
        path.unlink()
    index([chips_dir], store_dir)
    store = open_store(store_dir)
    expected = {image_id: store.search(store.vector(image_id), k=3) for image_id in ids_by_path(store).values()}
    store.close()

    tear(store_dir / INDEX_NAME, how, stale_copy=stale_copy)
    with caplog.at_level(logging.WARNING, logger="store"):
        store = open_store(store_dir)
        search_index = store.index
    action = "bringing it up to date" if how == "stale" else "rebuilding"
    assert any(message in record.getMessage() and action in record.getMessage() for record in caplog.records)
    stored_ids = store._stored_ids()
    assert search_index.ntotal == len(stored_ids) == 9
    assert np.array_equal(np.sort(harness.faiss_ids(search_index)), stored_ids)
    assert {image_id: store.search(store.vector(image_id), k=3) for image_id in stored_ids} == expected


def as_left_by_a_lookalike_before_index_pending(store_dir, image_id: int) -> np.ndarray:
    """What a lookalike older than index_pending left when killed after re-embedding `image_id` (its new vector
    committed, its run never finished) but before saving the index file: the file holds the old vector, and
    nothing lists the re-embed. Returns the new vector."""
    from contextlib import closing

    from store.vectors import vector_to_blob

    with closing(sqlite3.connect(store_dir / "catalogue.db")) as db, db:  # closed: the WAL folded into the file
        old = np.frombuffer(db.execute("SELECT vector FROM vectors WHERE image_id = ?", [image_id]).fetchone()[0],
                            dtype="<f4")
        new = np.random.default_rng(7).standard_normal(len(old)).astype(np.float32)
        new /= np.linalg.norm(new)
        # killed: never ended (the next run would mark it 'interrupted', as it does a Ctrl-C that ended and saved)
        run_id = db.execute("INSERT INTO runs (started, status) VALUES ('2026-11-29T00:00:00', 'interrupted')"
                            ).lastrowid
        db.execute("UPDATE vectors SET vector = ? WHERE image_id = ?", [vector_to_blob(new), image_id])
        db.execute("UPDATE images SET run_id = ? WHERE id = ?", [run_id, image_id])
        db.execute("DROP TABLE index_pending")
    return new


@pytest.mark.parametrize("read_only", [False, True])
def test_an_older_lookalikes_unsaved_re_embed_is_caught_up(indexed, store_dir, chip_paths, monkeypatch, read_only):
    """README: a stale index file is brought up to date in place, images re-embedded since its last save
    included. A store from before index_pending could not say which were re-embedded, so its index kept the
    old vector for good; its upgrade now lists the images of runs that never finished (a read-only reader,
    which cannot upgrade it, reads the same list)."""
    from helpers import only_unchanging_catalogues_open
    from store import Store

    store = Store.open(store_dir)
    image_id = store.image_id_for_path(str(chip_paths[2]))
    store.close()
    new = as_left_by_a_lookalike_before_index_pending(store_dir, image_id)
    if read_only:
        only_unchanging_catalogues_open(monkeypatch, "unable to open database file")

    store = Store.open(store_dir)
    try:
        top = store.search(new, k=1)[0]
    finally:
        store.close()
    assert top["id"] == image_id and top["score"] == pytest.approx(1.0, abs=1e-4)
    if not read_only:  # the upgrade listed it, and only it, for the catch-up (the next save clears the list)
        with sqlite3.connect(store_dir / "catalogue.db") as db:
            assert db.execute("SELECT image_id FROM index_pending").fetchall() == [(image_id,)]


def test_an_older_store_whose_runs_all_ended_lists_nothing_to_catch_up(indexed, store_dir, caplog):
    """A run stopped by Ctrl-C or an error saves the index before it ends ('interrupted', 'failed'): its images are
    in the index file as embedded, and its store's upgrade must not list them all (each open would re-add them)."""
    from store import Store

    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE runs SET status = 'interrupted'")  # ended, as a Ctrl-C's run does
        db.execute("DROP TABLE index_pending")
    with caplog.at_level(logging.WARNING):
        Store.open(store_dir).close()
        Store.open(store_dir).close()
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        assert db.execute("SELECT count(*) FROM index_pending").fetchone()[0] == 0
    assert "out of step" not in caplog.text
