"""The indexing run: scan, decide what changed, decode in parallel workers, embed, write the store."""
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from store import PCA, Store
from store.swap import recorded_runs

from PIL import Image

from . import scenes
from .embedder import Embedder, fit_pca
from .errors import IndexerError, UnreadableImage
from .images import (IMAGE_SUFFIXES, OUTSIDE_LINK_REASON, RASTER_SUFFIXES, OutsideLink, Preprocess, decode_bytes,
                     file_sha256, load_image, scan_sources, upright_size)
from .scenes import Scene
from .writer import StoreWriter, non_finite_error, record_failure

SCENE_SUFFIXES = {".tif", ".tiff"} | RASTER_SUFFIXES
RUN_COLUMNS = ("indexed", "skipped", "removed", "failed", "skipped_chips", "seconds", "images_per_second")

log = logging.getLogger(__name__)

@dataclass
class Job:
    path: str  # the catalogue key: a file's path, or "scene#col,row,width,height" for a chip
    size: int
    mtime: float
    image_id: int | None = None  # set when a changed file replaces an indexed one
    scene: Scene | None = None  # set for a chip of a georeferenced scene
    window: tuple | None = None
    plain_source: str | None = None  # set for a chip of a large plain image


@dataclass(frozen=True)
class ChipOptions:
    """How georeferenced scenes are cut into chips (plain images are embedded whole)."""

    chip_size: int = 512
    overlap: int = 0
    min_valid: float = 0.5
    bands: tuple | None = None
    stretch: tuple = (2, 98)
    gsd: float | None = None  # metres per pixel wanted: a chip then covers chip_size x gsd metres of ground
    chip_plain: bool = False  # plain images larger than chip_size are cut into chips too


@dataclass
class Plan:
    jobs: list = field(default_factory=list)
    skipped: int = 0
    scenes: int = 0
    removed_ids: list = field(default_factory=list)
    forget_failures: list = field(default_factory=list)  # failed files gone, or scenes that now open
    forget_scenes: list = field(default_factory=list)  # scenes changed or gone: their records start over
    scene_records: list = field(default_factory=list)  # (path, size, mtime, options, sha256) of the scenes seen
    to_hash: list = field(default_factory=list)  # (path, size, mtime) of the scenes cut now (hashing_scenes)
    failures: list = field(default_factory=list)  # (path, reason, size, mtime)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def precheck_store(store_dir, *, model: str, resolution: int, normalization: dict, pooling: str) -> None:
    """Refuse a provenance mismatch before the (possibly minutes-long) model load."""
    from store.store import GUARDED_KEYS, mismatch_error

    recorded = Store.peek_provenance(store_dir)
    if recorded is None:
        return
    wanted = {"resolution": resolution, "normalization": normalization, "pooling": pooling}
    problems = [f"{key} {recorded.get(key)!r} (store) vs {wanted[key]!r}"
                for key in GUARDED_KEYS if recorded.get(key) != wanted[key]]
    if problems:
        raise mismatch_error(store_dir, problems)


