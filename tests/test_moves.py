"""Files and scenes that move (a folder renamed, a collection on a new disk) keep their ids and vectors."""
import json
import os
import shutil

import numpy as np
from click.testing import CliRunner

from indexer.pipeline import ChipOptions
from store.store import chip_fields

CHIPS = ChipOptions(chip_size=256)


def ids_by_path(store) -> dict[str, int]:
    return {path: row["id"] for path, row in store.images_by_path().items()}


def refuse_to_embed(monkeypatch):
    def embed(*args, **kwargs):
        raise AssertionError("a moved image was embedded again")

    monkeypatch.setattr("indexer.pipeline.embed_in_chunks", embed)


def test_a_renamed_folder_keeps_every_id_and_embeds_nothing(index, indexed, chips_dir, store_dir, open_store,
                                                           monkeypatch):
    store = open_store(store_dir)
    before = ids_by_path(store)
    vectors = {image_id: store.vector(image_id) for image_id in before.values()}
    store.close()
    moved_dir = chips_dir.with_name("renamed")
    chips_dir.rename(moved_dir)
    refuse_to_embed(monkeypatch)

    summary = index([moved_dir], store_dir)

    assert (summary["indexed"], summary["moved"], summary["removed"], summary["skipped"]) == (0, 12, 0, 0)
    store = open_store(store_dir)
    after = ids_by_path(store)
    assert after == {str(moved_dir.absolute() / os.path.basename(path)): image_id for path, image_id in before.items()}
    assert all(np.array_equal(store.vector(i), v) for i, v in vectors.items())
    some_id = next(iter(after.values()))
    hit = store.search(store.vector(some_id), k=1)[0]
    assert hit["id"] == some_id and hit["path"].startswith(str(moved_dir.absolute()))
    assert store.index.ntotal == 12
    last_run = store.info()["last_run"]
    assert (last_run["moved"], last_run["indexed"]) == (12, 0)  # kept with the run's other counts
    store.close()
    assert index([moved_dir], store_dir)["skipped"] == 12  # the new paths and times are recorded


def test_only_the_same_bytes_move(index, indexed, chip_paths, chips_dir, store_dir, open_store, write_image):
    store = open_store(store_dir)
    before = ids_by_path(store)
    store.close()
    (chips_dir / "sub").mkdir()
    shutil.move(chip_paths[0], chips_dir / "sub" / "kept.jpg")  # moved into a sub-folder: taken over
    chip_paths[1].unlink()
    other = chips_dir / "other.jpg"  # new bytes under a new name: embedded as a new image
    write_image(other, size=(64, 64), seed=5)
    duplicate = chips_dir / "copy-of-2.jpg"  # a copy of an image still in place: not a move
    shutil.copy2(chip_paths[2], duplicate)

    summary = index([chips_dir], store_dir)

    assert (summary["moved"], summary["indexed"], summary["removed"]) == (1, 2, 1)
    store = open_store(store_dir)
    after = ids_by_path(store)
    assert after[str(chips_dir / "sub" / "kept.jpg")] == before[str(chip_paths[0])]
    assert str(chip_paths[1]) not in after  # gone with nothing to take it over
    assert after[str(duplicate)] not in before.values() and after[str(other)] not in before.values()
    store.close()


def test_two_gone_copies_are_taken_once_each(index, chips_dir, store_dir, open_store, tmp_path):
    folder = tmp_path / "twins"
    folder.mkdir()
    source = sorted(chips_dir.glob("*.jpg"))[0]
    for name in ("a.jpg", "b.jpg"):
        shutil.copy2(source, folder / name)
    index([folder], store_dir)
    store = open_store(store_dir)
    before = set(ids_by_path(store).values())
    store.close()
    (folder / "a.jpg").rename(folder / "c.jpg")
    (folder / "b.jpg").unlink()

    summary = index([folder], store_dir)

    assert (summary["moved"], summary["removed"], summary["indexed"]) == (1, 1, 0)
    store = open_store(store_dir)
    assert set(ids_by_path(store).values()) < before and store.index.ntotal == 1
    store.close()


