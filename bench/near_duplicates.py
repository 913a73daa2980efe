"""How long `lookalike near-duplicates` takes on a large store, and whether it finds planted near-copies.

Builds a store of N synthetic embedding-like vectors (bench/_search_data.py's "easy" regime: many distinct
kinds of place) of which a share are planted near-copies of another image (the original plus a little noise,
cosine about 0.99 to it), lets the store choose and train its index as `lookalike index` would, then times
indexer.neardup.near_duplicates (what the command runs) at threshold 0.98 and reports:
- seconds, and images searched per second;
- planted pairs found (recall: the index is approximate above the exact-search size) and links that were not
  planted (synthetic neighbours that happen to be that close).

    python bench/near_duplicates.py --images 100000 --dim 1024 --out bench/results/near_duplicates.json
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._search_data import REGIMES, Generator  # noqa: E402
from bench.throughput import cpu_name  # noqa: E402
from indexer.neardup import near_duplicates  # noqa: E402
from store import PCA, Store  # noqa: E402

GRID, CHANNELS = 2, 8  # patch features are not used here: the smallest grid a store takes


def build_store(store_dir: Path, *, images: int, dim: int, share: float, noise: float) -> set[tuple[int, int]]:
    """The store, and the planted (original id, copy id) pairs."""
    provenance = {"model": "synthetic", "fingerprint": None, "dtype": "float16", "resolution": 224,
                  "normalization": {"name": "sat493m", "mean": [0.43, 0.411, 0.296], "std": [0.213, 0.156, 0.143]},
                  "pooling": "cls", "dim": dim, "patch_size": 16, "num_register_tokens": 4}
    rng = np.random.default_rng(1)
    generator = Generator(REGIMES["easy"], dim)
    copies = int(images * share)
    originals = images - copies
    store = Store.create(store_dir, provenance=provenance)
    store.set_pca(PCA(mean=np.zeros(dim, np.float32), components=np.eye(CHANNELS, dim, dtype=np.float32), fitted_on=0))
    base = np.concatenate([generator.chunk(0, index, min(65536, originals - start))[0]
                           for index, start in enumerate(range(0, originals, 65536))])  # (originals, D)
    of = rng.choice(originals, size=copies, replace=False)  # which original each copy copies
    planted = _unit(base[of] + noise * rng.standard_normal((copies, dim), dtype=np.float32) / np.sqrt(dim))
    vectors = np.concatenate([base, planted])  # (N, D): ids are row + 1
    for start in range(0, images, 4000):
        stop = min(images, start + 4000)
        records = [{"path": f"/synthetic/img{number:07d}.jpg", "size": 0, "mtime": 0.0, "sha256": None,
                    "width": 128, "height": 128} for number in range(start, stop)]
        store.add_embeddings(records, vectors[start:stop], np.zeros((stop - start, GRID, GRID, CHANNELS), np.float32))
    store.finish_index()  # chooses, trains and tunes the index as an index run does, then closes
    return {(int(original) + 1, originals + number + 1) for number, original in enumerate(of)}


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--share", type=float, default=0.01, help="share of the images that are planted copies")
    parser.add_argument("--noise", type=float, default=0.15, help="norm of the noise added to make a copy")
    parser.add_argument("--threshold", type=float, default=0.98)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/near_duplicates.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lookalike-neardup-") as work:
        started = time.perf_counter()
        planted = build_store(Path(work) / "store", images=args.images, dim=args.dim, share=args.share,
                              noise=args.noise)
        build_s = time.perf_counter() - started
        store = Store.open(Path(work) / "store")
        index = store.index_description()
        started = time.perf_counter()
        found = near_duplicates(store, threshold=args.threshold, k=args.k)
        seconds = time.perf_counter() - started
        store.close()
    links = {(a, b) for group in found["groups"] for a, b, _ in group["links"]}
    import faiss

    report = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_name(),
        "cores": os.cpu_count(), "python": platform.python_version(), "faiss": faiss.__version__,
        "images": args.images, "dim": args.dim, "planted_pairs": len(planted), "threshold": args.threshold, "k": args.k,
        "index": index.get("factory"), "index_recall_at_10": index.get("recall_at_10"), "build_store_s": round(build_s, 1),
        "seconds": round(seconds, 2), "images_per_second": round(args.images / seconds, 1),
        "planted_found": len(planted & links), "planted_recall": round(len(planted & links) / max(1, len(planted)), 4),
        "other_links": len(links - planted), "groups": len(found["groups"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    return "\n".join([
        "# near-duplicates on a synthetic store", "",
        f"`{report['command']}` — {report['date']}, {report['machine']}, {report['cores']} cores, Python "
        f"{report['python']}, faiss {report['faiss']}", "",
        "| images × dim | index (recall@10) | planted pairs | threshold, k | seconds | images/s | planted found | "
        "other links | groups |", "|---|---|---:|---|---:|---:|---:|---:|---:|",
        f"| {report['images']:,} × {report['dim']} | {report['index']} ({report['index_recall_at_10']}) | "
        f"{report['planted_pairs']:,} | {report['threshold']}, {report['k']} | {report['seconds']} | "
        f"{report['images_per_second']:,} | {report['planted_found']:,} ({report['planted_recall']:.1%}) | "
        f"{report['other_links']:,} | {report['groups']:,} |", "",
        f"Building the store (vectors, catalogue, index training) took {report['build_store_s']} s and is not timed.", ""])


if __name__ == "__main__":
    main()