def plan_run(paths: list[Path], store: Store, *, chips: ChipOptions = ChipOptions(), write: bool = True) -> Plan:
    """Compare the files on disk with the catalogue: what to embed, skip and remove. A file (or scene) with
    the same bytes under a new time has the new time recorded unless `write` is false (a dry run)."""
    plan = Plan()
    known = store.images_by_path()
    known_failures = store.failures_by_path()
    # A failure may come from the chip options (bands a scene lacks, --gsd on degrees): retried when they change.
    options_now = json.dumps(dataclasses.asdict(chips), sort_keys=True)
    options_of_run = {run["run_id"]: json.dumps(run.get("chips"), sort_keys=True) for run in recorded_runs(store)}
    scene_records = store.scenes_by_path()
    chips_of = {}
    for row in known.values():
        if row["scene"]:
            chips_of.setdefault(row["scene"], []).append(row)
    failing_now = set()

    def unreadable(key: str, reason: str) -> None:
        failing_now.add(key)
        known = known_failures.get(key)
        if known and known["reason"] == reason:
            plan.skipped += 1  # the same failure as last time: nothing new to say
        else:
            plan.failures.append((key, reason, None, None))

    for path in paths:
        key = str(path)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # SQLite stores UTF-8: keep the name's bytes visible, escaped
            unreadable(os.fsencode(path).decode("utf-8", "backslashreplace"),
                       "file name is not valid UTF-8 (rename the file to index it)")
            continue
        if isinstance(path, OutsideLink):
            unreadable(key, OUTSIDE_LINK_REASON)
            continue
        try:
            stat = path.stat()
        except OSError as error:
            unreadable(key, f"cannot be read ({error.strerror or error})")
            continue
        row = known.get(key)
        failure = known_failures.get(key)
        if failure and (failure["size"], failure["mtime"]) == (stat.st_size, stat.st_mtime) \
                and options_of_run.get(failure["run_id"]) == options_now:
            plan.skipped += 1  # failed before, file and options unchanged since: the failure stays recorded
        elif (georeferenced := is_scene(path)) or (chips.chip_plain and _larger_than(path, chips.chip_size)):
            if row:
                plan.removed_ids.append(row["id"])  # embedded whole before, cut into chips now
            _plan_scene(plan, store, path, stat, chips_of.get(key, []), scene_records.get(key), chips,
                        georeferenced=georeferenced, write=write)
        elif key in chips_of:  # cut into chips before, embedded whole now
            plan.removed_ids += [c["id"] for c in chips_of[key]]
            plan.forget_scenes.append(key)
            plan.jobs.append(Job(key, stat.st_size, stat.st_mtime))
        elif row and row["size"] == stat.st_size and row["mtime"] == stat.st_mtime:
            plan.skipped += 1
        elif row and row["size"] == stat.st_size and _same_content(path, row["sha256"]):
            if write:
                store.touch_image(row["id"], size=stat.st_size, mtime=stat.st_mtime)
            plan.skipped += 1
        else:
            plan.jobs.append(Job(key, stat.st_size, stat.st_mtime, image_id=row["id"] if row else None))
    plan.removed_ids += [row["id"] for key, row in known.items() if not os.path.lexists(row["scene"] or key)]
    plan.forget_failures = [key for key in known_failures if not os.path.lexists(key) and key not in failing_now]
    plan.forget_failures += [record[0] for record in plan.scene_records if record[0] in known_failures]
    plan.forget_scenes += [key for key in scene_records if not os.path.lexists(key)]
    return plan


def is_scene(path: Path) -> bool:
    """A TIFF with a coordinate reference system: read by windows and cut into chips."""
    return path.suffix.lower() in SCENE_SUFFIXES and scenes.is_georeferenced(path)


def _plan_scene(plan: Plan, store: Store, path: Path, stat, known_chips: list, record: dict | None,
                chips: ChipOptions, *, georeferenced: bool, write: bool = True) -> None:
    """Embed the windows of a scene not yet done: all of them when the scene or the chip options changed.

    A window is done when its chip is in the catalogue or was found too empty (under --min-valid), so a
    run cut short goes on where it stopped.
    """
    key, options = str(path), dataclasses.asdict(chips)
    options_text = json.dumps(options, sort_keys=True)
    if record is not None and (record["size"], record["options"]) == (stat.st_size, options_text) \
            and record["mtime"] != stat.st_mtime and _same_content(path, record.get("sha256")):
        if write:
            store.touch_scene(key, size=stat.st_size, mtime=stat.st_mtime)  # the same bytes under a new time (a copy)
        record = dict(record, mtime=stat.st_mtime)
    unchanged = record is not None and (record["size"], record["mtime"], record["options"]) == (
        stat.st_size, stat.st_mtime, options_text)
    if not unchanged:
        plan.removed_ids += [c["id"] for c in known_chips]
        plan.forget_scenes.append(key)
    try:
        if georeferenced:
            scene = scenes.open_scene(path, bands=chips.bands, stretch=chips.stretch)
            windows, plain_source = _windows(scene, chips), None
        else:
            width, height = upright_size(path)
            scene, plain_source = None, key
            windows = scenes.chip_windows(width, height, chip_size=chips.chip_size, overlap=chips.overlap)
    except IndexerError as error:
        plan.failures.append((key, str(error).removeprefix(key + ": "), stat.st_size, stat.st_mtime))
        return
    done = ({c["path"] for c in known_chips} | store.skipped_chip_keys(key)) if unchanged else set()
    missing = [window for window in windows if chip_key(path, window) not in done]
    plan.skipped += len(windows) - len(missing)
    if missing:
        plan.scenes += 1
    plan.scene_records.append((key, stat.st_size, stat.st_mtime, options, record.get("sha256") if unchanged else None))
    if not unchanged:
        plan.to_hash.append((key, stat.st_size, stat.st_mtime))
    plan.jobs += [Job(chip_key(path, w), stat.st_size, stat.st_mtime, scene=scene, window=w, plain_source=plain_source)
                  for w in missing]


