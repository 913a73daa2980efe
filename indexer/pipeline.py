"""The indexing run: decode in parallel workers, embed, write the store (what to do is indexer/plan.py's)."""
import contextlib
import dataclasses
import hashlib
import inspect
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from store import PCA, Store

from PIL import Image

from . import scenes
from .chip_records import chip_record
from .copies import Copies
from .embedder import Embedder, fit_pca
from .errors import UnreadableImage
from .images import Preprocess, decode_for_model, draft_side, load_image, read_error, scan_sources
from .writer import StoreWriter, non_finite_error
from .plan import ChipOptions, Job, apply_plan, hashing_scenes, plan_run

RUN_COLUMNS = ("indexed", "copied", "skipped", "moved", "removed", "failed", "skipped_chips", "seconds",
               "images_per_second")

log = logging.getLogger(__name__)


def default_workers(device=None) -> int:
    """Decode worker processes for a run whose model runs on `device`: cores - 1, at most 8; none for a model on a
    CPU of 2 cores, whose forward keeps both busy: a worker beside it slows it more than decoding between its
    batches does (bench/cpu_workers.py: 1.11x without one on the 2-core Xeon, bench/results/cpu/workers-xeon-768/)."""
    cores = os.cpu_count() or 2
    if _device_type(device) == "cpu" and cores <= 2:
        return 0
    return max(1, min(8, cores - 1))


def _device_type(device) -> str | None:
    """'cpu', 'cuda', ... of a torch device or its name; None for anything else (a plugged-in backbone may name
    its device as it likes: the README asks it only for preprocess, provenance and embed)."""
    try:
        return torch.device(device).type if device is not None else None
    except (RuntimeError, TypeError, ValueError):
        return None


