"""`index --dry-run`: a run's plan from the files and the store alone, before any model loads or GPU time is spent."""
import contextlib
import tempfile
from pathlib import Path

from store import EmptyCatalogue, Store
from store import catalogue
from store.catalogue import CATALOGUE_NAME

from .copy_estimate import estimate_copies
from .images import READ_ERROR, scan_sources
from .plan import ChipOptions, plan_run

SHOWN_FAILURES = 20


def preview_run(sources, store_dir, *, chips: ChipOptions = ChipOptions(), rebuild: bool = False,
                retry_failed: bool = False) -> dict:
    """The plan of `index SOURCES --store STORE_DIR` now: counts of images to embed (files whole, chips of how
    many scenes), skipped, removed, and the files refused unread (links out of the sources, names SQLite cannot
    hold, scenes that do not open...). "copies": of the files to embed, those with the bytes of an embedded file
    or of one planned before them, which take its vector without a model pass (files sharing a size are read to
    tell, at most READ_BUDGET bytes; "copies_unchecked": those left past it), and the chips of scene copies.
    Pictures that do not decode and chips too empty under --min-valid are only known when read, so they count as
    to embed here. "moved": images found under a new path with the same bytes, which keep their ids and vectors
    (a new path is read to hash it when a gone file has its size). "relocated": chips whose scene a sidecar moved
    on the ground, its pixels the same: they keep their ids and vectors and take their new footprints."""
    paths = scan_sources(sources)  # a missing source fails here, as it would in the run
    store_dir = Path(store_dir)
    indexed = _count_images(store_dir)
    exists, indexed = indexed is not None, indexed or 0
    with _planning_store(store_dir if exists and not rebuild else None) as store:
        plan = plan_run(paths, store, chips=chips, write=False, retry_failed=retry_failed)
        copies = estimate_copies(plan.jobs, store)
        dropped = _dropped_by_failures(store, plan) if exists and not rebuild else set()
    chips_to_embed = sum(1 for job in plan.jobs if job.window is not None)
    removed = len(set(plan.removed_ids) | dropped)
    kept = 0 if rebuild else indexed - removed
    return {"store": str(store_dir), "store_exists": exists, "rebuild": rebuild, "indexed_now": indexed,
            "embed": len(plan.jobs), "files": len(plan.jobs) - chips_to_embed, "chips": chips_to_embed,
            "scenes": plan.scenes, "copies": copies.copies, "copies_unchecked": copies.unchecked,
            "skipped": plan.skipped, "moved": plan.moved, "relocated": len(plan.relocated),
            "removed": indexed if rebuild else removed,
            "after": kept + sum(1 for job in plan.jobs if job.image_id is None),
            "failing": len(plan.failures),
            "failures": [{"path": path, "reason": reason} for path, reason, *_ in plan.failures[:SHOWN_FAILURES]]}


def _dropped_by_failures(store: Store, plan) -> set[int]:
    """The ids a run drops as it records the failures known before it reads anything (writer.record_failure):
    each failing file's own image, and a damaged scene's chips."""
    dropped = set()
    for path, reason, *_ in plan.failures:
        image_id = store.image_id_for_path(path)
        if image_id is not None:
            dropped.add(image_id)
        if not reason.startswith(READ_ERROR):
            dropped |= {chip_id for chip_id, _ in store.chips_of_scene(path)}
    return dropped


def _count_images(store_dir: Path) -> int | None:
    """The store's image count; None when there is no store: no catalogue, or an empty database (where the run
    would start one, as in a new folder)."""
    if not (store_dir / CATALOGUE_NAME).is_file():
        return None
    try:
        store = Store.open(store_dir)
    except EmptyCatalogue:
        return None
    try:
        return store.count_images()
    finally:
        store.close()


@contextlib.contextmanager
def _planning_store(store_dir: Path | None):
    """The store read as it is (no write lock: a run may be going on), or an empty one for a new store or
    --rebuild, made in a temporary folder and thrown away."""
    if store_dir is not None:
        store = Store.open(store_dir)
        try:
            yield store
        finally:
            store.close()
        return
    with tempfile.TemporaryDirectory(prefix="lookalike-dry-run-") as folder:
        store = Store(Path(folder), catalogue.connect(Path(folder) / CATALOGUE_NAME))
        try:
            yield store
        finally:
            store.close()
