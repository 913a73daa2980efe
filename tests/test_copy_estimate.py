"""The dry run counts the copies the run will give a twin's vector, reading as little as it can."""
import os
import shutil

import numpy as np
from click.testing import CliRunner

from indexer import copy_estimate
from indexer.cli import cli
from indexer.copy_estimate import HEAD_BYTES, estimate_copies
from indexer.plan import Job
from indexer.preview import _planning_store, preview_run


def test_a_dry_run_counts_the_copies_the_run_makes(index, indexed, chips_dir, chip_paths, store_dir, write_image):
    extra = chips_dir / "extra"
    extra.mkdir()
    for number, path in enumerate(chip_paths[:3]):  # copies of embedded chips
        shutil.copy2(path, extra / f"again{number}.jpg")
    new = write_image(extra / "new.png", size=(80, 60), seed=5)
    shutil.copy2(new, extra / "new-copy.png")  # a copy of a file the same run embeds first
    write_image(extra / "other.png", size=(80, 60), seed=6)  # new too, and no copy

    plan = preview_run([chips_dir], store_dir)
    assert (plan["embed"], plan["copies"], plan["copies_unchecked"]) == (6, 4, 0)
    text = CliRunner().invoke(cli, ["index", str(chips_dir), "--store", str(store_dir), "--dry-run"]).output
    assert "would embed 6 images (6 files whole, 4 of them copies of images embedded before them: no model pass)" \
        in text

    summary = index([chips_dir], store_dir)
    assert (summary["indexed"], summary["copied"]) == (6, 4)
    assert preview_run([chips_dir], store_dir)["copies"] == 0  # nothing left to embed


def test_files_of_one_size_are_told_apart_by_their_heads_before_a_whole_read(tmp_path, monkeypatch):
    size = 3 * HEAD_BYTES
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    same_head = first[:HEAD_BYTES] + rng.integers(0, 256, size - HEAD_BYTES, dtype=np.uint8).tobytes()
    files = {"a": first, "b-copy-of-a": first, "c-same-head": same_head,
             "d-other": rng.integers(0, 256, size, dtype=np.uint8).tobytes()}
    jobs = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        jobs.append(Job(str(tmp_path / name), size, os.stat(tmp_path / name).st_mtime))
    hashed = []
    real_sha256 = copy_estimate.file_sha256
    monkeypatch.setattr(copy_estimate, "file_sha256", lambda path: hashed.append(path.name) or real_sha256(path))

    with _planning_store(None) as store:
        estimate = estimate_copies(jobs, store)
        assert (estimate.copies, estimate.unchecked) == (1, 0)
        assert hashed == ["a", "b-copy-of-a", "c-same-head"]  # d's head told it apart: never read whole
        assert estimate.bytes_read == 4 * HEAD_BYTES + 3 * size

        hashed.clear()
        short = estimate_copies(jobs, store, budget=4 * HEAD_BYTES + size)
        assert (short.copies, short.unchecked, hashed) == (0, 2, ["a"])  # b and c past the budget, not guessed


def test_a_file_changed_in_the_run_is_no_twin_for_its_old_bytes(index, indexed, chips_dir, chip_paths, store_dir,
                                                                 write_image):
    (chips_dir / "extra").mkdir()
    shutil.copy2(chip_paths[0], chips_dir / "extra" / "old-bytes.jpg")
    write_image(chip_paths[0], size=(90, 70), seed=9)  # re-embedded under its id: its old vector goes

    plan = preview_run([chips_dir], store_dir)
    assert (plan["embed"], plan["copies"]) == (2, 0)
    assert (index([chips_dir], store_dir)["copied"]) == 0
