"""Searches keep answering, with whole results, while an index run writes to the same store."""
import os
import random
import subprocess
import sys
import time

from helpers import REPO_ROOT


def test_searches_answer_while_an_index_run_writes(model_dir, shared_data_dir, tmp_path):
    from store import Store

    store_dir = tmp_path / "store"
    scenes = sorted((shared_data_dir / "naip").glob("*.tif"))[:2]  # 2 x 180 chips of 64 px
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    writer = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "index", *map(str, scenes), "--store", str(store_dir), "--model",
         str(model_dir), "--dtype", "float32", "--chip-size", "64", "--workers", "0", "--batch-size", "8",
         "--no-progress", "--json"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(0)
    answered = errors = 0
    deadline = time.monotonic() + 240
    while writer.poll() is None and time.monotonic() < deadline:
        if not (store_dir / "catalogue.db").exists():
            time.sleep(0.05)
            continue
        try:
            store = Store.open(store_dir)  # a fresh reader each time, as the page reopens a changed store
            try:
                ids = [row["id"] for row in store.images_by_path().values()]
                if not ids:
                    continue
                results = store.search(store.vector(rng.choice(ids)), k=10)
                assert results and all(hit["path"] and hit["width"] for hit in results)
                answered += 1
            finally:
                store.close()
        except Exception as error:  # every kind counts: the claim is "never an error"
            errors += 1
            print("reader error:", type(error).__name__, error)
    out, err = writer.communicate(timeout=240)
    assert writer.returncode == 0, err
    assert errors == 0
    assert answered >= 5, f"only {answered} searches ran during the write"
    print(f"{answered} searches answered during the index run, 0 errors")
    final = Store.open(store_dir)
    assert final.index.ntotal == final.count_images() == 360
