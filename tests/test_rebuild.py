"""`lookalike rebuild`: a new store built beside the live one and swapped in atomically; readers never break."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import REPO_ROOT, copy_chips
from test_ray_index import _ray_processes, run_env, store_snapshot

REBUILD_CHIPS = 96

READER = textwrap.dedent("""
    import json, os, random, sys, time
    from pathlib import Path
    from store import swap

    store_dir, stop_path, progress_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def tell(seen, searches):  # what the test waits on, replaced whole so that it never reads half of it
        partial = progress_path.with_suffix(".partial")
        partial.write_text(json.dumps({"seen": seen, "searches": searches}))
        os.replace(partial, progress_path)

    rng = random.Random(0)
    searches = errors = 0
    seen = []  # the fingerprints of the stores answered from, in order
    store, generation = swap.open_live(store_dir), swap.generation(store_dir)
    while not stop_path.exists():
        try:
            if swap.generation(store_dir) != generation:  # what the page does: reopen a changed store
                store.close()
                store, generation = swap.open_live(store_dir), swap.generation(store_dir)
            ids = [row["id"] for row in store.images_by_path().values()]
            hits = store.search(store.vector(rng.choice(ids)), k=5)
            assert len(hits) == 5 and all(hit["path"] for hit in hits)
            fingerprint = store.provenance["fingerprint"]
            changed = not seen or seen[-1] != fingerprint
            if changed:
                seen.append(fingerprint)
            searches += 1
            if changed or searches % 10 == 0:
                tell(seen, searches)
        except Exception as error:  # every kind counts: the claim is "never an error"
            errors += 1
            print("reader error:", type(error).__name__, error, file=sys.stderr)
    print(json.dumps({"searches": searches, "errors": errors, "seen": seen}))
""")


@pytest.fixture
def live_store(embedder, tmp_path):
    from indexer.pipeline import index_collection

    chips = copy_chips(tmp_path / "chips", REBUILD_CHIPS)
    store_dir = tmp_path / "live"
    index_collection([str(chips)], store_dir, embedder=embedder, batch_size=16, workers=0, progress=False)
    return store_dir


def fingerprint_of(store_dir) -> str:
    from store import Store

    return Store.peek_provenance(store_dir)["fingerprint"]


def file_digests(store_dir) -> dict:
    """The store's files; write.lock is left out: it holds only who is writing, and a rebuild takes it."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store_dir.iterdir())
            if p.is_file() and p.name != "write.lock"}


def wait_for_reader(reader, progress_path, *, stores: int, searches: int) -> None:
    """Until the reader has answered from `stores` stores and made `searches` searches since the last one came."""
    deadline, first = time.monotonic() + 120, None
    while time.monotonic() < deadline and reader.poll() is None:
        if progress_path.exists():
            progress = json.loads(progress_path.read_text())
            if len(progress["seen"]) >= stores:
                first = progress["searches"] if first is None else first
                if progress["searches"] - first >= searches:
                    return
        time.sleep(0.05)
    raise AssertionError(f"the reader did not reach {stores} store(s) and {searches} searches: "
                         + (reader.stderr.read()[-2000:] if reader.poll() is not None else "still running"))


def test_a_rebuild_swap_never_breaks_a_reader(live_store, other_model_dir, load_embedder, tmp_path):
    from indexer.rebuild import rebuild_store

    old = fingerprint_of(live_store)
    stop_path, progress_path = tmp_path / "stop", tmp_path / "progress.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(live_store), str(stop_path), str(progress_path)],
                              cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # waits on the reader's own word, not on a fixed sleep: a loaded machine can take seconds to start it
        wait_for_reader(reader, progress_path, stores=1, searches=20)  # searching the old store
        summary = rebuild_store(live_store, embedder=load_embedder(other_model_dir), batch_size=16, workers=0,
                                progress=False)
        wait_for_reader(reader, progress_path, stores=2, searches=20)  # and then the new one
    finally:
        stop_path.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    new = fingerprint_of(live_store)
    assert new != old
    assert report["errors"] == 0, err
    assert report["searches"] >= 20
    assert report["seen"] == [old, new]  # the old store until the swap, the new one after it
    assert summary["indexed"] == REBUILD_CHIPS and summary["previous"] == str(live_store) + ".previous"
    assert fingerprint_of(live_store.with_name("live.previous")) == old
    assert not live_store.with_name("live.rebuilding").exists()


