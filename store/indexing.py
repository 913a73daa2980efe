"""The FAISS side of a store: which index to build, building and tuning it, keeping it in step with the catalogue."""
import gc
import logging
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from . import ann, faiss_index
from .catalogue import CATALOGUE_NAME, UNFINISHED_RUNS_IMAGES, connect, get_meta, now_iso, set_meta
from .errors import StoreError
from .lock import acquire_write_lock
from .vectors import blob_to_vector

log = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
INDEX_SETTINGS = "index_settings"  # meta: what the user asked of the index (memory, recall, type, parameters)
INDEX_STATE = "index_state"  # meta: what was built, how well it searches, and on how many vectors it was trained
IN_MEMORY_BYTES = 2 * 2**30  # vectors gathered for a rebuild stay in RAM below this, else in a file beside the store
# IndexedStore._sweep_retired: the wait between collections while a replaced connection lives, doubled after each
# that frees none (a thread may hold one for minutes) up to the most
SWEEP_SECONDS, SWEEP_MAX_SECONDS = 1.0, 60.0


def generation(store_dir) -> tuple:
    """Changes when an index run writes to the store and when another store is swapped in (a new inode). An empty
    write-ahead log counts as none: a reader's own opening makes one (and its closing may remove it), which is
    no change to the store (the page counted it as one, and loaded the index again)."""
    stamps = []
    for name in (CATALOGUE_NAME, CATALOGUE_NAME + "-wal", INDEX_NAME):
        try:
            stat = (Path(store_dir) / name).stat()
            stamps.append(None if name.endswith("-wal") and not stat.st_size else (stat.st_ino, stat.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class IndexedStore:
    """Store's index methods (a mixin): they use the store's db, store_dir, dim, writable and _index."""
    @property
    def index(self) -> faiss_index.SearchIndex:
        with self._index_lock:  # threads sharing one store: one follows a change and loads, the others then use it
            if self._index is not None and not self.writable:
                self._follow_writers()
            if self._index is None:
                self._loaded = generation(self.store_dir)  # before the load: a change during it is seen next time
                index = self._load_or_rebuild_index()
                self._index = self._searching(index, (self.index_state() or {}).get("params") or {})
            index = self._index
        self._sweep_retired()  # outside the lock: the other threads search on meanwhile
        return index

    def _searching(self, index, params: dict) -> faiss_index.SearchIndex:
        """The search front for `index` built or loaded with `params`. Its exact path's source of vectors is
        this store's, weakly held: the index does not keep its store alive (a dropped store is freed at once)."""
        return faiss_index.SearchIndex(index, nprobe=params.get("nprobe"),
                                       exact_source=weakref.WeakMethod(self._all_vectors))

    def _follow_writers(self) -> None:
        """A reader held open (a notebook, a script) while the store changes on disk follows it: an index run or
        reindex since its index was loaded reloads the index (the file and the catalogue's catch-up, as at
        open); another store swapped in (rebuild, index --rebuild's swap) reopens the catalogue too."""
        now = generation(self.store_dir)
        if self._loaded is None or now == self._loaded or now[0] is None:  # unchanged, or mid-swap: as it is
            return
        if self._loaded[0] is None or now[0][0] != self._loaded[0][0]:
            # The old connection is dropped, not closed: another thread may be running a statement on it (closing
            # it under that statement crashed the process). It is freed, and closed, once no thread holds it
            # (_sweep_retired).
            self._retired.append(weakref.ref(self.db.conn))
            self._sweep_wait, self._next_sweep = SWEEP_SECONDS, 0.0
            self.db = connect(self.store_dir / CATALOGUE_NAME, write=False)
        self._index = None

    def _sweep_retired(self) -> None:
        """Frees the catalogue connections a swap replaced once no thread holds them: each keeps the old store's
        files open, and so their space on disk once the next swap deletes them. A sqlite3 connection sits in a
        reference cycle (its statement cache), so only the cycle collector frees it: run here while one is left
        (also where the collector is turned off), SWEEP_SECONDS apart, the wait doubled after each collection that
        frees none (a thread reading on through the old connection, an export, may hold it for minutes)."""
        if not self._retired or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = float("inf")  # one sweep at a time
        gc.collect()
        with self._index_lock:
            left = [ref for ref in self._retired if ref() is not None]
            freed, self._retired = len(left) < len(self._retired), left
            self._sweep_wait = SWEEP_SECONDS if freed else min(2 * self._sweep_wait, SWEEP_MAX_SECONDS)
            self._next_sweep = time.monotonic() + self._sweep_wait

    def index_settings(self) -> dict:
        return get_meta(self.db, INDEX_SETTINGS) or {}

    def set_index_settings(self, **wishes) -> dict:
        """Remember memory_bytes / target_recall / factory / params (None leaves a setting as it was)."""
        settings = self._wished_settings(**wishes)
        set_meta(self.db, INDEX_SETTINGS, settings)
        return settings

    def _wished_settings(self, **wishes) -> dict:
        """The settings with `wishes` applied, checked but not kept."""
        recall = wishes.get("target_recall")
        if recall is not None and not 0 < recall <= 1:
            raise StoreError(f"target recall {recall} must be above 0 and at most 1")
        settings = dict(self.index_settings(), **{k: v for k, v in wishes.items() if v is not None})
        count = max(1, self.db.execute("SELECT count(*) FROM vectors").fetchone()[0])  # empty: as at its first
        plan = self.index_plan(count, settings=settings)  # an impossible budget or type is refused before it is kept
        if wishes.get("memory_bytes") and settings.get("factory"):  # a named type overrides the budget's choice,
            ann.plan_index(count, self.dim or 1, memory_bytes=settings["memory_bytes"])  # but nothing fitting: refused
        if plan.kind == "flat" and (wishes.get("params") or {}).get("nprobe"):
            raise StoreError(f"--nprobe: this store's index is exact ({plan.factory}, {count:,} vectors), with no "
                             "lists to probe; it applies to an inverted file (--index-type IVF..., or a tighter "
                             "--index-memory)")
        return settings

    def index_state(self) -> dict | None:
        """What the index in use was built as: recorded as its file is saved (save_index), until then pending."""
        return self._built_state or get_meta(self.db, INDEX_STATE)

    def _stored_ids(self) -> np.ndarray:
        rows = self.db.execute("SELECT image_id FROM vectors ORDER BY image_id")
        return np.array([r[0] for r in rows], dtype=np.int64)

    def _load_or_rebuild_index(self):
        faiss_index.require_faiss()  # said as it is, not as an index that cannot be built yet
        index_path = self.store_dir / INDEX_NAME
        if index_path.exists():
            try:
                index = faiss_index.read_index(index_path)
                if self.dim is not None and index.d != self.dim:  # a file from another store, copied in
                    raise RuntimeError(f"it holds {index.d}-dimensional vectors, the catalogue {self.dim}")
                return self._catch_up(index)
            except RuntimeError as error:
                log.warning("index file %s is unreadable (%s): rebuilding it", index_path, error)
        elif self.db.execute("SELECT 1 FROM vectors LIMIT 1").fetchone():
            log.warning("index file %s is missing: rebuilding it from the stored vectors", index_path)
        try:
            return self._build_index().index
        except StoreError as error:  # e.g. an --index-type of 64 lists over a store just emptied by --rebuild
            log.warning("%s: searching every vector exactly until it can be built", error)
            return self._build_index(plan=ann.IndexPlan("IDMap2,Flat", "flat", 0, f"exact for now: {error}")).index

    def _catch_up(self, index):
        """An index file behind the catalogue (a run killed between saves, or still writing) is brought
        up to date in place: stale ids removed, missing vectors added, re-embedded ones replaced, no retraining."""
        stored_ids = self._stored_ids()
        held_ids = faiss_index.index_ids(index)
        extra = np.setdiff1d(held_ids, stored_ids)
        changed = np.intersect1d(self._pending_ids(), np.intersect1d(held_ids, stored_ids))
        missing = np.union1d(np.setdiff1d(stored_ids, held_ids), changed)
        if len(extra) or len(missing):
            log.warning("index file is out of step with the catalogue (%d vectors to add, %d of them re-embedded, "
                        "%d to remove): bringing it up to date", len(missing), len(changed), len(extra))
            if len(extra) or len(changed):
                index.remove_ids(np.union1d(extra, changed))
            if len(missing):
                ids, vectors = self._vectors_for(missing)
                if len(ids):
                    index.add_with_ids(vectors, ids)
        return index

    def _pending_ids(self) -> np.ndarray:
        """Ids re-embedded since the index file was written. A store made before these were kept, read where it
        cannot be brought up to date (read-only), lists instead what its upgrade would: the images of runs that
        did not finish (catalogue.UNFINISHED_RUNS_IMAGES)."""
        tables = self.db.table_names()
        if "index_pending" in tables:
            query = "SELECT DISTINCT image_id FROM index_pending"
        elif "runs" in tables:
            query = UNFINISHED_RUNS_IMAGES
        else:
            return np.empty(0, dtype=np.int64)
        return np.array([r[0] for r in self.db.execute(query)], dtype=np.int64)

    def _vectors_for(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = [], []
        for start in range(0, len(image_ids), 900):  # under SQLite's limit on bound parameters
            chunk = [int(i) for i in image_ids[start:start + 900]]
            rows = self.db.execute(
                f"SELECT image_id, vector FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))})", chunk)
            for image_id, blob in rows:
                ids.append(image_id)
                vectors.append(blob_to_vector(blob))
        # (n, D) even for n = 0: rows removed since the ids were read are simply not there
        return np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim or 1)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the whole store from one SELECT: a consistent snapshot even while a run writes
        (WAL). Past IN_MEMORY_BYTES the vectors go to a scratch file that is unlinked at once: in the store folder
        for a writer, in the system's temporary folder for a reader (a read-only store, a search)."""
        dim = self.dim or 1
        count = self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        if count * dim * 4 <= IN_MEMORY_BYTES:
            vectors = np.empty((count, dim), dtype=np.float32)  # (N, D)
        else:
            # beside the store when it is this process's to write (the space is sized for it), else the system's
            scratch = tempfile.NamedTemporaryFile(dir=self.store_dir if self.writable else None, prefix=".vectors-",
                                                  suffix=".f32")
            vectors = np.memmap(scratch, dtype=np.float32, mode="w+", shape=(count, dim))  # (N, D)
            scratch.close()  # the mapping keeps the space until it is dropped
        ids = np.empty(count, dtype=np.int64)
        row = -1
        rows = self.db.execute("SELECT image_id, vector FROM vectors ORDER BY image_id")
        for row, (image_id, blob) in enumerate(rows):
            if row == count:  # rows added after the count: left for the next catch-up
                row -= 1
                break
            ids[row] = image_id
            vectors[row] = blob_to_vector(blob)
        return ids[:row + 1], vectors[:row + 1]

    def index_plan(self, n: int, *, settings: dict | None = None) -> ann.IndexPlan:
        settings = self.index_settings() if settings is None else settings
        if settings.get("factory"):
            return ann.user_plan(settings["factory"], n, self.dim or 1)
        return ann.plan_index(n, self.dim or 1, memory_bytes=settings.get("memory_bytes"),
                              target_recall=settings.get("target_recall", ann.DEFAULT_RECALL))

    def _build_index(self, *, plan: ann.IndexPlan | None = None, settings: dict | None = None) -> ann.BuiltIndex:
        """Choose (unless given `plan`), train, fill and tune an index over every stored vector, with `settings`
        (the store's by default); a writer records what it built when it saves it."""
        ids, vectors = self._all_vectors()
        settings = self.index_settings() if settings is None else settings
        plan = plan or self.index_plan(len(ids), settings=settings)
        built = ann.build_index(vectors, ids, plan, target_recall=settings.get("target_recall", ann.DEFAULT_RECALL),
                                params=settings.get("params"))
        if self.writable:
            state = {"factory": plan.factory, "kind": plan.kind, "reason": plan.reason,
                     "estimated_bytes": plan.estimated_bytes, "params": built.params,
                     "recall_at_10": None if built.recall is None else round(built.recall, 4),
                     "latency_ms": None if built.latency_ms is None else round(built.latency_ms, 3),
                     "tuning": [[p, round(r, 4)] for p, r in built.tuning], "trained_on": built.trained_on,
                     "tuned_on": len(ids), "build_s": round(built.build_s, 2), "built_at": now_iso(),
                     "settings": settings}
            self._built_state = state  # recorded once the file holds it: a kill between leaves the old pair
        return built

    def rebuild_reason(self) -> str | None:
        """Why the index should be rebuilt now (after a run), or None: retraining is not done on every add."""
        n = self.db.execute("SELECT count(*) FROM vectors").fetchone()[0]
        state = self.index_state()
        plan = self.index_plan(n)
        if state is None:
            return "no record of how the index was built" if n else None
        if state.get("settings") != self.index_settings():
            return "the index settings changed"
        if state["kind"] != plan.kind:
            return f"the collection ({n:,} vectors) now calls for {plan.factory}, not {state['factory']}"
        if ann.fast_scan_alone(state["factory"]):
            return f"{state['factory']} loses vectors added after a removal (faiss 1.15): now {plan.factory}"
        if state["kind"] == "ivf" and n >= ann.RETRAIN_GROWTH * max(1, state["trained_on"]):
            return f"the collection grew from {state['trained_on']:,} to {n:,} vectors since training"
        if state["kind"] == "ivf" and n * ann.RETRAIN_GROWTH <= state["trained_on"]:
            return f"the collection shrank from {state['trained_on']:,} to {n:,} vectors since training"
        dead = self._index.cpu.dead_rows() if self._index is not None and hasattr(self._index.cpu, "dead_rows") else 0
        if dead > ann.COMPACT_SHARE * max(1, n):
            return f"{dead:,} removed vectors still hold re-ranking codes"
        budget = self.index_settings().get("memory_bytes")
        if budget and plan.factory != state["factory"] and ann.estimate_bytes(state["factory"], n, self.dim) > budget:
            return f"{state['factory']} over {n:,} vectors would exceed the memory budget"
        if state["kind"] != "flat" and not ann.RETUNE_GROWTH ** -1 <= n / max(1, state["tuned_on"]) < ann.RETUNE_GROWTH:
            return f"the collection changed from {state['tuned_on']:,} to {n:,} vectors since tuning"
        return None

    def finish_index(self) -> None:
        """After a run: rebuild (choose, train, tune) when rebuild_reason says so, then save."""
        try:
            reason = self.rebuild_reason()
            if reason:
                log.info("rebuilding the index: %s", reason)
                built = self._build_index()
                self._index = self._searching(built.index, built.params)
        except StoreError as error:  # e.g. the collection outgrew --index-memory: keep what searches now
            log.warning("keeping the current index: %s", error)
        self.save_index()

    def reindex(self, **wishes) -> dict:
        """Rebuild only the index from the stored vectors with new settings; returns what was built."""
        held, was_writable = self._write_lock, self.writable
        self._write_lock = held or acquire_write_lock(self.store_dir)
        try:
            settings = self._wished_settings(**wishes)
            self.writable = True
            # kept only once their index is saved: what was refused, or killed while it was built, leaves later
            # runs and readers with the settings that work
            built = self._build_index(settings=settings)
            self._index = self._searching(built.index, built.params)
            self.save_index()
            set_meta(self.db, INDEX_SETTINGS, settings)
            self._loaded = generation(self.store_dir)  # its own writes: nothing to follow
            return self.index_description()
        finally:
            if held is None:  # taken for this reindex only: an open handle must not keep index runs out
                self.writable = was_writable
                self._release_write_lock()

    def index_description(self) -> dict:
        state = self.index_state() or {}
        index_path = self.store_dir / INDEX_NAME
        return dict(faiss_index.describe(self.index.cpu), **{k: v for k, v in state.items() if k != "settings"},
                    settings=self.index_settings(),
                    file_bytes=index_path.stat().st_size if index_path.exists() else None)

    def save_index(self) -> None:
        """Write the index file; the re-embeds it now holds are no longer pending (those after `mark` still are,
        should another thread add some meanwhile)."""
        if self._index is not None:
            mark = self.db.execute("SELECT max(seq) FROM index_pending").fetchone()[0]
            faiss_index.write_index_atomic(self._index.cpu, self.store_dir / INDEX_NAME)
            if self._built_state is not None:
                set_meta(self.db, INDEX_STATE, self._built_state)
                self._built_state = None
            if mark is not None:
                with self.db.atomic():
                    self.db.execute("DELETE FROM index_pending WHERE seq <= ?", [mark])
