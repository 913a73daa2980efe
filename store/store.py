"""A store directory: the catalogue, the durable vectors and patch features, and the FAISS index."""
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import catalogue
from .catalogue import CATALOGUE_NAME, get_meta, now_iso, set_meta
from .errors import EmptyCatalogue, ProvenanceMismatch, StoreError, StoreNotFound, UnknownImage
from .faiss_index import require_faiss
from .indexing import INDEX_NAME, INDEX_STATE, SWEEP_SECONDS, IndexedStore
from .lock import acquire_write_lock, release_write_lock
from .scene_records import SceneRecords
from .vectors import blob_to_patches, blob_to_vector, patches_to_blob, vector_to_blob

log = logging.getLogger(__name__)

# What must agree for two vectors to be comparable. dtype is recorded, not guarded:
# float16 and bfloat16 runs of one model give vectors within rounding of each other.
GUARDED_KEYS = ("normalization", "resolution", "pooling")


@dataclass(frozen=True)
class PCA:
    """Projection of patch tokens to a few dims, fitted once per store."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (C, D)
    fitted_on: int

    def project(self, tokens: np.ndarray) -> np.ndarray:
        return (tokens - self.mean) @ self.components.T  # (..., C)


def same_model(recorded: dict, wanted: dict) -> bool:
    a, b = recorded.get("fingerprint"), wanted.get("fingerprint")
    if a and b:
        return a == b
    return recorded.get("model") == wanted.get("model")


def provenance_conflicts(recorded: dict, wanted: dict) -> list[str]:
    """Human-readable differences that make two sets of vectors incomparable."""
    problems = []
    if not same_model(recorded, wanted):
        problems.append(f"model {recorded.get('model')!r} (store) vs {wanted.get('model')!r}")
    return problems + guarded_problems(recorded, wanted)


def guarded_problems(recorded: dict, wanted: dict) -> list[str]:
    """provenance_conflicts' lines for GUARDED_KEYS alone (what can be told before a model loads)."""
    return [f"{key} {recorded.get(key)!r} (store) vs {wanted.get(key)!r}"
            for key in GUARDED_KEYS if guarded_differs(key, recorded.get(key), wanted.get(key))]


def guarded_differs(key: str, recorded, wanted) -> bool:
    """Whether a guarded setting differs in what it does to the vectors: a normalisation by its mean and std,
    whatever it is called (--normalization 0.485,0.456,0.406/0.229,0.224,0.225 is ImageNet's)."""
    if key == "normalization" and isinstance(recorded, dict) and isinstance(wanted, dict):
        def values(setting):
            try:
                return [float(x) for x in setting["mean"]], [float(x) for x in setting["std"]]
            except (KeyError, TypeError, ValueError):
                return setting
        return values(recorded) != values(wanted)
    return recorded != wanted


def _json_or_none(value):
    return None if value is None else json.dumps(value)


def chip_fields(row: dict) -> dict:
    """scene, window and geo of a catalogue row, decoded; empty for a plain image."""
    if not row.get("scene"):
        return {}
    return {"scene": row["scene"], "window": json.loads(row["window"]), "geo": json.loads(row["geo"] or "null")}


def _closed_message(store_dir) -> str:
    return f"the store at {store_dir} was closed: open it again"


class _ClosedCatalogue:
    """What a closed store's catalogue connection becomes: any use of the store that reads or writes it (a
    search, patch_features, ...) is a one-line StoreError, not SQLite's "Cannot operate on a closed database"."""

    def __init__(self, store_dir):
        self._store_dir = store_dir

    def __getattr__(self, name):
        if name.startswith("__"):  # what copy, pickle and hasattr ask of any object: not a use of the store
            raise AttributeError(name)
        raise StoreError(_closed_message(self._store_dir))

    def __getitem__(self, name):
        raise StoreError(_closed_message(self._store_dir))