def _larger_than(path: Path, chip_size: int) -> bool:
    try:
        return path.suffix.lower() in IMAGE_SUFFIXES and max(upright_size(path)) > chip_size
    except IndexerError:
        return False  # an unreadable file fails later, where every file does


def _windows(scene, chips: ChipOptions) -> list[tuple]:
    size, overlap = chips.chip_size, chips.overlap
    if chips.gsd:
        native = scenes.native_gsd(scene)
        if native is None:
            raise IndexerError(f"--gsd needs a projected CRS in metres, and this scene's is {scene.crs or 'missing'}")
        # The window covers chip_size x gsd metres in native pixels; the model's resize resamples it.
        size = max(1, round(chips.chip_size * chips.gsd / native))
        overlap = min(size - 1, round(chips.overlap * chips.gsd / native))
    return scenes.chip_windows(scene.width, scene.height, chip_size=size, overlap=overlap)


def chip_key(scene_path, window) -> str:
    return f"{scene_path}#{','.join(str(int(v)) for v in window)}"


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _same_content(path: Path, sha256: str | None) -> bool:
    try:
        return sha256 is not None and file_sha256(path) == sha256
    except OSError:
        return False


class DecodeDataset(torch.utils.data.Dataset):
    """One job → pixels and catalogue fields, or the reason it failed (never an exception)."""

    def __init__(self, jobs: list[Job], preprocess: Preprocess, *, min_valid: float = 0.5, stretch=(2, 98),
                 gsd: float | None = None, raw: bool = False):
        self.gsd = gsd
        self.raw = raw  # uint8 pixels, normalised later on the model's device (Preprocess.resized)
        self._decoded = (None, None)  # (path, upright RGB image) of the last plain image cut
        self.jobs = jobs
        self.preprocess = preprocess
        self.min_valid = min_valid
        self.stretch = stretch

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, position):
        job = self.jobs[position]
        name = job.scene.path if job.scene else (job.plain_source or job.path)
        try:
            if job.scene:
                return self._chip(job)
            if job.plain_source:
                return self._plain_chip(job)
            data = Path(job.path).read_bytes()
            image = decode_bytes(data, name=job.path)
            record = {"path": job.path, "size": len(data), "mtime": job.mtime, "image_id": job.image_id,
                      "sha256": hashlib.sha256(data).hexdigest(), "width": image.width, "height": image.height}
            return {"record": record, "pixels": self._pixels(image)}
        except UnreadableImage as error:
            return {"failure": (name, str(error).removeprefix(name + ": "), job.size, job.mtime)}
        except OSError as error:
            return {"failure": (name, f"cannot be read ({error.strerror or error})", job.size, job.mtime)}

    def _pixels(self, image) -> torch.Tensor:
        return torch.from_numpy(self.preprocess.resized(image) if self.raw else self.preprocess(image))

    def _chip(self, job: Job) -> dict:
        rgb, valid = scenes.read_chip(job.scene.path, job.scene, job.window)  # (h, w, 3) uint8
        if valid < self.min_valid:
            return {"skipped_chip": (job.path, job.scene.path)}
        image = Image.fromarray(rgb)
        geo = dict(scenes.chip_geometry(job.scene, job.window), valid_fraction=round(valid, 4),
                   **{key: job.scene.as_record()[key] for key in SCENE_FIELDS})
        geo["wgs84_bounds"] = _ring_bounds(geo["footprint"])
        geo["stretch_percentiles"] = list(self.stretch)
        geo["native_gsd"] = scenes.native_gsd(job.scene)
        geo["gsd"] = self.gsd or geo["native_gsd"]
        record = {"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": None, "sha256": None,
                  "width": image.width, "height": image.height, "scene": job.scene.path,
                  "window": list(job.window), "geo": geo}
        return {"record": record, "pixels": self._pixels(image)}


    def _plain_chip(self, job: Job) -> dict:
        if self._decoded[0] != job.plain_source:  # consecutive chips of one image share one decode
            self._decoded = (job.plain_source, load_image(Path(job.plain_source)))
        col, row, width, height = job.window
        image = self._decoded[1].crop((col, row, col + width, row + height))
        record = {"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": None, "sha256": None,
                  "width": width, "height": height, "scene": job.plain_source, "window": list(job.window),
                  "geo": {"plain": True}}
        return {"record": record, "pixels": self._pixels(image)}


SCENE_FIELDS = ("crs", "date", "bands", "band_source", "mask_source", "stretch")