class DecodeDataset(torch.utils.data.Dataset):
    """One job → pixels and catalogue fields, or the reason it failed (never an exception)."""

    def __init__(self, jobs: list[Job], preprocess: Preprocess, *, min_valid: float = 0.5, stretch=(2, 98),
                 gsd: float | None = None, raw: bool = False):
        self.gsd = gsd
        self.raw = raw  # uint8 pixels, normalised later on the model's device (Preprocess.resized)
        self.draft = True  # large JPEGs decoded at a reduced scale (images.decode_for_model); benchmarks turn it off
        self.together = True  # a batch's small images of one size resized in one call; benchmarks turn it off
        self._decoded = (None, None)  # (path, upright RGB image) of the last plain image cut
        self._scene = (None, None)  # (path, open raster) of the last scene cut: its chips share one open
        self.jobs = jobs
        self.preprocess = preprocess
        self.min_valid = min_valid
        self.stretch = stretch

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, position):
        return self.__getitems__([position])[0]

    def __getitems__(self, positions) -> list[dict]:
        """The items at `positions` (a DataLoader asks for a batch's at once), each as __getitem__ gives it: images
        of one size are resized in one call (Preprocess.resized_together), the same bytes, faster."""
        items = [self._item(position) for position in positions]
        waiting = [item for item in items if "image" in item]
        resized = self.preprocess.resized_together([item.pop("image") for item in waiting]) if waiting else []
        for item, pixels in zip(waiting, resized):
            item["pixels"] = torch.from_numpy(pixels)
        return items

    def _item(self, position) -> dict:
        job = self.jobs[position]
        name = job.scene.path if job.scene else (job.plain_source or job.path)
        try:
            if job.scene:
                return self._chip(job)
            if job.plain_source:
                return self._plain_chip(job)
            data = Path(job.path).read_bytes()
            resolution = getattr(self.preprocess, "resolution", None)  # a plugged-in preprocess may not say
            at_least = draft_side(resolution) if self.draft and resolution else None
            image, (width, height) = decode_for_model(data, name=job.path, at_least=at_least)
            record = {"path": job.path, "size": len(data), "mtime": job.mtime, "image_id": job.image_id,
                      "sha256": hashlib.sha256(data).hexdigest(), "width": width, "height": height}
            return {"record": record, **self._pixels(image)}
        except UnreadableImage as error:
            return {"failure": (name, str(error).removeprefix(name + ": "), job.size, job.mtime)}
        except OSError as error:
            return {"failure": (name, read_error(error), job.size, job.mtime)}

    def _pixels(self, image) -> dict:
        """{"pixels": ...} now, or {"image": ...} to be resized with the batch's others: uint8 for lookalike's own
        resize (not a subclass's `resized`, which every image must go through, as a query's does), and only an
        image no larger than the model's input, cheap to keep until the batch is decoded (a batch of 128 at most
        about 25 MB of decoded pixels and as much stacked, per decoding process)."""
        own = getattr(type(self.preprocess), "resized", None) is Preprocess.resized
        if self.together and self.raw and own and image.width * image.height <= self.preprocess.resolution ** 2:
            return {"image": image}
        return {"pixels": torch.from_numpy(self.preprocess.resized(image) if self.raw else self.preprocess(image))}

    def __getstate__(self):  # an open raster stays in its process
        return dict(self.__dict__, _scene=(None, None))

    def close(self) -> None:
        _, dataset = self._scene
        self._scene = (None, None)
        if dataset is not None:
            dataset.close()

    def _scene_dataset(self, path: str):
        """The scene open: consecutive chips of one scene share one open, and GDAL's cache of the blocks they read
        (decoding a NAIP scene's chips, reopened for each, took 1.6x as long at 512 px and 3.8x at 128 px;
        bench/scene_chips.py, bench/results/cpu/scene_chips/)."""
        if self._scene[0] != path:
            self.close()
            self._scene = (path, scenes.open_dataset(path))
        return self._scene[1]

    def _chip(self, job: Job) -> dict:
        rgb, valid = scenes.read_chip(self._scene_dataset(job.scene.path), job.scene, job.window)  # (h, w, 3) uint8
        if valid < self.min_valid:
            return {"skipped_chip": (job.path, job.scene.path)}
        record = chip_record(job, valid=valid, stretch=self.stretch, gsd=self.gsd)
        return {"record": record, **self._pixels(Image.fromarray(rgb))}


    def _plain_chip(self, job: Job) -> dict:
        if self._decoded[0] != job.plain_source:  # consecutive chips of one image share one decode (or its failure)
            try:
                self._decoded = (job.plain_source, load_image(Path(job.plain_source)))
            except (UnreadableImage, OSError) as error:
                self._decoded = (job.plain_source, error)
        if isinstance(self._decoded[1], Exception):
            raise self._decoded[1]
        col, row, width, height = job.window
        image = self._decoded[1].crop((col, row, col + width, row + height))
        record = {"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": None, "sha256": None,
                  "width": width, "height": height, "scene": job.plain_source, "window": list(job.window),
                  "geo": {"plain": True}}
        return {"record": record, **self._pixels(image)}


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
    try:
        yield from loader
    finally:
        dataset.close()  # the scene this process had open (workers close theirs as they exit)


