"""A store's vectors and catalogue written out as plain files for other tools: NumPy, pandas, anything."""
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .catalogue import now_iso
from .errors import StoreError
from .vectors import VECTOR_DTYPE

VECTORS_NAME = "vectors.npy"  # (N, D) float32, row i is images.jsonl's line i
IMAGES_NAME = "images.jsonl"
PROVENANCE_NAME = "provenance.json"


def export_store(store, out_dir: Path) -> dict:
    """Writes OUT_DIR/vectors.npy, images.jsonl (id, path, size, for a whole file its SHA-256, for a chip its
    scene, window, date, centroid and WGS84 bounds; one line per vector row, by id) and provenance.json, from
    one consistent read of the store (an index run may go on meanwhile). The folder appears whole or not at
    all. Returns a summary."""
    out_dir = Path(os.path.realpath(out_dir))  # "." or a link to a folder: that folder, named, as it is renamed into
    if out_dir == Path.cwd().resolve():
        raise StoreError(f"{out_dir} is the current folder, which the export would replace: export into a new one")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise StoreError(f"{out_dir} already exists and is not an empty folder: export into a new one")
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"  # beside it: one rename makes it whole
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of a killed export with this pid
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # with the user's umask, as the folder it becomes
    except OSError as error:
        raise StoreError(f"cannot write into {out_dir.parent} ({error.strerror or error})") from None
    try:
        count = _write(store, staging)
        if out_dir.exists():
            out_dir.rmdir()  # the empty folder it may be told to fill
        os.replace(staging, out_dir)
    except OSError as error:  # a full disk, above all: one line, and nothing left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"cannot write the export into {out_dir} ({error.strerror or error})") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"images": count, "dim": store.dim, "out": str(out_dir),
            "files": [VECTORS_NAME, IMAGES_NAME, PROVENANCE_NAME]}


def _write(store, folder: Path) -> int:
    db = store.db.conn
    began = not db.in_transaction
    if began:
        db.execute("BEGIN")  # one snapshot (WAL) for the count and every row
    try:
        count = db.execute("SELECT count(*) FROM vectors JOIN images ON images.id = vectors.image_id").fetchone()[0]
        dim = store.dim or 0
        rows = db.execute(
            "SELECT images.id, path, size, mtime, sha256, width, height, scene, window, geo, vector FROM vectors "
            "JOIN images ON images.id = vectors.image_id ORDER BY images.id")
        # written, not mapped: a mapped file's page that finds the disk full kills the process (SIGBUS), where a
        # write says "No space left on device"
        with open(folder / VECTORS_NAME, "wb") as vectors, open(folder / IMAGES_NAME, "w", encoding="utf-8") as lines:
            np.lib.format.write_array_header_1_0(vectors, {"descr": "<f4", "fortran_order": False,
                                                           "shape": (count, dim)})  # (N, D)
            for *fields, blob in rows:  # a blob is the row's float32 little-endian values, as the file wants them
                if len(blob) != dim * VECTOR_DTYPE.itemsize:
                    raise StoreError(f"image {fields[0]}'s vector has {len(blob) // VECTOR_DTYPE.itemsize} values, "
                                     f"not {dim}: the store is damaged")
                vectors.write(blob)
                lines.write(json.dumps(_described(*fields)) + "\n")
    finally:
        if began:
            db.execute("COMMIT")
    (folder / PROVENANCE_NAME).write_text(json.dumps(
        {"store": str(store.store_dir), "exported_at": now_iso(), "images": count, **(store.provenance or {})},
        indent=1, sort_keys=True) + "\n")
    return count


def _described(image_id, path, size, mtime, sha256, width, height, scene, window, geo) -> dict:
    described = {"id": image_id, "path": path, "size": size, "mtime": mtime, "width": width, "height": height}
    if sha256:  # a whole file's bytes (copies share it); a chip's row has none
        described["sha256"] = sha256
    if scene:
        geo = json.loads(geo) if geo else {}
        described.update(scene=scene, window=json.loads(window) if window else None, date=geo.get("date"),
                         centroid=geo.get("centroid"), wgs84_bounds=geo.get("wgs84_bounds"), crs=geo.get("crs"))
    return described
