"""Embedding shards: Parquet files of finished rows (vectors, patch features, failures) and their ingestion.

A shard holds one row per job of an indexing plan: the image's catalogue record, its L2-normalised vector
(float32) and PCA-reduced patch grid (float16), or why it failed, or that its chip was too empty to embed.
Shards are written atomically (a temporary name, then a rename) under a folder named after everything that
makes their rows comparable (weights, preprocessing, the store's PCA, chip options), so a killed job resumes
with the shards already written and a shard made another way is never mistaken for a current one.
"""
import hashlib
import json
import logging
import os
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store import PCA, Store

from .errors import IndexerError
from .images import READ_ERROR
from .writer import SAVE_EVERY_BATCHES, non_finite_error, record_failure

log = logging.getLogger(__name__)

EMBEDDED, FAILED, SKIPPED_CHIP = "embedded", "failed", "skipped_chip"
SCHEMA = pa.schema([
    ("position", pa.int64()),  # the job's place in the plan that asked for it
    ("path", pa.string()),  # the catalogue key (a chip's key for a chip)
    ("size", pa.int64()),
    ("mtime", pa.float64()),
    ("image_id", pa.int64()),  # set when a changed file replaces an indexed image (else null)
    ("status", pa.string()),  # embedded | failed | skipped_chip
    ("record", pa.string()),  # JSON: the catalogue record of an embedded image
    ("failure", pa.string()),  # JSON: [path, reason, size, mtime]
    ("skipped", pa.string()),  # JSON: [chip key, scene]
    ("vector", pa.binary()),  # float32 little-endian, (D,)
    ("patches", pa.binary()),  # float16 little-endian, (grid_h, grid_w, C)
    ("grid_h", pa.int32()),
    ("grid_w", pa.int32()),
])


def job_key(path: str, size, mtime) -> str:
    return f"{path}\0{int(size)}\0{float(mtime)!r}"