def index_collection(sources, store_dir, *, embedder: Embedder, batch_size: int = 32, workers: int | None = None,
                     rebuild: bool = False, progress: bool = True, chips: ChipOptions = ChipOptions(),
                     index_settings: dict | None = None, retry_failed: bool = False,
                     allow_shrink: bool = False) -> dict:
    """Bring the store at `store_dir` up to date with the images in `sources`; returns the run summary.

    Georeferenced TIFF scenes are cut into chips as `chips` says; every other image is embedded whole.
    `retry_failed` tries again the files that failed before, changed or not. A run that would leave the store
    with under half its images, their files gone, is refused unless `allow_shrink` (plan_run).
    """
    started = time.perf_counter()
    paths = scan_sources(sources)
    workers = default_workers(getattr(embedder, "device", None)) if workers is None else workers
    store = Store.create(store_dir, provenance=embedder.provenance, rebuild=rebuild)
    store.set_index_settings(**(index_settings or {}))  # --index-memory, --target-recall
    settings = {"batch_size": batch_size, "workers": workers, "rebuild": rebuild,
                "sources": [str(Path(s).absolute()) for s in sources], "chips": dataclasses.asdict(chips)}
    run_id = store.start_run(model=embedder.provenance["model"], settings=settings)
    counts = new_counts()
    with tracked_run(store, run_id, counts, started=started) as outcome:
        plan = plan_run(paths, store, chips=chips, retry_failed=retry_failed, allow_shrink=allow_shrink or rebuild)
        apply_plan(store, plan, run_id=run_id, counts=counts)
        with hashing_scenes(store, plan.to_hash):
            _embed_jobs(plan.jobs, store, embedder, run_id=run_id, counts=counts, batch_size=batch_size,
                        workers=workers, progress=progress, chips=chips)
    return dict(outcome["summary"], run_id=run_id, store=str(store_dir))


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
        try:
            outcome["summary"] = finish_summary(store, run_id, counts, started=started, status=outcome["status"])
        except Exception as error:
            if outcome["status"] == "done":
                raise
            # the run's own error is the one to see (a full disk fails the save too): this one goes to the log
            log.warning("the run could not be closed either: %s", error)


def new_counts() -> dict:
    return {"indexed": 0, "copied": 0, "skipped": 0, "moved": 0, "relocated": 0, "removed": 0, "failed": 0, "scenes": 0,
            "skipped_chips": 0, "failure_reasons": {}, "failure_examples": {}}


def finish_summary(store: Store, run_id: int, counts: dict, *, started: float, status: str) -> dict:
    """Save the index, close the run's row in the runs table, close the store; returns the summary."""
    try:
        store.finish_index()  # rebuilds (retrains, retunes) only past the documented thresholds
        seconds = time.perf_counter() - started
        embedded = counts["indexed"] - counts.get("copied", 0)  # what the model did: copies take no forward pass
        summary = dict(counts, seconds=round(seconds, 3),
                       images_per_second=round(embedded / seconds, 3) if seconds else 0.0)
        store.finish_run(run_id, {k: v for k, v in summary.items() if k in RUN_COLUMNS}, status=status)
    finally:
        store.close()  # and with it the write lock, whatever happened
    return summary


def _embed_jobs(jobs, store, embedder, *, run_id, counts, batch_size, workers, progress, chips=ChipOptions()):
    jobs = write_chip_copies(jobs, store, run_id=run_id, counts=counts, chips=chips)
    later = [job for job in jobs if job.copy_key]  # copies of scenes embedded in this loop: after it
    jobs = [job for job in jobs if not job.copy_key]
    pca = store.pca()
    writer = StoreWriter(store, run_id=run_id, counts=counts)
    copies = Copies(store, reembedded_ids=[job.image_id for job in jobs])
    bar = tqdm(total=len(jobs), unit="img", disable=not progress or not jobs, desc="embedding")
    chunk = batch_size  # shrinks for good after an out-of-memory error
    try:
        for batch in batches(jobs, embedder.preprocess, batch_size=batch_size, workers=workers, chips=chips,
                             raw=takes_uint8(embedder)):
            if batch["skipped_chips"]:
                writer.skipped_chips(batch["skipped_chips"])
            for failure in batch["failures"]:
                writer.failed(failure)
            copies.forget_written(writer.done)
            records, pixels, same_bytes = copies.split(batch["records"], batch["pixels"])
            for start, stop, embedding, chunk in embed_in_chunks(embedder, pixels, chunk) if records else ():
                if pca is None:
                    pca = fit_patch_pca(embedding.patch_tokens)
                    writer.pca(pca)
                writer.embedded(records[start:stop], embedding.global_vectors, _project(embedding.patch_tokens, pca))
            copies.sent(records, written_after=writer.queued)
            if same_bytes:
                writer.copied(same_bytes)
            bar.update(len(batch["records"]) + len(batch["failures"]) + len(batch["skipped_chips"]))
    finally:
        bar.close()
        copies.close()
        writer.close()
    if later and (left := write_run_copies(later, store, run_id=run_id, counts=counts, chips=chips)):
        _embed_jobs(left, store, embedder, run_id=run_id, counts=counts, batch_size=batch_size, workers=workers,
                    progress=progress, chips=chips)


