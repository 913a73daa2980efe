"""Query by place at scale: `Store.chips_at` over a million chips, through the R*Tree against a scan of every row.

The catalogue is a real store's (`store.catalogue.connect`, the same triggers), filled with synthetic chips: 1 km
boxes laid edge to edge (slightly overlapping) over the western US, each with the geo JSON an indexed chip
carries; every point looked up falls inside the covered area. Both ways answer the same points, checked equal;
each point is timed once per way, alternating, and the medians reported.

    python bench/place_lookup.py --chips 1000000 --out bench/results/place_lookup.json
"""
import argparse
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from store import Store, catalogue  # noqa: E402

KM_LAT = 1 / 111.32  # degrees of latitude in a kilometre
LON_STEP = 0.009


def fill(store_dir: Path, chips: int, *, place_index: bool, seed: int = 0) -> float:
    """`chips` rows of images with a 1 km WGS84 box each, in rows of 2,000 from 125°W eastwards (0.009° apart:
    neighbours overlap, as chips cut with --overlap do), row after row from 25°N north."""
    db = catalogue.connect(store_dir / catalogue.CATALOGUE_NAME)
    if not place_index:  # as a store in an SQLite without R*Tree: no triggers, no boxes
        for name in ("image_boxes_insert", "image_boxes_update", "image_boxes_delete"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE image_boxes")
        db.conn.commit()
    rng = random.Random(seed)
    started = time.perf_counter()
    rows = []
    for i in range(chips):
        lat = 25 + (i // 2000) * KM_LAT
        lon = -125 + (i % 2000) * LON_STEP + rng.uniform(0, 0.0005)
        width = KM_LAT / max(0.2, math.cos(math.radians(lat)))  # 1 km east-west too
        bounds = [lon, lat, lon + width, lat + KM_LAT]
        ring = [[bounds[0], bounds[1]], [bounds[2], bounds[1]], [bounds[2], bounds[3]], [bounds[0], bounds[3]],
                [bounds[0], bounds[1]]]
        geo = {"wgs84_bounds": bounds, "centroid": [lon + width / 2, lat + KM_LAT / 2], "footprint": [ring],
               "date": f"{2010 + i % 10}-07-01", "crs": "EPSG:5070"}
        rows.append((f"/data/scene{i // 400}.tif#{i}", 1, 0.0, f"/data/scene{i // 400}.tif", json.dumps(geo)))
        if len(rows) == 50_000 or i == chips - 1:
            with db.conn:
                db.conn.executemany("INSERT INTO images (path, size, mtime, scene, geo) VALUES (?, ?, ?, ?, ?)", rows)
            rows = []
    seconds = time.perf_counter() - started
    db.conn.close()
    return seconds


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chips", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=15, help="places looked up, each once per way")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "place_lookup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        boxed_dir, scan_dir = Path(tmp) / "boxed", Path(tmp) / "scan"
        for store_dir in (boxed_dir, scan_dir):
            store_dir.mkdir()
        fill_seconds = {"with_place_index": fill(boxed_dir, args.chips, place_index=True),
                        "without": fill(scan_dir, args.chips, place_index=False)}
        boxed = Store.open(boxed_dir)
        catalogue._BOXES = "CREATE VIRTUAL TABLE image_boxes USING no_such_module(id);"  # opened as without R*Tree
        scanning = Store.open(scan_dir)
        assert "image_boxes" not in scanning.db.table_names()
        rng = random.Random(1)
        rows_lat = args.chips // 2000 * KM_LAT
        points = [(rng.uniform(-125, -125 + 1999 * LON_STEP), 25 + rng.uniform(0, max(rows_lat, KM_LAT)))
                  for _ in range(args.points)]
        timings = {"rtree": [], "scan": []}
        found = []
        for lon, lat in points:
            for name, store in (("rtree", boxed), ("scan", scanning)):
                start = time.perf_counter()
                chips = store.chips_at(lon, lat)
                timings[name].append(time.perf_counter() - start)
                found.append((name, [chip["id"] for chip in chips]))
        for (_, by_tree), (_, by_scan) in zip(found[::2], found[1::2]):
            assert by_tree == by_scan, "the R*Tree and the scan disagree"
    report = {
        "command": "python bench/place_lookup.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "sqlite": sqlite3.sqlite_version,
        "chips": args.chips, "points": args.points,
        "insert_seconds": {name: round(value, 1) for name, value in fill_seconds.items()},
        "chips_found_per_point": statistics.median(len(ids) for _, ids in found[::2]),
        "median_ms": {name: round(statistics.median(values) * 1000, 2) for name, values in timings.items()},
        "scan_over_rtree": round(statistics.median(s / r for s, r in zip(timings["scan"], timings["rtree"])), 1),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
