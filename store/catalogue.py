"""The SQLite catalogue: schema, settings table and row helpers (sqlite-utils)."""
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from .errors import EmptyCatalogue, StoreError

SCHEMA_VERSION = 2  # 2: chips of scenes (images.scene, window, geo)
DAMAGED_HINT = ("restore catalogue.db from a backup, or index the collection into a new store "
                "(lookalike index SOURCES --store NEW_DIR)")
CATALOGUE_NAME = "catalogue.db"
log = logging.getLogger(__name__)

# AUTOINCREMENT so that an id is never reused after a deletion: ids are what
# the FAISS index, bookmarks and result lists refer to.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER, mtime REAL, sha256 TEXT,
    width INTEGER, height INTEGER,
    status TEXT NOT NULL DEFAULT 'indexed',
    run_id INTEGER, indexed_at TEXT,
    scene TEXT, window TEXT, geo TEXT
);
CREATE TABLE IF NOT EXISTS vectors (image_id INTEGER PRIMARY KEY REFERENCES images(id), vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS patches (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    grid_h INTEGER NOT NULL, grid_w INTEGER NOT NULL, features BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY, reason TEXT NOT NULL, size INTEGER, mtime REAL, run_id INTEGER, at TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started TEXT, ended TEXT, status TEXT,
    indexed INTEGER, skipped INTEGER, removed INTEGER, failed INTEGER, skipped_chips INTEGER,
    seconds REAL, images_per_second REAL, model TEXT, settings TEXT
);
CREATE TABLE IF NOT EXISTS scenes (path TEXT PRIMARY KEY, size INTEGER, mtime REAL, options TEXT, sha256 TEXT);
CREATE TABLE IF NOT EXISTS skipped_chips (key TEXT PRIMARY KEY, scene TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS id_hints (path TEXT PRIMARY KEY, id INTEGER NOT NULL);
-- images re-embedded (same id, a new vector) since the index file was last written: a run killed before the
-- next write leaves the file with their old vectors, which a catch-up by ids alone cannot see
CREATE TABLE IF NOT EXISTS index_pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    dim_in INTEGER NOT NULL, dim_out INTEGER NOT NULL,
    mean BLOB NOT NULL, components BLOB NOT NULL, fitted_on INTEGER NOT NULL
);
"""

# Query by place (Store.chips_at): an R*Tree of every chip's WGS84 box, kept by triggers so that each write path
# (a new chip, a re-embedded one, a removal) keeps it true. A footprint across the antimeridian (west > east) is
# boxed as the whole width: the box only narrows the search, the exact bounds are checked after it.
def _boxes_of(id_expr: str, geo_expr: str, source: str = "") -> str:
    return ("SELECT box_id, CASE WHEN w > e THEN -180 ELSE w END, CASE WHEN w > e THEN 180 ELSE e END, s, n FROM "
            f"(SELECT {id_expr} AS box_id, json_extract({geo_expr}, '$.wgs84_bounds[0]') AS w, "
            f"json_extract({geo_expr}, '$.wgs84_bounds[2]') AS e, json_extract({geo_expr}, '$.wgs84_bounds[1]') AS s, "
            f"json_extract({geo_expr}, '$.wgs84_bounds[3]') AS n {source}) WHERE w IS NOT NULL")


_BOXES = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS image_boxes USING rtree(id, west, east, south, north);
CREATE TRIGGER IF NOT EXISTS image_boxes_insert AFTER INSERT ON images BEGIN
    INSERT INTO image_boxes {_boxes_of("NEW.id", "NEW.geo")};
END;
CREATE TRIGGER IF NOT EXISTS image_boxes_update AFTER UPDATE OF geo ON images BEGIN
    DELETE FROM image_boxes WHERE id = OLD.id;
    INSERT INTO image_boxes {_boxes_of("NEW.id", "NEW.geo")};
END;
CREATE TRIGGER IF NOT EXISTS image_boxes_delete AFTER DELETE ON images BEGIN
    DELETE FROM image_boxes WHERE id = OLD.id;
END;
INSERT OR REPLACE INTO image_boxes {_boxes_of("id", "geo", "FROM images")};
"""


def _add_boxes(db: sqlite_utils.Database) -> None:
    """The place index, made (and filled from the chips already there) the first time a store is opened."""
    if "image_boxes" in db.table_names():
        return
    try:
        with db.conn:  # all of it or none
            db.conn.executescript("BEGIN;" + _BOXES + "COMMIT;")
    except sqlite3.OperationalError as error:  # no R*Tree in this SQLite, or a read-only store: a scan instead
        log.warning("the place index could not be made (%s): queries by place scan every chip", error)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_OURS = {"meta", "images", "vectors", "patches", "failures", "runs", "scenes", "skipped_chips", "id_hints", "pca",
         "index_pending", "sqlite_sequence", "image_boxes", "image_boxes_node", "image_boxes_parent",
         "image_boxes_rowid"}


class Connection(sqlite3.Connection):
    """sqlite3's connection, which a weak reference can follow (IndexedStore._sweep_retired)."""


def connect(catalogue_path: Path, *, write: bool = True) -> sqlite_utils.Database:
    """The catalogue, its schema made or brought up to date. Refuses a file that is not a lookalike catalogue
    without changing it. With write=False (reading) a catalogue that cannot be written (a read-only mount, a
    read-only file) is opened read-only and left as it is."""
    # One connection may serve several threads (the UI shares an open store across sessions);
    # callers that do serialise their use of it.
    db = None
    try:
        if write and not catalogue_path.exists():
            _create_whole(catalogue_path)
        db = sqlite_utils.Database(sqlite3.connect(str(catalogue_path), check_same_thread=False, factory=Connection))
        db.execute("PRAGMA busy_timeout = 30000")
        _check_is_catalogue(db, catalogue_path, reading=not write)
        db.enable_wal()  # readers (the UI, `search`) keep answering while a run writes
        _make_schema(db)
    except sqlite3.OperationalError as error:
        _close(db)
        if write or not _unwritable(error):
            raise StoreError(f"cannot {'write' if write else 'read'} the catalogue {catalogue_path} ({error})") \
                from None
        reader = _read_only(catalogue_path)
        if get_meta(reader, "schema_version") == 1:  # bringing it up to date (_make_schema) needs a write
            reader.close()
            raise StoreError(f"cannot read the catalogue {catalogue_path} ({error}): it was written by an older "
                             "lookalike, and bringing it up to date needs writing") from None
        return reader
    except sqlite3.DatabaseError as error:  # "file is not a database" and the like
        _close(db)
        if "malformed" in str(error):  # ours, cut short or damaged where its schema is
            raise StoreError(f"the catalogue {catalogue_path} is damaged ({error}): {DAMAGED_HINT}") from None
        raise StoreError(f"{catalogue_path} is not a lookalike catalogue ({error})") from None
    except BaseException:
        _close(db)
        raise
    return db


def _create_whole(catalogue_path: Path) -> None:
    """A new catalogue is made under a temporary name and renamed into place with its schema, so that a reader
    polling the folder (the page, `search`) never opens it empty or half made. The caller holds the write lock."""
    partial = catalogue_path.with_name(catalogue_path.name + ".new")
    partial.unlink(missing_ok=True)  # left by a run that died making it
    db = sqlite_utils.Database(sqlite3.connect(str(partial)))
    try:
        _make_schema(db)
    except BaseException:
        db.close()
        partial.unlink(missing_ok=True)
        raise
    db.close()
    os.replace(partial, catalogue_path)


def _close(db: sqlite_utils.Database | None) -> None:
    if db is not None:
        db.close()


def _unwritable(error: sqlite3.OperationalError) -> bool:
    """Whether opening failed only for want of writing: a read-only mount or file, or a full disk (a reader of a
    WAL catalogue makes its shared-memory file; SQLite says "disk I/O error" when it cannot)."""
    text = str(error).lower()
    return any(words in text for words in ("readonly", "read-only", "unable to open", "disk i/o error", "is full"))


def _check_is_catalogue(db: sqlite_utils.Database, catalogue_path: Path, *, reading: bool) -> None:
    """Reading needs lookalike's schema version; writing also takes an empty database, but never another
    program's (tables of its own and no schema version)."""
    tables = set(db.table_names())
    version = get_meta(db, "schema_version") if "meta" in tables else None
    if version is not None or (not reading and tables <= _OURS):
        return
    if not tables:
        raise EmptyCatalogue(f"{catalogue_path} is an empty database, not a lookalike catalogue; index into the "
                             "folder to make a store")
    raise StoreError(f"{catalogue_path} is another program's database, not a lookalike catalogue; use a folder of "
                     "its own for --store")


# Images last embedded by a run that never ended (killed: only a run's end, which saves the index first, records
# `ended`; the next run marks it 'interrupted', as a Ctrl-C that did save): in a store made before index_pending,
# the ones among them that were re-embedded may still have their old vectors in the index file
UNFINISHED_RUNS_IMAGES = ("SELECT images.id FROM images JOIN runs ON runs.id = images.run_id "
                          "WHERE runs.ended IS NULL")


def _make_schema(db: sqlite_utils.Database) -> None:
    if "meta" in db.table_names() and get_meta(db, "schema_version") not in (None, 1, SCHEMA_VERSION):
        return  # another lookalike's schema: left as it is, for Store._check_schema to refuse
    before_pending = {"images", "runs"} <= set(db.table_names()) and "index_pending" not in db.table_names()
    db.executescript(_SCHEMA)
    if before_pending:  # the index file's catch-up replaces them (IndexedStore._catch_up), once
        with db.conn:
            db.execute(f"INSERT INTO index_pending (image_id) {UNFINISHED_RUNS_IMAGES}")
    version = get_meta(db, "schema_version")
    if version is None:
        set_meta(db, "schema_version", SCHEMA_VERSION)
    elif version == 1:  # a version-1 store only lacks the chip columns
        for column in ("scene", "window", "geo"):
            if column not in db["images"].columns_dict:
                db["images"].add_column(column, str)
        if "skipped_chips" not in db["runs"].columns_dict:
            db["runs"].add_column("skipped_chips", int)
        set_meta(db, "schema_version", SCHEMA_VERSION)
    db.execute("CREATE INDEX IF NOT EXISTS images_scene ON images(scene)")
    _add_boxes(db)


def _read_only(catalogue_path: Path) -> sqlite_utils.Database:
    """A catalogue this process cannot write, opened read-only: first sharing the locks of any writer; where even
    that needs a write (a WAL catalogue in a read-only folder), as an unchanging file, which such a folder holds."""
    uri = Path(catalogue_path).absolute().as_uri()
    error = None
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        db = None
        try:
            db = sqlite_utils.Database(sqlite3.connect(uri + query, uri=True, check_same_thread=False,
                                                       factory=Connection))
            db.execute("PRAGMA busy_timeout = 30000")
            _check_is_catalogue(db, catalogue_path, reading=True)
            log.info("%s is read-only here: opened for reading only", catalogue_path)
            return db
        except sqlite3.OperationalError as failed:
            _close(db)
            error = failed
        except BaseException:
            _close(db)
            raise
    raise StoreError(f"cannot read the catalogue {catalogue_path} ({error})")


def get_meta(db: sqlite_utils.Database, key: str, default=None):
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else default


def set_meta(db: sqlite_utils.Database, key: str, value) -> None:
    db["meta"].upsert({"key": key, "value": json.dumps(value, sort_keys=True)}, pk="key")


# Whole files only: a chip's bytes are its scene's, and its vector is of one window.
SAME_BYTES_SQL = ("SELECT images.id FROM images JOIN vectors ON vectors.image_id = images.id "
                  "WHERE images.sha256 = ? AND images.scene IS NULL ORDER BY images.id")


class BytesLookup:
    """Which indexed whole files hold given bytes (by SHA-256), on a read-only connection of its own: the
    embedding loop asks it while the writer thread writes through the store's connection."""

    def __init__(self, catalogue_path: Path):
        self._conn = sqlite3.connect(Path(catalogue_path).absolute().as_uri() + "?mode=ro", uri=True,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 30000")

    def image_ids(self, sha256: str) -> list[int]:
        return [row[0] for row in self._conn.execute(SAME_BYTES_SQL, [sha256])]

    def close(self) -> None:
        self._conn.close()
