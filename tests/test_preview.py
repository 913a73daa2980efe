"""`index --dry-run`: the plan of a run from the files and the store alone; no model loads, nothing is written."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from helpers import copy_chips
from indexer.cli import cli
from indexer.pipeline import ChipOptions
from indexer.preview import preview_run

RUN = ["--dtype", "float32", "--device", "cpu", "--workers", "0", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dry_run(*args) -> dict:
    # a model that cannot be loaded: a dry run never loads one
    result = invoke("index", *args, "--dry-run", "--json", "--model", "nobody/no-such-sat493m")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def catalogue_rows(store_dir) -> list:
    import sqlite3

    with sqlite3.connect(store_dir / "catalogue.db") as db:
        return db.execute("SELECT id, path, size, mtime FROM images ORDER BY id").fetchall()


def test_a_dry_run_foretells_the_run_and_writes_nothing(tmp_path, model_dir):
    chips = copy_chips(tmp_path / "chips")
    (chips / "broken.jpg").write_bytes(b"not a picture")
    store_dir = tmp_path / "store"
    shutil.copy(sorted(chips.glob("*.jpg"))[0], tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", chips / "elsewhere.jpg")  # a link out of the folder: refused unread
    plan = dry_run(chips, "--store", store_dir)
    assert (plan["embed"], plan["files"], plan["chips"], plan["failing"], plan["store_exists"]) == (13, 13, 0, 1, False)
    assert plan["failures"][0]["path"].endswith("elsewhere.jpg") and plan["after"] == 13
    assert not store_dir.exists()
    real = json.loads(invoke("index", chips, "--store", store_dir, "--model", model_dir, *RUN, "--json").stdout)
    assert (real["indexed"], real["failed"]) == (12, 2)  # the broken picture is found only when decoded

    pictures = sorted(chips.glob("naip_*.jpg"))
    os.utime(pictures[0], (pictures[0].stat().st_atime, pictures[0].stat().st_mtime + 10))  # same bytes, new time
    shutil.copy(pictures[2], pictures[1])  # new bytes
    pictures[3].unlink()
    before = catalogue_rows(store_dir)
    again = dry_run(chips, "--store", store_dir)
    assert (again["embed"], again["skipped"], again["removed"], again["indexed_now"], again["after"]) == \
        (1, 12, 1, 12, 11)  # 9 unchanged, the same bytes, the 2 known failures; one changed; one gone
    assert catalogue_rows(store_dir) == before  # not even the new time of the same bytes
    real = json.loads(invoke("index", chips, "--store", store_dir, "--model", model_dir, *RUN, "--json").stdout)
    assert (real["indexed"], real["skipped"], real["removed"]) == (1, 12, 1)
    assert catalogue_rows(store_dir) != before

    rebuild = dry_run(chips, "--store", store_dir, "--rebuild")
    assert (rebuild["embed"], rebuild["removed"], rebuild["after"], rebuild["failing"]) == (12, 11, 12, 1)


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rasterio")
def test_a_dry_run_counts_the_chips_of_scenes(index, shared_data_dir, tmp_path):
    scenes = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]
    plan = preview_run([str(s) for s in scenes], tmp_path / "store", chips=ChipOptions(chip_size=256))
    assert (plan["scenes"], plan["files"]) == (2, 0)
    real = index(scenes, tmp_path / "store", chips=ChipOptions(chip_size=256))
    assert plan["chips"] == real["indexed"] + real["skipped_chips"] == 24
    assert preview_run([str(s) for s in scenes], tmp_path / "store", chips=ChipOptions(chip_size=256))["embed"] == 0
    other = preview_run([str(s) for s in scenes], tmp_path / "store", chips=ChipOptions(chip_size=512))
    assert (other["chips"], other["removed"]) == (8, 24)  # other chip options: every scene cut again


def test_a_dry_run_refuses_what_the_run_would(tmp_path):
    missing = invoke("index", tmp_path / "nowhere", "--store", tmp_path / "s", "--dry-run")
    assert missing.exit_code != 0 and "nowhere" in missing.output and "Traceback" not in missing.output


def test_an_indexed_file_that_now_fails_unread_is_counted_removed_by_the_dry_run_and_the_run(tmp_path, model_dir):
    chips = copy_chips(tmp_path / "chips", 6)
    store_dir = tmp_path / "store"
    assert invoke("index", chips, "--store", store_dir, "--model", model_dir, *RUN).exit_code == 0
    replaced = sorted(chips.glob("*.jpg"))[0]
    replaced.unlink()
    os.mkfifo(replaced)  # a pipe named like the image it replaces: refused unread, its image dropped

    plan = dry_run(chips, "--store", store_dir)
    assert (plan["removed"], plan["failing"], plan["after"]) == (1, 1, 5)
    result = invoke("index", chips, "--store", store_dir, "--model", model_dir, *RUN, "--json")
    summary = json.loads(result.stdout)
    assert (summary["removed"], summary["failed"], len(catalogue_rows(store_dir))) == (1, 1, 5)