def write_run_copies(jobs: list[Job], store: Store, *, run_id, counts: dict, chips: ChipOptions) -> list[Job]:
    """The chips of scenes whose bytes a scene embedded earlier in this run has (plan.SceneTwins.find_planned),
    once that scene's chips are written: each takes its twin chip's vector, or is recorded too empty as its twin
    was. Returns, to embed, those whose twin chip is in neither place (its window could not be read)."""
    twin_ids = {job.copy_key: store.image_id_for_path(job.copy_key) for job in jobs}
    twin_scenes = {job.copy_key.rpartition("#")[0] for job in jobs}  # chip keys are "<scene path>#<window>"
    empty = set().union(*(store.skipped_chip_keys(scene) for scene in twin_scenes))
    skipped = [(job.path, job.scene.path) for job in jobs if twin_ids[job.copy_key] is None and job.copy_key in empty]
    if skipped:
        writer = StoreWriter(store, run_id=run_id, counts=counts)
        try:
            writer.skipped_chips(skipped)
        finally:
            writer.close()
    write_chip_copies([dataclasses.replace(job, copy_of=twin_ids[job.copy_key], copy_key=None) for job in jobs
                       if twin_ids[job.copy_key] is not None], store, run_id=run_id, counts=counts, chips=chips)
    return [dataclasses.replace(job, copy_key=None) for job in jobs
            if twin_ids[job.copy_key] is None and job.copy_key not in empty]


def write_chip_copies(jobs: list[Job], store: Store, *, run_id, counts: dict, chips: ChipOptions) -> list[Job]:
    """Write the chips of scene copies (plan.SceneTwins: jobs with `copy_of`), each with its twin chip's vector
    and patch features, its own place and date, its twin's share of valid pixels, and no window read; returns
    the other jobs, to embed."""
    copies = [job for job in jobs if job.copy_of is not None]
    if copies:
        twins = store.images([job.copy_of for job in copies])
        writer = StoreWriter(store, run_id=run_id, counts=counts)
        try:
            writer.copied([dict(chip_record(job, valid=twins[job.copy_of]["geo"]["valid_fraction"],
                                            stretch=chips.stretch, gsd=chips.gsd), copy_of=job.copy_of)
                           for job in copies])
        finally:
            writer.close()
    return [job for job in jobs if job.copy_of is None]


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


def fit_patch_pca(patch_tokens: torch.Tensor) -> PCA:
    """Fitted on the first batch's patch tokens and kept for the life of the store (the caller stores it)."""
    if not torch.isfinite(patch_tokens).all():
        raise non_finite_error()
    mean, components, fitted_on = fit_pca(patch_tokens.reshape(-1, patch_tokens.shape[-1]))
    return PCA(mean=mean.astype(np.float32), components=components.astype(np.float32), fitted_on=fitted_on)


def _fit_store_pca(store: Store, patch_tokens: torch.Tensor) -> PCA:
    """fit_patch_pca, stored at once: for callers that write the store on their own thread."""
    pca = fit_patch_pca(patch_tokens)
    store.set_pca(pca)
    return pca


def _project(patch_tokens: torch.Tensor, pca: PCA) -> torch.Tensor:
    mean = torch.as_tensor(pca.mean, device=patch_tokens.device)
    components = torch.as_tensor(pca.components, device=patch_tokens.device)
    return (patch_tokens - mean) @ components.T  # (B, h, w, C), still on the device