def _ring_bounds(footprint) -> list | None:
    if not footprint:
        return None
    ring = footprint[0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return [min(lons), min(lats), max(lons), max(lats)]


def collate(items):
    ok = [item for item in items if "record" in item]
    pixels = torch.stack([item["pixels"] for item in ok]) if ok else None  # (B, 3, H, W)
    return {"pixels": pixels, "records": [item["record"] for item in ok],
            "failures": [item["failure"] for item in items if "failure" in item],
            "skipped_chips": [item["skipped_chip"] for item in items if "skipped_chip" in item]}


def _quiet_worker(_):
    torch.set_num_threads(1)  # decode workers must not fight the model's threads


def batches(jobs, preprocess, *, batch_size: int, workers: int, chips: ChipOptions = ChipOptions(), raw: bool = False):
    dataset = DecodeDataset(jobs, preprocess, min_valid=chips.min_valid, stretch=chips.stretch, gsd=chips.gsd, raw=raw)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
        pin_memory=torch.cuda.is_available(), worker_init_fn=_quiet_worker if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    yield from loader


def index_collection(sources, store_dir, *, embedder: Embedder, batch_size: int = 32, workers: int | None = None,
                     rebuild: bool = False, progress: bool = True, chips: ChipOptions = ChipOptions(),
                     index_settings: dict | None = None) -> dict:
    """Bring the store at `store_dir` up to date with the images in `sources`; returns the run summary.

    Georeferenced TIFF scenes are cut into chips as `chips` says; every other image is embedded whole.
    """
    started = time.perf_counter()
    paths = scan_sources(sources)
    store = Store.create(store_dir, provenance=embedder.provenance, rebuild=rebuild)
    store.set_index_settings(**(index_settings or {}))  # --index-memory, --target-recall
    workers = default_workers() if workers is None else workers
    settings = {"batch_size": batch_size, "workers": workers, "rebuild": rebuild,
                "sources": [str(Path(s).absolute()) for s in sources], "chips": dataclasses.asdict(chips)}
    run_id = store.start_run(model=embedder.provenance["model"], settings=settings)
    counts = new_counts()
    with tracked_run(store, run_id, counts, started=started) as outcome:
        plan = plan_run(paths, store, chips=chips)
        apply_plan(store, plan, run_id=run_id, counts=counts)
        with hashing_scenes(store, plan.to_hash):
            _embed_jobs(plan.jobs, store, embedder, run_id=run_id, counts=counts, batch_size=batch_size,
                        workers=workers, progress=progress, chips=chips)
    return dict(outcome["summary"], run_id=run_id, store=str(store_dir))


@contextlib.contextmanager
def hashing_scenes(store: Store, scenes: list):
    """Hashes the scenes cut in this run (path, size, mtime) in a thread while their chips are embedded, and
    records each hash once the block ends, unless the file changed meanwhile; so a later run tells a copy under
    a new time from a change without this run reading every scene once more before the model starts."""
    hashed, stop = [], threading.Event()

    def work():
        for path, size, mtime in scenes:
            if stop.is_set():
                return
            hashed.append((path, _sha256_or_none(Path(path)), size, mtime))  # one append: safe across threads

    thread = threading.Thread(target=work, name="scene-hashes", daemon=True)
    thread.start()
    try:
        yield
        thread.join()  # done embedding: what is left to hash is all there is to do
    finally:
        stop.set()  # after an error or Ctrl-C: keep what is hashed, do not wait for the rest
        for path, sha256, size, mtime in hashed[:]:
            if sha256 and _stat_of(path) == (size, mtime):
                store.set_scene_sha256(path, sha256)


def _stat_of(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime


@contextlib.contextmanager
def tracked_run(store: Store, run_id: int, counts: dict, *, started: float):
    """Whatever happens inside (done, Ctrl-C, an error), the index is saved and the run's row closed;
    the summary lands in the yielded dict."""
    outcome = {"status": "failed"}
    try:
        yield outcome
        outcome["status"] = "done"
    except KeyboardInterrupt:
        outcome["status"] = "interrupted"
        raise
    finally:
        outcome["summary"] = finish_summary(store, run_id, counts, started=started, status=outcome["status"])


def new_counts() -> dict:
    return {"indexed": 0, "skipped": 0, "removed": 0, "failed": 0, "scenes": 0, "skipped_chips": 0,
            "failure_reasons": {}, "failure_examples": {}}


def apply_plan(store: Store, plan: Plan, *, run_id: int, counts: dict) -> None:
    """Everything a plan decides before embedding: removals, forgotten failures and scenes, early failures."""
    counts["skipped"], counts["scenes"] = plan.skipped, plan.scenes
    if plan.removed_ids:
        store.remove_images(plan.removed_ids)
        counts["removed"] = len(plan.removed_ids)
    for path in plan.forget_failures:
        store.forget_failure(path)
    for path in plan.forget_scenes:
        store.forget_scene(path)
    for path, size, mtime, options, sha256 in plan.scene_records:
        store.record_scene(path, size=size, mtime=mtime, options=options, sha256=sha256)
    for failure in plan.failures:
        record_failure(store, failure, run_id, counts)


def finish_summary(store: Store, run_id: int, counts: dict, *, started: float, status: str) -> dict:
    """Save the index, close the run's row in the runs table, close the store; returns the summary."""
    try:
        store.finish_index()  # rebuilds (retrains, retunes) only past the documented thresholds
        seconds = time.perf_counter() - started
        summary = dict(counts, seconds=round(seconds, 3),
                       images_per_second=round(counts["indexed"] / seconds, 3) if seconds else 0.0)
        store.finish_run(run_id, {k: v for k, v in summary.items() if k in RUN_COLUMNS}, status=status)
    finally:
        store.close()  # and with it the write lock, whatever happened
    return summary


def _embed_jobs(jobs, store, embedder, *, run_id, counts, batch_size, workers, progress, chips=ChipOptions()):
    pca = store.pca()
    writer = StoreWriter(store, run_id=run_id, counts=counts)
    bar = tqdm(total=len(jobs), unit="img", disable=not progress or not jobs, desc="embedding")
    chunk = batch_size  # shrinks for good after an out-of-memory error
    try:
        for batch in batches(jobs, embedder.preprocess, batch_size=batch_size, workers=workers, chips=chips,
                             raw=takes_uint8(embedder)):
            if batch["skipped_chips"]:
                writer.skipped_chips(batch["skipped_chips"])
            for failure in batch["failures"]:
                writer.failed(failure)
            records, pixels = batch["records"], batch["pixels"]
            for start, stop, embedding, chunk in embed_in_chunks(embedder, pixels, chunk) if records else ():
                if pca is None:
                    pca = _fit_store_pca(store, embedding.patch_tokens)
                writer.embedded(records[start:stop], embedding.global_vectors, _project(embedding.patch_tokens, pca))
            bar.update(len(records) + len(batch["failures"]) + len(batch["skipped_chips"]))
    finally:
        bar.close()
        writer.close()


def embed_in_chunks(embedder, pixels: torch.Tensor, size: int):
    """Embed `pixels` in chunks of `size`, halving it for good (down to 1) when the device runs out of memory.
    Yields (start, stop, embedding, size): callers keep the last size for their next batch."""
    start = 0
    while start < len(pixels):
        try:
            embedding = _embed(embedder, pixels[start:start + size])
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            log.warning("out of device memory: embedding in batches of %d from now on", size)
            _free_device_memory()
            continue
        stop = min(start + size, len(pixels))
        yield start, stop, embedding, size
        start = stop


def takes_uint8(embedder) -> bool:
    """Whether the decode workers should hand this embedder uint8 pixels (it normalises them on its device)."""
    return bool(getattr(embedder, "takes_uint8", False))


def _embed(embedder, pixels):
    """Defer the finite check to the writer (it would wait for the device here) where the embedder allows."""
    if "check" in inspect.signature(embedder.embed).parameters:
        return embedder.embed(pixels, check=False)
    return embedder.embed(pixels)  # a plugged-in embedder without the keyword: the writer still checks


def _free_device_memory():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fit_store_pca(store: Store, patch_tokens: torch.Tensor) -> PCA:
    """Fitted on the first batch's patch tokens and kept for the life of the store."""
    if not torch.isfinite(patch_tokens).all():
        raise non_finite_error()
    mean, components, fitted_on = fit_pca(patch_tokens.reshape(-1, patch_tokens.shape[-1]))
    pca = PCA(mean=mean.astype(np.float32), components=components.astype(np.float32), fitted_on=fitted_on)
    store.set_pca(pca)
    return pca


def _project(patch_tokens: torch.Tensor, pca: PCA) -> torch.Tensor:
    mean = torch.as_tensor(pca.mean, device=patch_tokens.device)
    components = torch.as_tensor(pca.components, device=patch_tokens.device)
    return (patch_tokens - mean) @ components.T  # (B, h, w, C), still on the device
