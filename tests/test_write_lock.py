"""One writer per store: a second writing process is refused in one line, readers go on, and the lock dies
with its holder (a SIGKILLed run, even one whose forked decode workers outlive it, blocks nothing)."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO_ROOT, copy_chips
from indexer.cli import cli
from store import Store, StoreBusy

RUN = ["--dtype", "float32", "--device", "cpu", "--workers", "0", "--no-progress"]

HOLDER = textwrap.dedent("""
    import os, sys, time
    from store import Store
    store = Store.create(sys.argv[1], provenance=Store.peek_provenance(sys.argv[1]))
    if sys.argv[2] == "fork" and os.fork() == 0:  # a child like a decode worker, still alive after its parent
        time.sleep(120)
        os._exit(0)
    print("holding", flush=True)
    time.sleep(120)
""")


def invoke(*args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture()
def indexed(model_dir, tmp_path):
    chips_dir = copy_chips(tmp_path / "chips")
    store_dir = tmp_path / "store"
    result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN)
    assert result.exit_code == 0, result.output
    return chips_dir, store_dir


def hold(store_dir, mode="plain") -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store_dir), mode], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_writer_is_refused_in_one_line_and_readers_go_on(indexed, model_dir):
    chips_dir, store_dir = indexed
    holder = hold(store_dir)
    try:
        for result in (invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN),
                       invoke("reindex", "--store", store_dir),
                       invoke("rebuild", "--store", store_dir, "--model", model_dir, *RUN)):
            assert result.exit_code == 1, result.output
            assert "Traceback" not in result.output
            assert f"another lookalike run is writing the store at {store_dir} (process {holder.pid} on " \
                   in result.stderr
        searched = invoke("search", "--id", 1, "--store", store_dir, "--json")  # readers never wait
        assert searched.exit_code == 0, searched.output
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not store_dir.with_name("store.rebuilding").exists()  # refused before it made anything


def test_a_busy_store_is_refused_before_the_model_loads(indexed, model_dir, monkeypatch):
    """With the 7B the load takes minutes: the refusal comes first."""
    from indexer.embedder import DinoV3Embedder

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded for a store another run writes")

    monkeypatch.setattr(DinoV3Embedder, "from_pretrained", no_load)
    chips_dir, store_dir = indexed
    holder = hold(store_dir)
    try:
        for result in (invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN),
                       invoke("rebuild", "--store", store_dir, "--model", model_dir, *RUN)):
            assert result.exit_code == 1, result.output
            assert "another lookalike run is writing the store" in result.stderr
            assert "the model was loaded" not in result.output
        dry = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, "--dry-run", *RUN)
        assert dry.exit_code == 0, dry.output  # a preview writes nothing: not refused
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize("mode", ["plain", "fork"])
def test_a_killed_writer_leaves_no_lock(indexed, model_dir, mode):
    chips_dir, store_dir = indexed
    holder = hold(store_dir, mode)
    with pytest.raises(StoreBusy):
        Store.create(store_dir, provenance=Store.peek_provenance(store_dir))
    os.kill(holder.pid, signal.SIGKILL)  # the holder only: in "fork" mode its child lives on
    holder.wait()
    try:
        result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN)
        assert result.exit_code == 0, result.output
        assert "skipped 12" in result.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):  # the forked child, if any
            os.killpg(holder.pid, signal.SIGKILL)


def test_one_process_may_open_its_store_for_writing_twice(indexed):
    _, store_dir = indexed
    provenance = Store.peek_provenance(store_dir)
    first = Store.create(store_dir, provenance=provenance)
    second = Store.create(store_dir, provenance=provenance)
    second.close()
    holder = subprocess.run([sys.executable, "-c", HOLDER, str(store_dir), "plain"], cwd=REPO_ROOT, timeout=60,
                            capture_output=True, text=True)
    assert "StoreBusy" in holder.stderr  # `first` still holds it
    first.close()
    again = hold(store_dir)  # now another process gets it
    again.kill()
    again.wait()


def test_a_reindex_from_python_lets_index_runs_in_once_done(indexed):
    """A notebook's store.reindex() takes the lock for the reindex only, not for as long as the handle lives."""
    _, store_dir = indexed
    store = Store.open(store_dir)
    store.reindex(target_recall=0.9)
    assert not store.writable
    other = hold(store_dir)  # another process gets the lock while the handle is still open
    other.kill()
    other.wait()
    assert len(store.search(store.vector(1), k=3)) == 3
    store.close()


def test_a_store_held_open_follows_index_runs_and_rebuilds(indexed, model_dir, tmp_path):
    """A reader held open (api.open_store in a notebook) while the CLI writes: new images are found, removed ones
    are not, and after a rebuild or `index --rebuild` swapped or refilled the store its searches still answer."""
    import shutil

    from helpers import SAMPLES_DIR
    from indexer import api

    chips_dir, store_dir = indexed
    reader = api.open_store(store_dir)
    assert len(reader.search(reader.vector(1), k=3)) == 3
    known = {path.name for path in chips_dir.iterdir()}
    newcomer = next(path for path in sorted(SAMPLES_DIR.glob("*.jpg")) if path.name not in known)
    shutil.copy2(newcomer, chips_dir / newcomer.name)
    gone = sorted(chips_dir.glob("*.jpg"))[0]
    gone.unlink()
    assert invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN).exit_code == 0
    new_id = {row["path"]: row["id"] for row in reader.images_by_path().values()}[str(chips_dir / newcomer.name)]
    found = reader.search(reader.vector(new_id), k=20)
    assert found[0]["id"] == new_id and len(found) == 12
    assert str(gone) not in {hit["path"] for hit in found}

    for command in (["rebuild"], ["index", chips_dir, "--rebuild"]):
        result = invoke(*command, "--store", store_dir, "--model", model_dir, *RUN)
        assert result.exit_code == 0, result.output
        ids = [row["id"] for row in reader.images_by_path().values()]
        assert len(ids) == 12
        for image_id in ids[:3]:
            assert reader.search(reader.vector(image_id), k=1)[0]["id"] == image_id
    reader.close()


def test_a_run_asking_at_that_instant_does_not_refuse_the_writer(tmp_path):
    """check_not_busy holds the lock shared for an instant: a writer taking it then waits that instant out."""
    import fcntl
    import threading

    from store.lock import LOCK_NAME, acquire_write_lock, release_write_lock

    tmp_path.joinpath(LOCK_NAME).touch()
    asking = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(asking, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.03, os.close, args=(asking,)).start()  # the asker lets go
    release_write_lock(acquire_write_lock(tmp_path))