def test_an_interrupted_rebuild_leaves_the_live_store_untouched(live_store, other_model_dir, tmp_path):
    """A --ray rebuild killed midway; the live store is as it was; run again, it resumes and swaps."""
    before_rows, before_files = store_snapshot(live_store), file_digests(live_store)
    command = [sys.executable, "-m", "indexer.cli", "rebuild", "--store", str(live_store), "--model",
               str(other_model_dir), "--dtype", "float32", "--device", "cpu", "--batch-size", "8", "--no-progress",
               "--json", "--shard-rows", "8", "--ray-actors", "1", "--ray"]
    processes = _ray_processes()
    job = subprocess.Popen(command, cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    staging = live_store.with_name("live.rebuilding")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None and len(list(staging.glob("shards/*/shard-*"))) < 3:
        time.sleep(0.05)
    assert job.poll() is None, "the rebuild ended before it could be killed: " + job.stderr.read().decode()[-2000:]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    job.stdout.close()
    job.stderr.close()
    for pid in _ray_processes() - processes:  # the killed job's own Ray processes
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    after_rows = store_snapshot(live_store)
    assert file_digests(live_store) == before_files
    assert after_rows["rows"] == before_rows["rows"] and after_rows["nearest"] == before_rows["nearest"]
    assert staging.is_dir()
    already = 0  # rows the staging store took in while the cluster embedded, before the kill
    if (staging / "catalogue.db").exists():
        from store import Store

        partial = Store.open(staging)
        already = partial.count_images()
        partial.close()

    done = subprocess.run(command, cwd=REPO_ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["reused"] + already >= 2 * 8 and summary["indexed"] + already == REBUILD_CHIPS
    assert fingerprint_of(live_store) != fingerprint_of(live_store.with_name("live.previous"))
    rebuilt = store_snapshot(live_store)
    assert [(r["id"], r["path"]) for r in rebuilt["rows"]] == [(r["id"], r["path"]) for r in before_rows["rows"]]
    assert not staging.exists()


def test_swap_in_exchanges_directories_and_falls_back_to_renames(tmp_path, monkeypatch):
    from store import swap

    for name in ("live", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "catalogue.db").write_text(name)
    assert swap.swap_in(tmp_path / "live", tmp_path / "new") == tmp_path / "live.previous"
    assert (tmp_path / "live" / "catalogue.db").read_text() == "new"
    assert (tmp_path / "live.previous" / "catalogue.db").read_text() == "live"
    assert not (tmp_path / "new").exists()

    def unsupported(a, b):
        raise swap.ExchangeUnsupported("not here")

    monkeypatch.setattr(swap, "exchange", unsupported)
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "catalogue.db").write_text("newer")
    assert swap.swap_in(tmp_path / "live", tmp_path / "newer", keep_previous=False) is None
    assert (tmp_path / "live" / "catalogue.db").read_text() == "newer"
    assert not (tmp_path / "live.previous").exists()


def test_rebuild_of_a_store_without_runs_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from indexer.cli import cli

    result = CliRunner().invoke(cli, ["rebuild", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no lookalike store" in result.output and "Traceback" not in result.output


def test_a_rebuild_keeps_the_index_settings_of_the_live_store(embedder, tmp_path):
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    chips = copy_chips(tmp_path / "chips", 12)
    store_dir = tmp_path / "live"
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False,
                     index_settings={"target_recall": 0.9, "memory_bytes": 50_000_000})
    rebuild_store(store_dir, embedder=embedder, workers=0, progress=False,
                  index_settings={"target_recall": 0.99, "memory_bytes": None})
    store = Store.open(store_dir)
    assert store.index_settings() == {"target_recall": 0.99, "memory_bytes": 50_000_000}
    assert store.count_images() == 12


def test_a_rebuild_from_inside_the_store_folder(embedder, tmp_path, monkeypatch):
    """--store . (or LOOKALIKE_STORE=.): the staging folder is named after the store's, which "." has not."""
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    chips = copy_chips(tmp_path / "chips", 4)
    index_collection([str(chips)], tmp_path / "live", embedder=embedder, workers=0, progress=False)
    monkeypatch.chdir(tmp_path / "live")
    summary = rebuild_store(".", embedder=embedder, workers=0, progress=False)
    assert summary["indexed"] == 4 and (tmp_path / "live.previous").is_dir()
    assert Store.open(tmp_path / "live").count_images() == 4


def test_a_rebuild_keeps_every_image_id_and_gives_new_images_fresh_ones(embedder, tmp_path):
    """Ids survive a rebuild even where a fresh run would number differently (gaps left by removed files,
    images added since), so saved ids and the page's links still point at the same images."""
    import shutil
    from pathlib import Path

    from helpers import SAMPLES_DIR, ids_by_path
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    chips = copy_chips(tmp_path / "chips", 12)
    store_dir = tmp_path / "live"
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    for path in sorted(chips.iterdir())[:4]:  # ids 1-4 leave the store: a fresh run would renumber from 1
        path.unlink()
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    before = ids_by_path(store)
    store.close()
    assert sorted(before.values()) == list(range(5, 13))
    newcomer = next(path for path in sorted(SAMPLES_DIR.glob("*.jpg"))
                    if path.name not in {Path(known).name for known in before})
    shutil.copy2(newcomer, chips / ("0-" + newcomer.name))  # sorts first: a fresh run would give it id 1

    rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    after = ids_by_path(store)
    assert {path: after[path] for path in before} == before
    assert after[str(chips / ("0-" + newcomer.name))] == 13
    assert store.db.execute("SELECT count(*) FROM id_hints").fetchone()[0] == 0
    assert store.search(store.vector(7), k=1)[0]["id"] == 7
    store.close()


def test_a_rebuild_never_gives_a_removed_image_s_id_to_another(embedder, tmp_path):
    """The last image indexed (the highest id) is removed, then a new file comes: a plain run would give it a
    fresh id, and so must the rebuild, or a saved link to the removed one opens the newcomer."""
    import shutil

    from helpers import SAMPLES_DIR, ids_by_path
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    chips = copy_chips(tmp_path / "chips", 4)
    store_dir = tmp_path / "live"
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    sorted(chips.iterdir())[-1].unlink()  # id 4 leaves the store
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    known = {path.name for path in chips.iterdir()}
    newcomer = next(path for path in sorted(SAMPLES_DIR.glob("*.jpg"))[4:] if path.name not in known)
    shutil.copy2(newcomer, chips / "new.jpg")

    rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    assert ids_by_path(store)[str(chips / "new.jpg")] == 5
    store.close()


def test_a_resumed_rebuild_keeps_the_ids_the_live_store_gave_since(embedder, tmp_path, monkeypatch):
    """A rebuild killed after its staging store embedded new files, the live store then indexing them (under ids
    of its own, in another order), and the rebuild run again: every image keeps the live store's id."""
    import shutil

    from helpers import SAMPLES_DIR, ids_by_path
    from indexer import rebuild
    from indexer.pipeline import index_collection
    from store import Store

    chips = copy_chips(tmp_path / "chips", 4)
    store_dir = tmp_path / "live"
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    known = {path.name for path in chips.iterdir()}
    fresh = [path for path in sorted(SAMPLES_DIR.glob("*.jpg"))[4:] if path.name not in known][:2]
    shutil.copy2(fresh[0], chips / "b-new.jpg")
    shutil.copy2(fresh[1], chips / "a-new.jpg")  # sorts first: the staging store gives it the first fresh id

    def killed(_swap_from, *args, **kwargs):  # the kill: after the staging store is filled, before the swap
        raise KeyboardInterrupt

    monkeypatch.setattr(rebuild, "swap_in", killed)
    with pytest.raises(KeyboardInterrupt):
        rebuild.rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    monkeypatch.undo()
    (chips / "a-new.jpg").rename(tmp_path / "a-new.jpg")  # the live store takes b first, then a
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    (tmp_path / "a-new.jpg").rename(chips / "a-new.jpg")
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    before = ids_by_path(store)
    store.close()
    assert (before[str(chips / "b-new.jpg")], before[str(chips / "a-new.jpg")]) == (5, 6)

    rebuild.rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    assert ids_by_path(store) == before
    for image_id in before.values():
        assert store.search(store.vector(image_id), k=1)[0]["id"] == image_id
    store.close()


def test_a_rebuild_whose_sources_are_away_is_not_swapped_in(model_dir, tmp_path):
    """An unmounted share leaves an empty mount point: every file seems gone. Swapped in, the store would be
    empty, and a second rebuild would replace DIR.previous, the last copy of the vectors, with it."""
    from click.testing import CliRunner

    from indexer.cli import cli

    chips = copy_chips(tmp_path / "chips", 6)
    store_dir = tmp_path / "live"
    run = ["--model", str(model_dir), "--dtype", "float32", "--device", "cpu", "--workers", "0", "--no-progress"]
    assert CliRunner().invoke(cli, ["index", str(chips), "--store", str(store_dir), *run]).exit_code == 0
    chips.rename(tmp_path / "away")
    chips.mkdir()  # the mount point, left empty
    before = fingerprint_of(store_dir), file_digests(store_dir)

    refused = CliRunner().invoke(cli, ["rebuild", "--store", str(store_dir), *run])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "holds 0 images against the live store's 6: not swapped in" in refused.stderr
    assert (fingerprint_of(store_dir), file_digests(store_dir)) == before
    assert not store_dir.with_name("live.previous").exists()

    allowed = CliRunner().invoke(cli, ["rebuild", "--store", str(store_dir), "--allow-shrink", *run])
    assert allowed.exit_code == 0, allowed.output
    assert store_dir.with_name("live.previous").is_dir()


def test_a_rebuild_after_an_index_that_started_over_leaves_out_what_it_dropped(embedder, tmp_path):
    from helpers import ids_by_path
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    dropped, kept = copy_chips(tmp_path / "dropped", 6), copy_chips(tmp_path / "kept", 4, offset=6)
    store_dir = tmp_path / "live"
    index_collection([str(dropped)], store_dir, embedder=embedder, workers=0, progress=False)
    index_collection([str(kept)], store_dir, embedder=embedder, workers=0, progress=False, rebuild=True)
    store = Store.open(store_dir)
    before = ids_by_path(store)
    store.close()
    assert len(before) == 4

    summary = rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    assert summary["sources"] == [str(kept)]
    store = Store.open(store_dir)
    assert ids_by_path(store) == before  # the folder the user started over without stays out
    store.close()


def test_a_rebuild_cuts_each_scene_as_the_live_store_holds_it(embedder, naip_dir, tmp_path):
    import shutil

    from helpers import ids_by_path
    from indexer.pipeline import ChipOptions, index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, scene in ((first, "m_4709963_se_14_1_20090818.tif"), (second, "m_4709963_se_14_1_20100629.tif")):
        folder.mkdir()
        shutil.copy(naip_dir / scene, folder / scene)
    store_dir = tmp_path / "live"
    index_collection([str(first)], store_dir, embedder=embedder, workers=0, progress=False,
                     chips=ChipOptions(chip_size=256))
    index_collection([str(second)], store_dir, embedder=embedder, workers=0, progress=False)  # 512 px chips
    store = Store.open(store_dir)
    before = {path: (image_id, store.image(image_id)["width"]) for path, image_id in ids_by_path(store).items()}
    store.close()
    assert {width for path, (_, width) in before.items() if "/first/" in path} == {256}

    summary = rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    store = Store.open(store_dir)
    after = {path: (image_id, store.image(image_id)["width"]) for path, image_id in ids_by_path(store).items()}
    store.close()
    assert after == before  # every chip as it was cut, with its id
    assert summary["indexed"] == len(before) and summary["sources"] == [str(first), str(second)]


def test_a_rebuild_through_a_link_to_the_store_rebuilds_the_store_it_points_at(embedder, tmp_path):
    from helpers import ids_by_path
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store
    from store import Store

    chips = copy_chips(tmp_path / "chips", 4)
    real = tmp_path / "disk" / "store"
    index_collection([str(chips)], real, embedder=embedder, workers=0, progress=False)
    link = tmp_path / "store"
    link.symlink_to(real)
    store = Store.open(real)
    before = ids_by_path(store)
    store.close()
    for _ in range(2):  # the second found the link itself moved to store.previous, and could not remove it
        rebuild_store(link, embedder=embedder, workers=0, progress=False)
        assert link.is_symlink() and link.resolve() == real.resolve()
        assert (tmp_path / "disk" / "store.previous").is_dir() and not (tmp_path / "store.rebuilding").exists()
        store = Store.open(link)
        assert ids_by_path(store) == before
        store.close()


def test_a_link_where_the_previous_store_goes_is_replaced_and_what_it_points_at_kept(embedder, tmp_path):
    from indexer.pipeline import index_collection
    from indexer.rebuild import rebuild_store

    chips = copy_chips(tmp_path / "chips", 3)
    store_dir = tmp_path / "store"
    index_collection([str(chips)], store_dir, embedder=embedder, workers=0, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the store's to remove")
    (tmp_path / "store.previous").symlink_to(elsewhere)  # as a rebuild through a link used to leave one

    summary = rebuild_store(store_dir, embedder=embedder, workers=0, progress=False)
    previous = tmp_path / "store.previous"
    assert summary["previous"] == str(previous) and not previous.is_symlink() and (previous / "catalogue.db").is_file()
    assert (elsewhere / "keep.txt").read_text() == "not the store's to remove"


THREADED_READER = textwrap.dedent("""
    import json, random, sys, threading
    from pathlib import Path
    from indexer import api

    store_dir, stop_path = Path(sys.argv[1]), Path(sys.argv[2])
    store = api.open_store(store_dir)  # one store object, searched from several threads, never reopened by hand
    ids = [row["id"] for row in store.images_by_path().values()]
    searches, errors = [0], []

    def search(seed):
        rng = random.Random(seed)
        while not stop_path.exists():
            try:
                hits = api.search(store, rng.choice(ids), k=5)["results"]
                assert len(hits) == 5 and all(hit["path"] for hit in hits)
                searches[0] += 1
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=search, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"searches": searches[0], "errors": errors[:5], "error_count": len(errors)}))
""")


def test_threads_sharing_one_open_store_survive_swaps(live_store, tmp_path):
    """A store held open from Python follows a swap by reopening its catalogue. With several threads on it, the
    first to see the swap closed the connection the others were running statements on: the process crashed
    (a segmentation fault in SQLite). Threads now follow a swap one at a time, and the old connection closes
    when no thread holds it any more."""
    import shutil

    from store.swap import swap_in

    stop_path = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", THREADED_READER, str(live_store),
                               str(stop_path)], cwd=REPO_ROOT, env=run_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)  # the threads searching
        for number in range(40):  # a store with the same rows swapped in, as rebuild does: a new catalogue file
            staged = tmp_path / f"staged{number}"
            shutil.copytree(live_store, staged, ignore=shutil.ignore_patterns("write.lock"))
            swap_in(live_store, staged)
            time.sleep(0.05)
            assert reader.poll() is None, reader.stderr.read()[-3000:]
        stop_path.touch()
        out, err = reader.communicate(timeout=120)
    finally:
        stop_path.touch()
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["error_count"] == 0, report["errors"]
    assert report["searches"] > 100


def _catalogue_files_held(within, *, outside) -> list[str]:
    """This process's open files that are a store's catalogue (catalogue.db, -wal, -shm) in the folder `within`
    but not in `outside` (other tests' stores may be open in this process)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "catalogue.db" in target and target.startswith(str(within) + os.sep) \
                and not target.startswith(str(outside) + os.sep):
            held.append(target)
    return held


def test_a_reader_frees_the_catalogues_swaps_replaced(live_store, tmp_path, monkeypatch):
    """A store held open follows each swap with a new catalogue connection; the old one must be closed once no
    thread uses it, or every swapped-out store stays open, its files held on disk after the next swap deletes
    them. A sqlite3 connection only goes with the cycle collector, so the reader runs it: checked here with the
    collector turned off, as some services run."""
    import gc
    import shutil

    from indexer import api
    from store import indexing
    from store.swap import swap_in

    monkeypatch.setattr(indexing, "SWEEP_SECONDS", 0.0)
    store = api.open_store(live_store)
    image_id = next(iter(store.images_by_path().values()))["id"]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        api.search(store, image_id, k=3)
        for number in range(12):
            staged = tmp_path / f"staged{number}"
            shutil.copytree(live_store, staged, ignore=shutil.ignore_patterns("write.lock"))
            swap_in(live_store, staged)
            assert api.search(store, image_id, k=3)["results"][0]["id"] == image_id
        assert _catalogue_files_held(tmp_path, outside=live_store) == []  # the swapped-out stores
    finally:
        store.close()
        if was_enabled:
            gc.enable()


def test_a_dropped_store_frees_its_index_and_catalogue_at_once(live_store, tmp_path):
    """The page drops the store it holds each time the one on disk changes. Its index pointed back at it (the
    exact path's source of vectors) and its catalogue connection sits in a reference cycle, so a dropped store,
    index included, waited for the cycle collector: the page's memory grew by an index per index run or rebuild,
    and swapped-out stores' files stayed held. Checked with the collector off."""
    import gc
    import weakref

    from indexer import api

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        store = api.open_store(live_store)
        image_id = next(iter(store.images_by_path().values()))["id"]
        assert api.search(store, image_id, k=3)["results"][0]["id"] == image_id  # the index loaded
        dropped, index = weakref.ref(store), weakref.ref(store._index)
        del store
        assert dropped() is None and index() is None
        assert _catalogue_files_held(tmp_path, outside=tmp_path / "none") == []
    finally:
        if was_enabled:
            gc.enable()


def test_a_readers_own_opening_is_no_change_to_the_store(live_store):
    """A store closed cleanly has no write-ahead log; a reader's opening makes an empty one. The page took that
    for a change and opened the store, index and all, a second time after every swap."""
    from store import Store
    from store.swap import generation

    before = generation(live_store)
    reader = Store.open(live_store)
    try:
        reader.search(reader.vector(next(iter(reader.images_by_path().values()))["id"]), k=1)
        assert generation(live_store) == before
    finally:
        reader.close()
    assert generation(live_store) == before


def test_a_reader_collects_less_often_while_a_replaced_catalogue_stays_in_use(live_store, tmp_path, monkeypatch):
    """A thread reading on through the catalogue a swap replaced (an export, a scan of every vector) holds it for
    minutes: the reader's sweep ran a full collection (a quarter of a second in a process with torch loaded) every
    second meanwhile, its other threads waiting. The wait now doubles after each collection that frees nothing;
    once the thread lets go, the next sweep frees it."""
    import gc
    import shutil

    from indexer import api
    from store import indexing
    from store.swap import swap_in

    monkeypatch.setattr(indexing, "SWEEP_SECONDS", 0.01)
    store = api.open_store(live_store)
    try:
        image_id = next(iter(store.images_by_path().values()))["id"]
        api.search(store, image_id, k=3)
        scan = store.vector_batches(batch_size=1)  # reads on through the catalogue it started on
        next(scan)
        shutil.copytree(live_store, tmp_path / "staged", ignore=shutil.ignore_patterns("write.lock"))
        swap_in(live_store, tmp_path / "staged")
        collections = []

        def counted(phase, info):
            collections.append((phase, info["generation"]))

        gc.callbacks.append(counted)  # the collector reads its own list: appended to, not replaced
        try:
            for _ in range(40):  # at a fixed 0.01 s each would be a collection: 40
                api.search(store, image_id, k=3)
                time.sleep(0.01)
        finally:
            gc.callbacks.remove(counted)
        # full collections 0.01, 0.02, 0.04, ... s apart (each takes a while itself): about log2 of the time taken
        assert 1 <= collections.count(("start", 2)) <= 15
        assert len(store._retired) == 1
        scan.close()
        del scan
        time.sleep(getattr(store, "_sweep_wait", indexing.SWEEP_SECONDS))  # the wait the last sweep set
        api.search(store, image_id, k=3)
        assert store._retired == []
    finally:
        store.close()
