"""`lookalike rebuild`: re-embed a store's whole collection beside it, then swap the new store in atomically.

The live store is only read: the new one is built in DIR.rebuilding (an interrupted rebuild resumes there) and
exchanged with DIR in one step when it is complete; the old one stays at DIR.previous until the next rebuild.
"""
import logging
import os
import shutil
from pathlib import Path

from store import Store
from store.lock import acquire_write_lock, release_write_lock
from store.store import provenance_conflicts
from store.swap import last_chip_options, recorded_runs, swap_in

from .embedder import Embedder
from .errors import IndexerError
from .pipeline import ChipOptions, index_collection
from .plan import SHRINK_LIMIT  # the same share as an index run's: a rebuilt store under it is not swapped in

log = logging.getLogger(__name__)


def staging_dir_for(store_dir: Path) -> Path:
    return store_dir.with_name(store_dir.name + ".rebuilding")


def recorded_collection(store_dir, *, warn: bool = True) -> tuple[dict, list[tuple[list[str], ChipOptions]]]:
    """The live store's provenance and what its runs indexed since it last started over (`index --rebuild`
    empties it): the sources, grouped by the chip options each was last indexed with, in the order they were
    last indexed (runs may cut scenes differently; a rebuild cuts each as the live store holds it)."""
    store = Store.open(store_dir)
    try:
        provenance, runs = store.provenance, since_last_start(recorded_runs(store))
    finally:
        store.close()
    latest = {}  # source → its newest run's chip options, in the order of those runs
    for run in runs:
        for source in run.get("sources", []):
            latest.pop(source, None)
            latest[source] = run.get("chips") or last_chip_options(runs)  # runs before options were recorded
    if provenance is None or not latest:
        raise IndexerError(f"the store at {store_dir} records no indexing run to rebuild from: use `lookalike index`")
    gone = sorted(source for source in latest if not Path(source).exists())
    for source in gone if warn else ():
        log.warning("source %s of an earlier run no longer exists: its images are left out", source)
    if len(gone) == len(latest):
        raise IndexerError(f"none of the sources recorded in {store_dir} exists any more: {', '.join(latest)}")
    groups = []
    for source, chips in latest.items():
        if source in gone:
            continue
        if groups and groups[-1][1] == chips:
            groups[-1][0].append(source)
        else:
            groups.append(([source], chips))
    return provenance, [(sources, ChipOptions.from_record(chips)) for sources, chips in groups]


def since_last_start(runs: list[dict]) -> list[dict]:
    """The runs from the newest that started the store over (`index --rebuild`) on: the older ones' images are
    gone from it."""
    starts = [number for number, run in enumerate(runs) if run.get("rebuild")]
    return runs[starts[-1]:] if starts else runs


def rebuild_store(store_dir, *, embedder: Embedder, keep_previous: bool = True, index=None, allow_shrink: bool = False,
                  **index_options) -> dict:
    """Build the whole collection into DIR.rebuilding with `embedder`, then swap it in; returns the run summary.

    `index` is the indexing function (`index_collection` by default, or a Ray one with the same signature).
    A rebuilt store holding under SHRINK_LIMIT of the live store's images (its sources unmounted or emptied:
    each file simply gone) is left in DIR.rebuilding, not swapped in, unless `allow_shrink`.
    """
    # "." or "x/..", or a link to the store: the staging folder goes beside the store itself, named after it
    store_dir = Path(os.path.realpath(store_dir))
    _, groups = recorded_collection(store_dir)  # no store there: StoreNotFound, before anything is locked
    live_lock = acquire_write_lock(store_dir)  # an index run into DIR now would be lost at the swap: refuse it
    try:
        return _rebuild(store_dir, groups, embedder=embedder, keep_previous=keep_previous, index=index,
                        allow_shrink=allow_shrink, **index_options)
    finally:
        release_write_lock(live_lock)


def _rebuild(store_dir: Path, groups: list[tuple[list[str], ChipOptions]], *, embedder: Embedder, keep_previous: bool,
             index, allow_shrink: bool, **index_options) -> dict:
    staging_dir = staging_dir_for(store_dir)
    recorded = Store.peek_provenance(staging_dir) if staging_dir.exists() else None
    if recorded is not None and provenance_conflicts(recorded, embedder.provenance):
        log.warning("an earlier rebuild at %s used other settings: starting it over", staging_dir)
        shutil.rmtree(staging_dir)
    elif recorded is not None:
        log.info("resuming the rebuild at %s", staging_dir)
    live = Store.open(store_dir)
    try:  # --index-memory, --target-recall, --index-type carry over (a user's explicit ones win)
        index_options["index_settings"] = dict(live.index_settings(), **{
            key: value for key, value in (index_options.get("index_settings") or {}).items() if value is not None})
        path_ids, last_id = live.path_ids(), live.last_id()
    finally:
        live.close()
    # Every image keeps its id (saved links, scripts and the UI's ?id= still point at the same image);
    # images new since the last run get ids above every id the live store ever gave.
    staging = Store.create(staging_dir, provenance=embedder.provenance)
    try:
        staging.reserve_ids(path_ids, above=last_id)
    finally:
        staging.close()
    # files gone since an interrupted attempt leave the staging store; the swap's own check weighs the whole
    summary = combined([(index or index_collection)(sources, staging_dir, embedder=embedder, chips=chips,
                                                    allow_shrink=True, **index_options) for sources, chips in groups])
    sources = [source for group, _ in groups for source in group]
    staging = Store.open(staging_dir)
    try:
        staging.clear_id_hints()
        rebuilt = staging.count_images()
    finally:
        staging.close()
    if len(path_ids) and rebuilt < SHRINK_LIMIT * len(path_ids) and not allow_shrink:
        raise IndexerError(
            f"the rebuilt store holds {rebuilt:,} images against the live store's {len(path_ids):,}: not swapped "
            f"in (are the sources there? {', '.join(sources)}). The live store is untouched and the rebuild waits "
            f"in {staging_dir}: run it again once they are, or with --allow-shrink to swap in the smaller store")
    previous = swap_in(store_dir, staging_dir, keep_previous=keep_previous)
    log.info("rebuilt store swapped in at %s (previous: %s)", store_dir, previous)
    return dict(summary, store=str(store_dir), previous=str(previous) if previous else None, sources=sources)


def combined(summaries: list[dict]) -> dict:
    """One summary of several index runs: their counts added up, the speed over their time together, the rest
    (run id, store) the last run's."""
    if len(summaries) == 1:
        return summaries[0]
    total = dict(summaries[-1])
    for key, value in total.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = sum(summary.get(key, 0) for summary in summaries)
        elif isinstance(value, dict):  # failure reasons (counts) and examples (the first of each kind)
            merged = {}
            for summary in summaries:
                for name, item in summary.get(key, {}).items():
                    merged[name] = merged.get(name, 0) + item if isinstance(item, int) else merged.get(name, item)
            total[key] = merged
    if total.get("seconds"):
        total["images_per_second"] = round((total["indexed"] - total.get("copied", 0)) / total["seconds"], 3)
    return total