def check_k(k) -> int:
    """k for a search, as a Python int (faiss takes no numpy integer): a whole number of at least 1 (faiss's
    re-ranked inverted-file search never returns on k < 1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise StoreError(f"k must be a whole number of at least 1, not {k!r}")
    return int(k)


def mismatch_error(store_dir, problems: list[str]) -> ProvenanceMismatch:
    return ProvenanceMismatch(
        f"the store at {store_dir} was built differently: {'; '.join(problems)}. "
        "Use the same settings, another --store, or --rebuild to re-embed everything"
    )


class Store(IndexedStore, SceneRecords):
    """Open with `Store.open(dir)` to read, `Store.create(dir, provenance=...)` to index into."""

    def __init__(self, store_dir: Path, db):
        self.store_dir = Path(store_dir)
        self.db = db
        self._index = None
        self._index_lock = threading.RLock()  # IndexedStore.index: threads sharing this store load it one at a time
        self._retired, self._next_sweep = [], 0.0  # catalogue connections a swap replaced (_sweep_retired)
        self._sweep_wait = SWEEP_SECONDS
        self._loaded = None  # the store's generation on disk when its index was loaded (IndexedStore.index)
        self._built_state = None  # what a writer built and has not saved yet (IndexedStore.save_index)
        self.writable = False  # set by create(): only writers save the index and record its state
        self._write_lock = None  # held from create() (or reindex()) to close(): one writing process at a time

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, store_dir) -> "Store":
        store_dir = Path(store_dir)
        catalogue_path = store_dir / CATALOGUE_NAME
        if not catalogue_path.is_file():
            raise StoreNotFound(
                f"no lookalike store at {store_dir} (missing {CATALOGUE_NAME}); create one with `lookalike index`"
            )
        store = cls(store_dir, catalogue.connect(catalogue_path, write=False))
        try:
            store._check_schema()
        except BaseException:  # refused: its connection goes with it (a UI polling a folder opens it often)
            store.close()
            raise
        return store

    @staticmethod
    def peek_provenance(store_dir) -> dict | None:
        """The provenance of an existing store, without creating anything (None when there is none)."""
        catalogue_path = Path(store_dir) / CATALOGUE_NAME
        if not catalogue_path.is_file():
            return None
        try:
            store = Store.open(store_dir)
        except EmptyCatalogue:  # an empty database: no store yet, one index may start there
            return None
        try:
            return store.provenance
        finally:
            store.close()

    @classmethod
    def create(cls, store_dir, *, provenance: dict, rebuild: bool = False) -> "Store":
        """Open or start a store for writing vectors made as `provenance` says."""
        require_faiss()  # before anything is written: a store without its index could not be searched
        store_dir = Path(store_dir)
        if store_dir.exists() and not store_dir.is_dir():
            raise StoreError(f"--store {store_dir} is a file, not a directory")
        store_dir.mkdir(parents=True, exist_ok=True)
        write_lock = acquire_write_lock(store_dir)
        try:
            store = cls(store_dir, catalogue.connect(store_dir / CATALOGUE_NAME))
        except BaseException:
            release_write_lock(write_lock)
            raise
        store._write_lock = write_lock
        try:
            store._check_schema()
            recorded = store.provenance
            if recorded is not None and not rebuild:
                problems = provenance_conflicts(recorded, provenance)
                if problems:
                    raise mismatch_error(store_dir, problems)
            if rebuild:
                store.clear()
            set_meta(store.db, "provenance", provenance)
            # Writers look files up by their bytes (copies take an indexed twin's vector); built once per store.
            store.db.execute("CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256)")
            store.writable = True
            store.index  # load (or repair) the index before any vector is written
        except BaseException:
            store.close()
            raise
        return store

    def _check_schema(self) -> None:
        version = get_meta(self.db, "schema_version")
        if version != catalogue.SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {version} is not the {catalogue.SCHEMA_VERSION} this lookalike reads"
            )

    def clear(self) -> None:
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            for table in ("vectors", "patches", "images", "failures", "pca", "scenes", "skipped_chips",
                          "index_pending"):
                self.db.execute(f"DELETE FROM {table}")
        self._index = self._built_state = None
        (self.store_dir / INDEX_NAME).unlink(missing_ok=True)
        set_meta(self.db, INDEX_STATE, None)

    def close(self) -> None:
        if not isinstance(self.db, _ClosedCatalogue):  # twice is once
            self.db.close()
            self.db = _ClosedCatalogue(self.store_dir)
        self._release_write_lock()
        if self._retired:  # catalogues a swap replaced, not yet freed (IndexedStore._sweep_retired): freed now
            self._next_sweep = 0.0
            self._sweep_retired()

    def check_open(self) -> None:
        """A one-line StoreError for a store closed already (SQLite would say only "closed database")."""
        try:
            self.db.execute("SELECT 1")
        except sqlite3.ProgrammingError:  # the connection closed by other means than close()
            raise StoreError(_closed_message(self.store_dir)) from None

    def __reduce__(self):  # pickle's and copy's question: a Store holds an open catalogue, which stays in its process
        raise StoreError(f"an open store cannot be sent to another process or copied: open {self.store_dir} there "
                         "(api.open_store)")

    def __del__(self):
        """A store dropped without close(): a writer's write lock is released (an error before its run started),
        and any store's catalogue connections are closed, which would otherwise wait for the cycle collector with
        their files open (the page drops a store each time the one on disk changes). Dropped, no thread is running
        its methods."""
        self._release_write_lock()
        db = getattr(self, "db", None)
        held = [] if db is None or isinstance(db, _ClosedCatalogue) else [db.conn]
        for conn in [ref() for ref in getattr(self, "_retired", ())] + held:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - at interpreter exit or on a connection closed already
                    pass

    def _release_write_lock(self) -> None:
        if getattr(self, "_write_lock", None) is not None:
            release_write_lock(self._write_lock)
            self._write_lock = None

    # -- provenance and PCA --------------------------------------------------------------
    @property
    def provenance(self) -> dict | None:
        return get_meta(self.db, "provenance")

    @property
    def dim(self) -> int | None:
        return (self.provenance or {}).get("dim")

    def pca(self) -> PCA | None:
        row = self.db.execute("SELECT dim_in, dim_out, mean, components, fitted_on FROM pca").fetchone()
        if row is None:
            return None
        dim_in, dim_out, mean, components, fitted_on = row
        return PCA(
            mean=np.frombuffer(mean, dtype="<f4").copy(),
            components=np.frombuffer(components, dtype="<f4").reshape(dim_out, dim_in).copy(),
            fitted_on=fitted_on,
        )

    def set_pca(self, pca: PCA) -> None:
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            self.db["pca"].upsert(
                {
                    "id": 1,
                    "dim_in": pca.components.shape[1],
                    "dim_out": pca.components.shape[0],
                    "mean": pca.mean.astype("<f4").tobytes(),
                    "components": pca.components.astype("<f4").tobytes(),
                    "fitted_on": pca.fitted_on,
                },
                pk="id",
            )

    # -- the catalogue -------------------------------------------------------------------
    def image(self, image_id: int) -> dict:
        rows = list(self.db.query("SELECT * FROM images WHERE id = ?", [int(image_id)]))
        if not rows:
            raise UnknownImage(f"no image with id {image_id} in the store at {self.store_dir}")
        return rows[0]

    def images(self, image_ids) -> dict[int, dict]:
        """id → {id, path, size, mtime, width, height, and a chip's scene, window and geo} for those of
        `image_ids` in the store."""
        image_ids, found = [int(i) for i in image_ids], {}
        for start in range(0, len(image_ids), 900):  # under SQLite's limit on bound parameters
            chunk = image_ids[start:start + 900]
            for row in self.db.query(f"SELECT * FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                found[row["id"]] = {**{k: row[k] for k in ("id", "path", "size", "mtime", "width", "height")},
                                    **chip_fields(row)}
        return found

    def image_id_for_path(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE path = ?", [path]).fetchone()
        return row[0] if row else None

    def find_images(self, substring: str, *, limit: int = 50) -> list[dict]:
        """Indexed images whose path contains `substring` (case-insensitive), by id."""
        return list(self.db.query(
            "SELECT id, path FROM images WHERE path LIKE ? ESCAPE '\\' ORDER BY id LIMIT ?",
            ["%" + substring.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%", int(limit)],
        ))

    def random_image_id(self) -> int | None:
        row = self.db.execute("SELECT id FROM images ORDER BY random() LIMIT 1").fetchone()
        return row[0] if row else None

    def images_by_path(self) -> dict[str, dict]:
        return {row["path"]: row for row in self.db.query("SELECT id, path, size, mtime, sha256, scene FROM images")}

    def failures_by_path(self) -> dict[str, dict]:
        return {row["path"]: row for row in self.db.query("SELECT path, size, mtime, reason, run_id FROM failures")}

    def count_images(self) -> int:
        return self.db.execute("SELECT count(*) FROM images").fetchone()[0]

    def count_failures(self, *, reason_starting: str = "") -> int:
        """Recorded failures; with `reason_starting`, those whose reason starts so."""
        if not reason_starting:
            return self.db.execute("SELECT count(*) FROM failures").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM failures WHERE substr(reason, 1, ?) = ?",
                               [len(reason_starting), reason_starting]).fetchone()[0]

    def failures(self, *, limit: int | None = None) -> list[dict]:
        """Files that failed, newest first: path, reason, size, mtime, run_id, at."""
        sql = "SELECT path, reason, size, mtime, run_id, at FROM failures ORDER BY at DESC, path"
        return list(self.db.query(sql + (" LIMIT ?" if limit else ""), [limit] if limit else []))

    def touch_image(self, image_id: int, *, size: int, mtime: float) -> None:
        """Same content under a new mtime: remember it so the next scan needs no hash."""
        self.db["images"].update(image_id, {"size": size, "mtime": mtime})

    def move_image(self, image_id: int, *, path: str, size: int, mtime: float) -> None:
        """A file found under a new path with the same bytes: its id, vector and patch features follow it."""
        self.db["images"].update(image_id, {"path": path, "size": size, "mtime": mtime})

    def image_ids_with_bytes(self, sha256: str) -> list[int]:
        """The indexed whole files (not chips) with these bytes, and a vector: the oldest first."""
        return [row[0] for row in self.db.execute(catalogue.SAME_BYTES_SQL, [sha256])]

    def whole_file_sizes(self) -> set[int]:
        """The sizes of the indexed whole files with a vector (a dry run reads only files of these sizes)."""
        return {row[0] for row in self.db.execute(
            "SELECT DISTINCT images.size FROM images JOIN vectors ON vectors.image_id = images.id "
            "WHERE images.scene IS NULL AND images.sha256 IS NOT NULL")}

    def bytes_lookup(self) -> catalogue.BytesLookup:
        """image_ids_with_bytes on a connection of its own, for another thread than the one writing."""
        return catalogue.BytesLookup(self.store_dir / CATALOGUE_NAME)

    def vector_batches(self, *, batch_size: int = 4096):
        """Every stored vector, in id order: (ids (n,), vectors (n, D)) at most `batch_size` at a time, from one
        SELECT (a consistent snapshot while a run writes)."""
        cursor = self.db.execute("SELECT image_id, vector FROM vectors ORDER BY image_id")
        while rows := cursor.fetchmany(batch_size):
            yield (np.array([image_id for image_id, _ in rows], dtype=np.int64),
                   np.stack([blob_to_vector(blob) for _, blob in rows]))  # (n, D)

    def vectors(self, image_ids) -> dict[int, np.ndarray]:
        """id → stored vector for those of `image_ids` still in the store."""
        ids, vectors = self._vectors_for(np.unique(np.asarray(list(image_ids), dtype=np.int64)))
        return dict(zip(ids.tolist(), vectors))

    def vector(self, image_id: int) -> np.ndarray:
        row = self.db.execute("SELECT vector FROM vectors WHERE image_id = ?", [int(image_id)]).fetchone()
        if row is None:
            raise UnknownImage(f"no vector for image id {image_id} in the store at {self.store_dir}")
        return blob_to_vector(row[0])

    def patch_features(self, image_id: int) -> np.ndarray:
        """The image's PCA-reduced patch tokens, (grid_h, grid_w, C)."""
        row = self.db.execute(
            "SELECT grid_h, grid_w, features FROM patches WHERE image_id = ?", [int(image_id)]
        ).fetchone()
        if row is None:
            raise UnknownImage(f"no patch features for image id {image_id} in the store at {self.store_dir}")
        return blob_to_patches(row[2], row[0], row[1])

    # -- writing -------------------------------------------------------------------------
    def add_embeddings(self, records: list[dict], vectors: np.ndarray, patch_grids: np.ndarray, *, run_id=None):
        """Insert or replace images with their vectors (B, D) and reduced patches (B, h, w, C)."""
        index = self.index  # loaded before the rows change, so it reflects the catalogue as it was
        ids = []
        replaced = []
        hinted = self.db.execute("SELECT 1 FROM id_hints LIMIT 1").fetchone() is not None  # only while rebuilding
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            for record, vector, grid in zip(records, vectors, patch_grids):
                row = {key: record[key] for key in ("path", "size", "mtime", "sha256", "width", "height")}
                row.update(status="indexed", run_id=run_id, indexed_at=now_iso(), scene=record.get("scene"),
                           window=_json_or_none(record.get("window")), geo=_json_or_none(record.get("geo")))
                image_id = record.get("image_id")
                columns = list(row)
                if image_id is None:
                    reserved = self._free_hinted_id(row["path"]) if hinted else None
                    if reserved is not None:
                        row["id"] = reserved
                        columns.append("id")
                    image_id = self.db.execute(
                        f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        [row[c] for c in columns]).lastrowid
                else:
                    self.db.execute(f"UPDATE images SET {', '.join(c + ' = ?' for c in columns)} WHERE id = ?",
                                    [row[c] for c in columns] + [image_id])
                    replaced.append(image_id)
                self.db.execute(
                    "INSERT OR REPLACE INTO vectors (image_id, vector) VALUES (?, ?)",
                    [image_id, vector_to_blob(vector)],
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO patches (image_id, grid_h, grid_w, features) VALUES (?, ?, ?, ?)",
                    [image_id, grid.shape[0], grid.shape[1], patches_to_blob(grid)],
                )
                self.db.execute("DELETE FROM failures WHERE path = ?", [record["path"]])
                ids.append(image_id)
            self.db.conn.executemany("INSERT INTO index_pending (image_id) VALUES (?)", [(i,) for i in replaced])
        index.remove(replaced)
        index.add(np.asarray(ids, dtype=np.int64), vectors)
        return ids

    # -- ids kept across a rebuild -------------------------------------------------------------
    def path_ids(self) -> list[tuple[str, int]]:
        return [(path, image_id) for path, image_id in self.db.execute("SELECT path, id FROM images")]

    def last_id(self) -> int:
        """The highest id this store has given an image, removed ones included (never given again)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
        return int(row[0]) if row else 0

    def reserve_ids(self, pairs, *, above: int = 0) -> int:
        """Ids that paths take when they are first added here (a rebuild keeps the live store's ids, so links
        and saved ids still point at the same images); paths without one get ids above all of them and above
        `above` (the live store's last_id: an id removed there is not given to another image). Images held here
        under another id than their path's, or under one reserved for another path (a rebuild resumed after
        the live store took new images), are removed, to be embedded again under the right id."""
        rows = [(str(path), int(image_id)) for path, image_id in pairs]
        top = max(max((image_id for _, image_id in rows), default=0), above)
        with self.db.atomic():
            self.db.conn.executemany("INSERT OR REPLACE INTO id_hints (path, id) VALUES (?, ?)", rows)
            if self.db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'images'").fetchone() is None:
                self.db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('images', ?)", [top])
            elif self.last_id() < top:
                self.db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'images'", [top])
        misplaced = [image_id for (image_id,) in self.db.execute(
            "SELECT images.id FROM images JOIN id_hints ON id_hints.path = images.path AND id_hints.id != images.id "
            "UNION SELECT images.id FROM images JOIN id_hints ON id_hints.id = images.id "
            "AND id_hints.path != images.path")]
        if misplaced:
            self.remove_images(misplaced)
            self.save_index()
        return len(rows)

    def clear_id_hints(self) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM id_hints")

    def _free_hinted_id(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM id_hints WHERE path = ?", [path]).fetchone()
        if row is None or self.db.execute("SELECT 1 FROM images WHERE id = ?", [row[0]]).fetchone():
            return None
        return row[0]

    def remove_images(self, image_ids) -> None:
        image_ids = [int(i) for i in image_ids]
        index = self.index
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            for image_id in image_ids:
                for table, column in (("vectors", "image_id"), ("patches", "image_id"), ("images", "id")):
                    self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", [image_id])
        index.remove(image_ids)

    def record_failure(self, path: str, reason: str, *, size=None, mtime=None, run_id=None) -> None:
        self.db["failures"].upsert(
            {"path": path, "reason": reason, "size": size, "mtime": mtime, "run_id": run_id, "at": now_iso()},
            pk="path",
        )

    def failed_in_run(self, path: str, run_id) -> bool:
        """Whether `path` has already failed in run `run_id` (a scene or image cut into chips fails once a chip)."""
        return run_id is not None and self.db.execute(
            "SELECT 1 FROM failures WHERE path = ? AND run_id = ?", [path, run_id]).fetchone() is not None

    def forget_failure(self, path: str) -> None:
        self.db.execute("DELETE FROM failures WHERE path = ?", [path])
        self.db.conn.commit()

    def start_run(self, *, model: str, settings: dict) -> int:
        # A run still marked running was killed: this one takes over its work (and says so in the runs table).
        self.db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        return self.db["runs"].insert(
            {"started": now_iso(), "status": "running", "model": model, "settings": json.dumps(settings)}
        ).last_pk

    def finish_run(self, run_id: int, summary: dict, *, status: str = "done") -> None:
        # alter: a count added since the store was made (e.g. "moved") gets its column on the first write
        self.db["runs"].update(run_id, dict(summary, ended=now_iso(), status=status), alter=True)

    # -- reading -------------------------------------------------------------------------
    def search(self, query: np.ndarray, *, k: int = 10, exclude_ids=(), nprobe: int | None = None) -> list[dict]:
        """Nearest images to one L2-normalised query vector; scores are cosine similarities.

        `nprobe` overrides the tuned number of inverted lists searched (approximate indexes only)."""
        k = check_k(k)
        index = self.index
        if index.ntotal == 0:
            return []
        exclude = {int(i) for i in exclude_ids}
        wanted = k + len(exclude)
        while True:
            scores, ids = index.search(np.asarray(query, dtype=np.float32)[None], wanted, nprobe=nprobe)
            results, gone = self._rows_of(scores[0], ids[0], k=k, exclude=exclude)
            if len(results) == k or not gone or wanted >= index.ntotal:
                return results
            wanted = min(index.ntotal, wanted + gone * 2)  # removed by an index run since this index was loaded

    def _rows_of(self, scores, ids, *, k: int, exclude: set) -> tuple[list[dict], int]:
        """The first k found that are still in the catalogue, as results; and how many were not."""
        results, gone = [], 0
        for score, image_id in zip(scores, ids):
            if image_id < 0 or int(image_id) in exclude:
                continue
            try:
                row = self.image(int(image_id))
            except UnknownImage:  # not a result; the search asks for more in their place
                gone += 1
                continue
            results.append(
                {"rank": len(results) + 1, "id": int(image_id), "path": row["path"], "score": float(score),
                 "width": row["width"], "height": row["height"], "size": row["size"], "mtime": row["mtime"],
                 **chip_fields(row)}
            )
            if len(results) == k:
                break
        return results, gone

    def info(self) -> dict:
        provenance = self.provenance or {}
        last_run = list(self.db.query("SELECT * FROM runs ORDER BY id DESC LIMIT 1"))
        pca = self.pca()
        scenes = self.db.execute(
            "SELECT count(DISTINCT scene), count(scene) FROM images WHERE scene IS NOT NULL").fetchone()
        return {
            "store": str(self.store_dir),
            "images": self.count_images(),
            "scenes": scenes[0],
            "scenes_without_chips": self.db.execute(  # read and recorded, every chip skipped (under --min-valid)
                "SELECT count(*) FROM scenes WHERE path NOT IN (SELECT scene FROM images WHERE scene IS NOT NULL)"
            ).fetchone()[0],
            "chips": scenes[1],
            "skipped_chips": (last_run[0].get("skipped_chips") if last_run else None),
            "crs": [r[0] for r in self.db.execute(  # a plain image's chips have none
                "SELECT DISTINCT json_extract(geo, '$.crs') AS crs FROM images WHERE crs IS NOT NULL")],
            "wgs84_extent": self.wgs84_extent(),
            "scene_list": self.scene_list(),
            "failed": self.count_failures(),
            "model": provenance.get("model"),
            "fingerprint": provenance.get("fingerprint"),
            "dim": provenance.get("dim"),
            "dtype": provenance.get("dtype"),
            "resolution": provenance.get("resolution"),
            "normalization": provenance.get("normalization"),
            "pooling": provenance.get("pooling"),
            "patch_size": provenance.get("patch_size"),
            "num_register_tokens": provenance.get("num_register_tokens"),
            "patch_features": {"dim": int(pca.components.shape[0]), "fitted_on_tokens": pca.fitted_on} if pca else None,
            "index": self.index_description(),
            "schema_version": get_meta(self.db, "schema_version"),
            "runs": self.db.execute("SELECT count(*) FROM runs").fetchone()[0],
            "last_run": last_run[0] if last_run else None,
        }