def run_fingerprint(provenance: dict, pca: PCA, chips) -> str:
    """Rows made with the same weights, preprocessing, PCA and chip options are interchangeable."""
    digest = hashlib.sha256(json.dumps({"provenance": provenance, "chips": asdict(chips)}, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(pca.mean, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(pca.components, dtype="<f4").tobytes())
    return digest.hexdigest()[:20]


def shard_rows(items: list[dict], vectors: np.ndarray | None, grids: np.ndarray | None) -> list[dict]:
    """Rows from decoded items (jobs' outcomes, in order) and the vectors (B, D) and grids (B, h, w, C) of the
    embedded ones, in the same order. An item is {position, job fields, and record | failure | skipped_chip}."""
    if vectors is not None and not (np.isfinite(vectors).all() and np.isfinite(grids).all()):
        raise non_finite_error()
    rows, embedded = [], 0
    for item in items:
        row = {name: None for name in SCHEMA.names}
        row.update(position=item["position"], path=item["path"], size=item["size"], mtime=item["mtime"],
                   image_id=item.get("image_id"))
        if "record" in item:
            record = {k: v for k, v in item["record"].items() if k != "image_id"}
            grid = grids[embedded]
            row.update(status=EMBEDDED, record=json.dumps(record), grid_h=grid.shape[0], grid_w=grid.shape[1],
                       vector=np.ascontiguousarray(vectors[embedded], dtype="<f4").tobytes(),
                       patches=np.ascontiguousarray(grid, dtype="<f2").tobytes())
            embedded += 1
        elif "failure" in item:
            row.update(status=FAILED, failure=json.dumps(list(item["failure"])))
        else:
            row.update(status=SKIPPED_CHIP, skipped=json.dumps(list(item["skipped_chip"])))
        rows.append(row)
    return rows


def write_shard(run_dir: Path, rows: list[dict]) -> Path:
    """Write rows as one Parquet file named after its jobs; atomic, and the same jobs give the same name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = "\n".join(job_key(r["path"], r["size"], r["mtime"]) for r in rows)
    shard_path = run_dir / f"shard-{hashlib.sha256(keys.encode()).hexdigest()[:24]}.parquet"
    tmp_path = run_dir / f".tmp-{uuid.uuid4().hex}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path)
    with open(tmp_path, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp_path, shard_path)
    return shard_path


class ShardIndex:
    """Where each job's row is among the shards of one run folder (torn files are removed, with a warning)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.where: dict[str, tuple[Path, int]] = {}
        self._cache: dict[Path, dict] = {}
        if not self.run_dir.is_dir():
            return
        for leftover in self.run_dir.glob(".tmp-*"):  # a write cut short by a kill
            leftover.unlink(missing_ok=True)
        for shard_path in sorted(self.run_dir.glob("shard-*.parquet")):
            self.add(shard_path)

    def add(self, shard_path: Path) -> None:
        """Register one shard (one just written, while the run goes on)."""
        try:
            table = pq.read_table(shard_path, columns=["path", "size", "mtime"])
        except (pa.ArrowException, OSError) as error:
            log.warning("shard %s is unreadable (%s): removed, its rows are embedded again", shard_path, error)
            shard_path.unlink(missing_ok=True)
            return
        columns = table.to_pydict()
        for row, key in enumerate(map(job_key, columns["path"], columns["size"], columns["mtime"])):
            self.where[key] = (shard_path, row)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def row(self, key: str) -> dict:
        shard_path, row = self.where[key]
        if shard_path not in self._cache:
            if len(self._cache) >= 4:  # plan order visits shards mostly one after another
                self._cache.pop(next(iter(self._cache)))
            self._cache[shard_path] = pq.read_table(shard_path).to_pydict()
        columns = self._cache[shard_path]
        return {name: values[row] for name, values in columns.items()}


class Ingester:
    """Adds shard rows to a store in the order given; a row whose outcome the store already holds is skipped,
    so ingesting a shard twice changes nothing. As StoreWriter does, a scene (or image cut into chips) found
    damaged keeps none of its chips: those written are removed with its failure, those still to come dropped."""

    def __init__(self, store: Store, *, run_id=None, counts: dict, batch_size: int = 256):
        self.store = store
        self.run_id = run_id
        self.counts = counts
        self.batch_size = batch_size
        self.failures = store.failures_by_path()
        self._pending: list[dict] = []
        self._batches = 0
        self._failed: set[str] = set()  # scenes found damaged: their chips are not written

    def add(self, row: dict, *, image_id: int | None = None) -> None:
        if row["status"] == EMBEDDED:
            self._pending.append(dict(row, image_id=image_id))
            if len(self._pending) >= self.batch_size:
                self.flush()
        elif row["status"] == FAILED:
            path, reason, size, mtime = json.loads(row["failure"])
            if not reason.startswith(READ_ERROR):  # damaged: its chips waiting here go with it, as later ones
                self._failed.add(path)
            # skipped if ingested before in this run: an unchanged failure that a later run retries (--retry-failed,
            # a read the system refused) is recorded again and counted there, as a single process does
            known = self.failures.get(path)
            if known and (known["reason"], known["size"], known["mtime"], known["run_id"]) == (
                    reason, size, mtime, self.run_id):
                return
            self.flush()  # the rows before it first, as a single process writes them before the failure
            record_failure(self.store, (path, reason, size, mtime), self.run_id, self.counts)
            self.failures[path] = {"reason": reason, "size": size, "mtime": mtime, "run_id": self.run_id}
        else:
            self.store.record_skipped_chips([tuple(json.loads(row["skipped"]))])
            self.counts["skipped_chips"] = self.counts.get("skipped_chips", 0) + 1

    def flush(self) -> None:
        records, vectors, grids = [], [], []
        for row in self._pending:
            record = json.loads(row["record"])
            if record.get("scene") in self._failed:
                continue  # a chip of a scene found damaged in this run: dropped with it
            known_id = self.store.image_id_for_path(record["path"])
            if known_id is not None and _same_image(self.store.image(known_id), record):
                continue  # ingested before
            record["image_id"] = known_id if known_id is not None else row["image_id"]
            records.append(record)
            vectors.append(np.frombuffer(row["vector"], dtype="<f4"))
            grids.append(np.frombuffer(row["patches"], dtype="<f2").reshape(row["grid_h"], row["grid_w"], -1))
        self._pending = []
        if not records:
            return
        self.store.add_embeddings(records, np.stack(vectors), np.stack(grids), run_id=self.run_id)
        self.counts["indexed"] += len(records)
        self._batches += 1
        if self._batches % SAVE_EVERY_BATCHES == 0:
            self.store.save_index()


def _same_image(row: dict, record: dict) -> bool:
    return all(row.get(key) == record.get(key) for key in ("size", "mtime", "sha256", "width", "height"))


class PlanOrderIngester:
    """Ingests the rows of `jobs` in plan order (so images get the ids a single-process run gives them) as far
    as the shards written so far allow: `advance` after each new shard, `finish` once all are written."""

    def __init__(self, store: Store, jobs: list, shards: ShardIndex, *, run_id, counts: dict, batch_size: int):
        self.jobs, self.shards, self.next = jobs, shards, 0
        self.ingester = Ingester(store, run_id=run_id, counts=counts, batch_size=batch_size)

    def advance(self, new_shard: Path | None = None) -> int:
        """Ingest the jobs from the cursor on whose rows exist; returns how many."""
        if new_shard is not None:
            self.shards.add(new_shard)
        start = self.next
        while self.next < len(self.jobs) and self._ingest(self.jobs[self.next]):
            self.next += 1
        return self.next - start

    def finish(self) -> None:
        self.advance()
        # rows behind a missing one: kept, so a rerun finds less to embed
        missing = sum(not self._ingest(job) for job in self.jobs[self.next:])
        self.ingester.flush()
        if missing:
            raise IndexerError(f"{missing} job(s) have no row in the shards at {self.shards.run_dir}: run the same "
                               "command again to embed them")

    def _ingest(self, job) -> bool:
        """Ingest `job`'s row if a shard holds it; whether one did."""
        key = job_key(job.path, job.size, job.mtime)
        if key not in self.shards:
            return False
        self.ingester.add(self.shards.row(key), image_id=job.image_id)
        return True


def ingest_shard(store: Store, shard_path: Path, *, run_id=None, batch_size: int = 256) -> dict:
    """Ingest one shard file by itself (in its rows' plan order); returns what changed."""
    counts = {"indexed": 0, "failed": 0, "skipped_chips": 0}
    try:
        columns = pq.read_table(shard_path).to_pydict()
    except (pa.ArrowException, OSError) as error:
        raise IndexerError(f"shard {shard_path} is unreadable ({error})") from error
    rows = [{name: values[i] for name, values in columns.items()} for i in range(len(columns["path"]))]
    ingester = Ingester(store, run_id=run_id, counts=counts, batch_size=batch_size)
    for row in sorted(rows, key=lambda r: r["position"]):
        ingester.add(row, image_id=row["image_id"])
    ingester.flush()
    store.save_index()
    return counts
