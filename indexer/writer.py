"""A background thread that owns the store during the embedding loop, so the model never waits for SQLite."""
import logging
import queue
import threading

import numpy as np

from .errors import NonFiniteOutput
from .images import READ_ERROR

log = logging.getLogger(__name__)

SAVE_EVERY_BATCHES = 20  # the index file is rewritten this often, and at the end


class StoreWriter:
    """Takes finished batches and failures in order; every store call of the loop happens on its thread.

    The device→host copy happens here too: on a GPU the main thread has launched the next batch by then.
    The first error stops all later writes and is raised again in the main thread.
    """

    def __init__(self, store, *, run_id, counts: dict, max_pending: int = 2):
        self.store = store
        self.run_id = run_id
        self.counts = counts
        self.batches_written = 0
        self.queued = 0  # items handed over so far; `done` counts those written (or dropped after an error)
        self.done = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._failed: set[str] = set()  # files (scenes, images cut into chips) found damaged in this run
        self._thread = threading.Thread(target=self._loop, name="lookalike-store-writer", daemon=True)
        self._thread.start()

    def embedded(self, records: list[dict], vectors, grids) -> None:
        """vectors (B, D) and reduced patch grids (B, h, w, C), as tensors on any device."""
        self._put(("embedded", records, vectors, grids))

    def copied(self, records: list[dict]) -> None:
        """Whole files whose bytes an image written before holds, and chips of a scene copy (`copy_of`: their
        twin chip's id): they take its vector and patch features."""
        self._put(("copied", records))

    def pca(self, pca) -> None:
        """The store's patch-feature projection, fitted on the run's first batch: written on this thread, ahead of
        that batch (one connection, one writer: a second thread's transaction would interleave with this one's)."""
        self._put(("pca", pca))

    def failed(self, failure: tuple) -> None:
        self._put(("failed", failure))

    def skipped_chips(self, chips: list[tuple[str, str]]) -> None:
        """(chip key, scene) of chips under --min-valid: recorded as done, nothing to embed."""
        self._put(("skipped_chips", chips))

    def close(self) -> None:
        """Wait for everything queued to be written; raise the writer's error, if any."""
        self._queue.put(None)
        self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _put(self, item) -> None:
        self.raise_error()
        self.queued += 1
        self._queue.put(item)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                self.done += 1
                continue  # drain without writing: a refused batch must not be followed by later ones
            try:
                self._write(item)
            except BaseException as error:  # handed to the main thread
                self._error = error
            finally:
                self.done += 1

    def _write(self, item) -> None:
        if item[0] == "pca":
            self.store.set_pca(item[1])
            return
        if item[0] == "failed":
            record_failure(self.store, item[1], self.run_id, self.counts)
            if not item[1][1].startswith(READ_ERROR):  # damaged: its later chips go with it
                self._failed.add(item[1][0])
            return
        if item[0] == "skipped_chips":
            self.store.record_skipped_chips(item[1])
            self.counts["skipped_chips"] = self.counts.get("skipped_chips", 0) + len(item[1])
            return
        if item[0] == "copied":
            self._copy(item[1])
            return
        _, records, vectors, grids = item
        vectors = vectors.cpu().numpy()  # waits for this batch's device work only
        grids = grids.cpu().numpy()
        kept = [row for row, record in enumerate(records) if record.get("scene") not in self._failed]
        if len(kept) < len(records):  # chips of a scene that has failed in this run: dropped with it
            records, vectors, grids = [records[row] for row in kept], vectors[kept], grids[kept]
            if not records:
                return
        if not (np.isfinite(vectors).all() and np.isfinite(grids).all()):
            raise non_finite_error()
        self.store.add_embeddings(records, vectors, grids, run_id=self.run_id)
        self.counts["indexed"] += len(records)
        self.batches_written += 1
        if self.batches_written % SAVE_EVERY_BATCHES == 0:
            self.store.save_index()

    def _copy(self, records: list[dict]) -> None:
        vectors, grids = [], []
        for record in records:
            twins = [record["copy_of"]] if record.get("copy_of") is not None else \
                self.store.image_ids_with_bytes(record["sha256"])
            if not twins:  # the loop only sends a copy after its twin, or one the store keeps all run
                raise RuntimeError(f"no indexed image holds the bytes of {record['path']} any more")
            vectors.append(self.store.vector(twins[0]))
            grids.append(self.store.patch_features(twins[0]))
        self.store.add_embeddings(records, np.stack(vectors), np.stack(grids), run_id=self.run_id)
        self.counts["indexed"] += len(records)
        self.counts["copied"] = self.counts.get("copied", 0) + len(records)


def non_finite_error() -> NonFiniteOutput:
    return NonFiniteOutput(
        "the backbone produced NaN/inf (an overflow): this batch was refused and nothing of it was "
        "written. Run again with --dtype bfloat16 (or --dtype float32)"
    )


def record_failure(store, failure: tuple, run_id, counts: dict) -> None:
    """A file that no longer reads loses its old vector too: results must never point at it."""
    path, reason, size, mtime = failure
    log.info("failed: %s: %s", path, reason)
    again = store.failed_in_run(path, run_id)  # one file, one failure, however many of its chips did not read
    stale_id = store.image_id_for_path(path)
    # A scene (or image cut into chips) with damaged data keeps none of its chips either; one the system would
    # not read (a drive away, an I/O error) keeps those read, and the next run reads only the others again.
    chips = [] if reason.startswith(READ_ERROR) else store.chips_of_scene(path)
    stale = ([stale_id] if stale_id is not None else []) + [chip_id for chip_id, _ in chips]
    if stale:
        store.remove_images(stale)
    made_now = sum(1 for _, chip_run in chips if chip_run == run_id and run_id is not None)
    counts["indexed"] -= made_now
    counts["removed"] = counts.get("removed", 0) + len(stale) - made_now  # what earlier runs had indexed
    store.record_failure(path, reason, size=size, mtime=mtime, run_id=run_id)
    if again:
        return
    counts["failed"] += 1
    kind = reason.split(" (", 1)[0]  # the reason without its file-specific detail
    reasons = counts.setdefault("failure_reasons", {})
    reasons[kind] = reasons.get(kind, 0) + 1
    counts.setdefault("failure_examples", {}).setdefault(kind, f"{path}: {reason}")  # the first of each kind