def test_a_moved_scene_takes_its_chips_and_a_date_from_its_new_name(index, shared_data_dir, tmp_path, store_dir,
                                                                    open_store, monkeypatch):
    from indexer import api

    naip = tmp_path / "naip"
    naip.mkdir()
    scenes = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]
    for scene in scenes:
        shutil.copy2(scene, naip / scene.name)
    first = index([naip], store_dir, chips=ChipOptions(chip_size=256, min_valid=0.99))
    store = open_store(store_dir)
    before = {path: row["id"] for path, row in store.images_by_path().items()}
    empty_before = store.db.execute("SELECT count(*) FROM skipped_chips").fetchone()[0]
    store.close()
    disk = tmp_path / "new-disk"
    old_times = {path.name: path.stat().st_mtime for path in naip.glob("*.tif")}
    shutil.copytree(naip, disk / "naip", copy_function=shutil.copyfile)  # copied: new times as well as new paths
    shutil.rmtree(naip)
    assert all(path.stat().st_mtime != old_times[path.name] for path in (disk / "naip").glob("*.tif"))
    renamed = disk / "naip" / "m_4709963_se_14_1_20211231.tif"  # the date in the name changes with it
    (disk / "naip" / scenes[0].name).rename(renamed)
    refuse_to_embed(monkeypatch)

    summary = index([disk], store_dir, chips=ChipOptions(chip_size=256, min_valid=0.99))

    assert (summary["indexed"], summary["moved"], summary["removed"]) == (0, first["indexed"], 0)
    store = open_store(store_dir)
    rows = store.images_by_path()
    assert sorted(row["id"] for row in rows.values()) == sorted(before.values())
    for path, image_id in before.items():
        new_path = path.replace(str(naip / scenes[0].name), str(renamed)).replace(str(naip), str(disk / "naip"))
        assert rows[new_path]["id"] == image_id and rows[new_path]["scene"] == new_path.split("#")[0]
    assert store.db.execute("SELECT count(*) FROM skipped_chips WHERE scene LIKE ?",
                            [f"{disk}%"]).fetchone()[0] == empty_before
    assert {s["scene"] for s in store.scene_list()} == {str(renamed), str(disk / "naip" / scenes[1].name)}
    moved_chip = next(row for row in rows.values() if row["scene"] == str(renamed))
    assert {row["mtime"] for row in rows.values() if row["scene"] == str(renamed)} == {renamed.stat().st_mtime}
    row = store.image(moved_chip["id"])
    assert api.load_indexed_image(dict(row, **chip_fields(row))).size == (256, 256)  # read from its new place
    store.close()
    monkeypatch.undo()

    fresh = index([disk], tmp_path / "fresh", chips=ChipOptions(chip_size=256, min_valid=0.99))
    assert fresh["indexed"] == first["indexed"]
    fresh_store, store = open_store(tmp_path / "fresh"), open_store(store_dir)
    for path, row in fresh_store.images_by_path().items():  # the catalogue says what a fresh run would say
        assert json.loads(store.image(rows[path]["id"])["geo"]) == json.loads(fresh_store.image(row["id"])["geo"])
    assert json.loads(store.image(moved_chip["id"])["geo"])["date"] == "2021-12-31"
    again = index([disk], store_dir, chips=ChipOptions(chip_size=256, min_valid=0.99))
    assert (again["indexed"], again["skipped"], again["moved"]) == (0, first["indexed"] + empty_before, 0)


def test_a_scene_is_not_moved_when_its_options_differ(index, shared_data_dir, tmp_path, store_dir):
    naip = tmp_path / "naip"
    naip.mkdir()
    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    shutil.copy2(scene, naip / scene.name)
    first = index([naip], store_dir, chips=CHIPS)
    (naip / scene.name).rename(naip / "elsewhere.tif")

    summary = index([naip], store_dir, chips=ChipOptions(chip_size=128))

    assert summary["moved"] == 0 and summary["removed"] == first["indexed"] and summary["indexed"] > first["indexed"]


def test_dry_run_counts_moves_and_writes_nothing(index, indexed, chips_dir, store_dir, open_store, model_dir):
    from indexer.cli import cli

    catalogue = (store_dir / "catalogue.db").read_bytes()
    moved_dir = chips_dir.with_name("renamed")
    chips_dir.rename(moved_dir)
    result = CliRunner().invoke(cli, ["index", str(moved_dir), "--store", str(store_dir), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["moved"], plan["embed"], plan["removed"], plan["after"]) == (12, 0, 0, 12)
    assert (store_dir / "catalogue.db").read_bytes() == catalogue
    text = CliRunner().invoke(cli, ["index", str(moved_dir), "--store", str(store_dir), "--model", str(model_dir),
                                    "--device", "cpu", "--dtype", "float32", "--workers", "0"])
    assert text.exit_code == 0, text.output
    assert "kept 12 moved under new paths" in text.output and "indexed 0" in text.output


def test_a_gone_file_without_a_hash_is_not_taken(index, indexed, chips_dir, store_dir):
    import sqlite3

    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE images SET sha256 = NULL")
    moved_dir = chips_dir.with_name("renamed")
    chips_dir.rename(moved_dir)
    summary = index([moved_dir], store_dir)
    assert (summary["moved"], summary["indexed"], summary["removed"]) == (0, 12, 12)


def test_a_scene_read_differently_now_is_cut_again(index, shared_data_dir, tmp_path, store_dir):
    """Same bytes, but its chips were read with other bands (a sidecar that did not move with it, say)."""
    import sqlite3

    naip = tmp_path / "naip"
    naip.mkdir()
    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    shutil.copy2(scene, naip / scene.name)
    first = index([naip], store_dir, chips=CHIPS)
    with sqlite3.connect(store_dir / "catalogue.db") as db:
        db.execute("UPDATE images SET geo = json_set(geo, '$.bands', json('[3, 2, 1]'))")
    (naip / scene.name).rename(naip / "elsewhere.tif")

    summary = index([naip], store_dir, chips=CHIPS)

    assert (summary["moved"], summary["removed"], summary["indexed"]) == (0, first["indexed"], first["indexed"])


def test_a_scene_moved_without_the_sidecar_that_gave_its_nodata_is_cut_again_not_moved(index, shared_data_dir,
                                                                                         tmp_path, store_dir):
    """Its mask source is 'nodata' either way, but the value (255 from the .aux.xml, then 0 from the file)
    changes which pixels its chips black out: the moved chips would not be what the file reads as now."""
    first_dir, second_dir = tmp_path / "A", tmp_path / "B"
    first_dir.mkdir()
    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    shutil.copy2(scene, first_dir / scene.name)
    (first_dir / f"{scene.name}.aux.xml").write_text("<PAMDataset>{}</PAMDataset>".format("".join(
        f'<PAMRasterBand band="{band}"><NoDataValue>255</NoDataValue></PAMRasterBand>' for band in range(1, 5))))
    first = index([first_dir], store_dir, chips=CHIPS)
    second_dir.mkdir()
    shutil.copy2(first_dir / scene.name, second_dir / scene.name)  # the .tif only
    shutil.rmtree(first_dir)

    summary = index([second_dir], store_dir, chips=CHIPS)

    assert (summary["moved"], summary["removed"], summary["indexed"], summary["skipped"]) == (
        0, first["indexed"], first["indexed"], 0)
