"""How fast the search page answers on a 100,000-image store (issue targets: 300 ms each).

Builds (once, cached under --work) a store of N synthetic images: random unit vectors of the 7B's
dimension (4096), random 14x14x64 patch features, and paths that are symlinks to the bundled chips.
Then measures, with the store open and warm as a running server keeps it:

1. query vector -> result page: the whole Streamlit script run (AppTest, in process: search, catalogue
   rows, thumbnails, heatmaps, page elements) for a query by id with 20 results, minus nothing;
   reported with its parts timed separately (FAISS search, catalogue rows, heatmaps of 20 results).
2. heatmaps for 20 results: stored patch features read + correspondence maps + overlays, and the same
   for a clicked query patch.

Browser paint is not included (AppTest runs the script, not a browser). Usage:
    python bench/ui_speed.py --images 100000 --out bench/results/ui_speed.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store import PCA, Store  # noqa: E402
from ui import heatmaps  # noqa: E402

DIM, GRID, CHANNELS = 4096, 14, 64
PROVENANCE = {"model": "synthetic", "fingerprint": None, "dtype": "float16", "resolution": 224,
              "normalization": {"name": "sat493m", "mean": [0.43, 0.411, 0.296], "std": [0.213, 0.156, 0.143]},
              "pooling": "cls", "dim": DIM, "patch_size": 16, "num_register_tokens": 4}


def build_store(store_dir: Path, link_dir: Path, chips: list[Path], count: int) -> None:
    rng = np.random.default_rng(0)
    link_dir.mkdir(parents=True, exist_ok=True)
    store = Store.create(store_dir, provenance=PROVENANCE)
    store.set_pca(PCA(mean=np.zeros(DIM, np.float32),
                      components=np.eye(CHANNELS, DIM, dtype=np.float32), fitted_on=0))
    for start in range(0, count, 2000):
        size = min(2000, count - start)
        records = []
        for number in range(start, start + size):
            link = link_dir / f"img{number:07d}.jpg"
            if not link.exists():
                link.symlink_to(chips[number % len(chips)])
            records.append({"path": str(link), "size": 0, "mtime": 0.0, "sha256": None, "width": 128,
                            "height": 128})
        vectors = rng.standard_normal((size, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        grids = rng.standard_normal((size, GRID, GRID, CHANNELS), dtype=np.float32)
        store.add_embeddings(records, vectors, grids)
    store.save_index()
    store.close()


def timed(fn, *, runs: int) -> dict:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def measure(store_dir: Path, *, runs: int) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["LOOKALIKE_STORE"] = str(store_dir)
    app_path = Path(__file__).resolve().parents[1] / "ui" / "app.py"
    at = AppTest.from_file(str(app_path), default_timeout=600)
    at.query_params["id"] = "1"
    started = time.perf_counter()
    at.run()  # opens the store, loads the FAISS index, warms the thumbnail cache
    first_ms = 1000 * (time.perf_counter() - started)
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(shown) == 20, shown

    ids = iter(range(2, 10**9))

    def page_run():
        at.query_params["id"] = str(next(ids))  # a new query every run: no cached search
        at.run()
        assert not at.exception

    store = Store.open(store_dir)
    store.index
    query = store.vector(7)
    query_grid = store.patch_features(7)
    hits = store.search(query, k=20)

    def search():
        store.search(query, k=20)

    def heatmaps_20(patch=None):
        from PIL import Image

        thumbs = [Image.open(hit["path"]).convert("RGB") for hit in hits]  # the page caches these
        grids = [store.patch_features(hit["id"]) for hit in hits]
        maps = ([heatmaps.correspondence_map(query_grid, g) for g in grids] if patch is None
                else [heatmaps.cosine_map(query_grid[patch], g) for g in grids])
        vmin, vmax = heatmaps.value_range(maps)
        return [heatmaps.overlay(t, m, opacity=0.5, vmin=vmin, vmax=vmax) for t, m in zip(thumbs, maps)]

    return {
        "first_page_ms (store open + index load + cold caches)": first_ms,
        "result_page_20 (whole script run, new query each time)": timed(page_run, runs=runs),
        "faiss_search_k20": timed(search, runs=runs),
        "heatmaps_20_correspondence (features + maps + overlays)": timed(heatmaps_20, runs=runs),
        "heatmaps_20_clicked_patch": timed(lambda: heatmaps_20((7, 7)), runs=runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lookalike-ui-bench"))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ui_speed.json"))
    args = parser.parse_args()
    store_dir = args.work / f"store-{args.images}"
    chips = sorted((Path(__file__).resolve().parents[1] / "samples" / "naip").glob("*.jpg"))
    build_seconds = None
    if not (store_dir / "index.faiss").exists():
        started = time.perf_counter()
        build_store(store_dir, args.work / "links", chips, args.images)
        build_seconds = time.perf_counter() - started
    report = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
              "images": args.images, "dim": DIM, "patch_grid": [GRID, GRID, CHANNELS],
              "store_build_seconds": build_seconds, "results": measure(store_dir, runs=args.runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
