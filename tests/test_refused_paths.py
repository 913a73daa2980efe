"""Paths the system refuses to read or enter, and links to nothing: one file's failure, never the run's, and a
file the system hides is not taken for gone (README: a refusal is not the file's fault)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, copy_chips

# root reads everything: as root the commands run with the capabilities that let it ignore permissions dropped
AS_USER = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
           if os.geteuid() == 0 else [])


def lookalike(*args, model_dir) -> subprocess.CompletedProcess:
    return subprocess.run([*AS_USER, sys.executable, "-m", "indexer.cli", *args, "--model", str(model_dir),
                           "--no-progress", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))


def summary_of(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def folders(tmp_path):
    """photos/ok with two chips; photos/closed (listed, not entered: what chmod -R 644 leaves) with one."""
    chips = copy_chips(tmp_path / "chips", 3)
    ok, closed = tmp_path / "photos" / "ok", tmp_path / "photos" / "closed"
    ok.mkdir(parents=True)
    closed.mkdir()
    first, second, third = sorted(chips.iterdir())
    shutil.copy(first, ok / "a.jpg")
    shutil.copy(second, ok / "b.jpg")
    shutil.copy(third, closed / "c.jpg")
    yield tmp_path / "photos"
    closed.chmod(0o755)


def test_a_folder_that_cannot_be_entered_is_one_failure_not_the_runs(folders, model_dir, tmp_path):
    (folders / "closed").chmod(0o600)
    summary = summary_of(lookalike("index", str(folders), "--store", str(tmp_path / "store"), model_dir=model_dir))
    assert (summary["indexed"], summary["failed"]) == (2, 1)
    assert list(summary["failure_reasons"]) == ["cannot be read"]


def test_a_named_file_that_cannot_be_read_is_one_failure_not_a_usage_error(folders, model_dir, tmp_path):
    (folders / "ok" / "b.jpg").chmod(0)
    summary = summary_of(lookalike("index", str(folders / "ok" / "a.jpg"), str(folders / "ok" / "b.jpg"), "--store",
                                   str(tmp_path / "store"), model_dir=model_dir))
    assert (summary["indexed"], summary["failed"]) == (1, 1)
    assert list(summary["failure_reasons"]) == ["cannot be read"]


def test_an_indexed_file_in_a_folder_that_cannot_be_entered_now_is_kept(folders, model_dir, tmp_path, open_store):
    store_dir = tmp_path / "store"
    summary_of(lookalike("index", str(folders / "ok"), str(folders / "closed"), "--store", str(store_dir),
                         model_dir=model_dir))
    (folders / "closed").chmod(0o600)
    summary = summary_of(lookalike("index", str(folders / "ok"), "--store", str(store_dir), model_dir=model_dir))
    assert summary["removed"] == 0
    assert str(folders / "closed" / "c.jpg") in open_store(store_dir).images_by_path()


def test_an_indexed_file_now_a_link_to_nothing_is_gone(index, chips_dir, tmp_path, open_store):
    """Outside this run's sources it was kept (the link is there) and search still answered with it."""
    store_dir = tmp_path / "store"
    one, two = tmp_path / "one", tmp_path / "two"
    chips = sorted(chips_dir.iterdir())
    for folder, part in ((one, chips[:2]), (two, chips[2:4])):
        folder.mkdir()
        for chip in part:
            shutil.copy(chip, folder / chip.name)
    index([one, two], store_dir)
    dropped = one / chips[0].name
    dropped.unlink()
    dropped.symlink_to(tmp_path / "nowhere.jpg")  # what `git annex drop` or a link farm whose target went leaves
    assert index([two], store_dir)["removed"] == 1
    assert str(dropped) not in open_store(store_dir).images_by_path()


def test_a_link_farm_to_an_unmounted_share_is_refused_as_the_share_is(index, chips_dir, tmp_path, open_store):
    """The shrink guard counts files behind links to nothing as gone: the store is not emptied."""
    from indexer.errors import IndexerError

    share, farm = tmp_path / "share", tmp_path / "farm"
    share.mkdir()
    farm.mkdir()
    for chip in sorted(chips_dir.iterdir())[:4]:
        shutil.copy(chip, share / chip.name)
        (farm / chip.name).symlink_to(share / chip.name)
    store_dir = tmp_path / "store"
    index([farm, share], store_dir)
    share.rename(tmp_path / "share.away")
    share.mkdir()  # an empty mount point
    with pytest.raises(IndexerError, match="gone from disk"):
        index([farm, share], store_dir, allow_shrink=False)
    assert len(open_store(store_dir).images_by_path()) == 8
