"""Indexing on Ray Data: decode on CPU workers, embed in an actor pool, write Parquet shards, ingest in plan order.

The driver plans the run exactly as `index_collection` does (same scan, same plan, same bookkeeping), embeds the
first batch itself when the store still needs its patch PCA (so the PCA is fitted on the same tokens), and
hands the remaining jobs to Ray. Actors write shards under `shard_dir`, which every node must reach; the driver
then ingests every job's row in plan order, so ids, vectors and catalogue rows are those of a single-process run.
"""
import dataclasses
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from store import PCA, Store

from . import scenes
from .copy_estimate import find_copies
from .embedder import DinoV3Embedder, Embedder
from .errors import IndexerError
from .images import Preprocess, scan_sources
from .pipeline import (DecodeDataset, _embed, _fit_store_pca, _project, batches, embed_in_chunks, new_counts,
                       takes_uint8, tracked_run, write_chip_copies, write_run_copies)
from .plan import ChipOptions, Job, apply_plan, hashing_scenes, plan_run
from .shards import Ingester, PlanOrderIngester, ShardIndex, job_key, run_fingerprint, shard_rows, write_shard
from .writer import StoreWriter

log = logging.getLogger(__name__)

SHARD_ROWS = 256  # jobs per shard: one actor call, one file
DECODE_BATCH = 32  # images a Ray decoder resizes together at most (DecodeDataset.__getitems__)
CONNECT_SECONDS = 10  # a cluster's address that does not answer within this is refused


class RayUnavailable(IndexerError):
    """--ray was asked for but Ray is not installed, or the cluster cannot be reached."""


@dataclass(frozen=True)
class ModelSpec:
    """How each actor loads its own copy of the embedder (`DinoV3Embedder.from_pretrained` arguments)."""

    model: str
    dtype: str = "auto"
    device: str = "auto"
    resolution: int = 224
    normalization: str | dict | None = None
    pooling: str = "cls"
    compile: bool = False


def require_ray(address: str | None = None):
    """Ray, imported; and a cluster's host:port `address` (ray://host:port too) checked to answer, as Ray itself
    retries an unreachable one without end."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailable("--ray needs Ray: pip install -e '.[ray]' in lookalike's checkout (ray[data] and "
                             "pyarrow)") from error
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
        except OSError as error:
            raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} ({error.strerror or error})") from error
    return ray


def connect(address: str | None):
    """A local Ray instance on this machine (address None or 'local'), else the cluster at `address`."""
    ray = require_ray(address)
    if ray.is_initialized():
        return ray, False
    try:
        if address in (None, "local"):
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} ({str(error).splitlines()[0]})") from error
    return ray, True


def index_collection_ray(sources, store_dir, *, embedder: Embedder, spec: ModelSpec, address: str | None = None,
                         shard_dir=None, batch_size: int = 32, rows_per_shard: int = SHARD_ROWS,
                         actors: int | None = None, rebuild: bool = False, progress: bool = True,
                         chips: ChipOptions = ChipOptions(), index_settings: dict | None = None,
                         retry_failed: bool = False, allow_shrink: bool = False) -> dict:
    """`index_collection` on a Ray cluster; returns the run summary (plus `reused`: rows found in shards)."""
    started = time.perf_counter()
    paths = scan_sources(sources)
    store_dir = Path(store_dir)
    shard_root = Path(shard_dir) if shard_dir else store_dir / "shards"
    store = Store.create(store_dir, provenance=embedder.provenance, rebuild=rebuild)
    store.set_index_settings(**(index_settings or {}))  # --index-memory, --target-recall
    settings = {"batch_size": batch_size, "ray": address or "local", "shard_dir": str(shard_root.absolute()),
                "rebuild": rebuild, "sources": [str(Path(s).absolute()) for s in sources],
                "chips": dataclasses.asdict(chips)}
    run_id = store.start_run(model=embedder.provenance["model"], settings=settings)
    counts = dict(new_counts(), reused=0)
    run_dirs = []  # shard folders of this run, removed once ingested
    with tracked_run(store, run_id, counts, started=started) as outcome:
        plan = plan_run(paths, store, chips=chips, retry_failed=retry_failed, allow_shrink=allow_shrink or rebuild)
        apply_plan(store, plan, run_id=run_id, counts=counts)
        jobs = write_chip_copies(plan.jobs, store, run_id=run_id, counts=counts, chips=chips)  # on the driver
        files = find_copies(jobs, store)  # whole files with the bytes of an indexed image or an earlier file
        _write_file_copies([job for job in jobs if job.path in files.of_indexed], store, twin_ids=files.of_indexed,
                           sha256=files.sha256, run_id=run_id, counts=counts)
        later = [job for job in jobs if job.copy_key or job.path in files.of_planned]  # after their twins
        jobs = [job for job in jobs
                if not (job.copy_key or job.path in files.of_indexed or job.path in files.of_planned)]

        def embed(some):
            reused = counts["reused"]
            done = _embed_on_ray(some, store, embedder, spec, shard_root=shard_root, address=address,
                                 batch_size=batch_size, rows_per_shard=rows_per_shard, actors=actors,
                                 counts=counts, progress=progress, chips=chips, run_id=run_id)
            counts["reused"] += reused
            return done

        with hashing_scenes(store, plan.to_hash):
            run_dirs = [embed(jobs)] if jobs else []
            left = write_run_copies([job for job in later if job.copy_key], store, run_id=run_id, counts=counts,
                                    chips=chips) if later else []
            waiting = [job for job in later if not job.copy_key]
            left += _write_file_copies(waiting, store, twin_ids={job.path: store.image_id_for_path(
                files.of_planned[job.path]) for job in waiting}, sha256=files.sha256, run_id=run_id, counts=counts)
            if left:  # copies whose twin could not be read: embedded themselves
                run_dirs.append(embed(left))
    for run_dir in filter(None, run_dirs):
        shutil.rmtree(run_dir, ignore_errors=True)  # ingested: the store holds all of it now
        try:
            shard_root.rmdir()
        except OSError:
            pass  # shards of other runs are still there
    return dict(outcome["summary"], run_id=run_id, store=str(store_dir))


def _write_file_copies(jobs, store: Store, *, twin_ids: dict, sha256: dict, run_id, counts) -> list[Job]:
    """Write the whole files of `jobs` from their twins (path -> id), vector and patch features, as the
    single-process loop does (indexer/copies.py); returns those whose twin is not in the store (it failed)."""
    twins = store.images({i for i in twin_ids.values() if i is not None})
    records = [{"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": job.image_id,
                "sha256": sha256[job.path], "width": twins[twin_ids[job.path]]["width"],
                "height": twins[twin_ids[job.path]]["height"], "copy_of": twin_ids[job.path]}
               for job in jobs if twin_ids[job.path] in twins]
    if records:
        writer = StoreWriter(store, run_id=run_id, counts=counts)
        try:
            writer.copied(records)
        finally:
            writer.close()
    return [job for job in jobs if twin_ids[job.path] not in twins]


def _embed_on_ray(jobs, store, embedder, spec, *, shard_root, address, batch_size, rows_per_shard, actors,
                  counts, progress, chips, run_id) -> Path | None:
    """Make sure every job has a row in a shard of this run's folder, ingesting rows in plan order as the
    shards arrive (the store fills while the cluster embeds); returns the folder (None when no job could be read
    for a store without its patch PCA yet: then there is nothing to embed, and no folder)."""
    pca = store.pca()
    fitted_here = None
    if pca is None:
        pca, fitted_here = _first_batch(jobs, store, embedder, batch_size=batch_size, chips=chips)
        if pca is None:  # nothing of this run read: its failures and empty chips recorded, as one process does
            ingester = Ingester(store, run_id=run_id, counts=counts, batch_size=batch_size)
            for job, row in zip(jobs, fitted_here):
                ingester.add(row, image_id=job.image_id)
            ingester.flush()
            return None
    run_dir = shard_root / run_fingerprint(embedder.provenance, pca, chips)
    if fitted_here:
        write_shard(run_dir, fitted_here)
    done = ShardIndex(run_dir)
    todo = [(position, job) for position, job in enumerate(jobs)
            if job_key(job.path, job.size, job.mtime) not in done]
    counts["reused"] = len(jobs) - len(todo) - len(fitted_here or [])
    ingesting = PlanOrderIngester(store, jobs, done, run_id=run_id, counts=counts, batch_size=batch_size)
    ingesting.advance()
    if todo:
        log.info("%d of %d jobs to embed on Ray (%d found in shards under %s)", len(todo), len(jobs),
                 len(jobs) - len(todo), run_dir)
        before = counts["indexed"]

        def on_shard(name: str) -> None:
            ingesting.advance(run_dir / name)
            counts["ingested_while_embedding"] = counts["indexed"] - before

        _run_pipeline(todo, embedder, spec, pca, run_dir=run_dir, address=address, batch_size=batch_size,
                      rows_per_shard=rows_per_shard, actors=actors, progress=progress, chips=chips,
                      on_shard=on_shard)
    ingesting.finish()
    return run_dir


def _first_batch(jobs, store, embedder, *, batch_size, chips) -> tuple[PCA | None, list[dict]]:
    """Embed the first batches here, as a single-process run does, until the PCA is fitted; their rows (all the
    jobs', and no PCA, when none of them could be read)."""
    rows, position = [], 0
    for batch in batches(jobs, embedder.preprocess, batch_size=batch_size, workers=0, chips=chips,
                         raw=takes_uint8(embedder)):
        items = _items(jobs, position, batch)
        position += len(items)
        if not batch["records"]:
            rows += shard_rows(items, None, None)
            continue
        embedding = _embed(embedder, batch["pixels"])
        pca = _fit_store_pca(store, embedding.patch_tokens)
        grids = _project(embedding.patch_tokens, pca).cpu().numpy()
        return pca, rows + shard_rows(items, embedding.global_vectors.cpu().numpy(), grids)
    return None, rows


def _items(jobs, start: int, batch: dict) -> list[dict]:
    """The outcomes of jobs[start:...] from a collated batch, back in job order."""
    by_path = {r["path"]: {"record": r} for r in batch["records"]}
    by_path.update({key: {"skipped_chip": (key, scene)} for key, scene in batch["skipped_chips"]})
    failures = iter(batch["failures"])  # a failure is named after the file (a chip's after its scene)
    items = []
    for position in range(start, start + len(batch["records"]) + len(batch["failures"]) + len(batch["skipped_chips"])):
        job = jobs[position]
        outcome = by_path.get(job.path) or {"failure": next(failures)}
        items.append(dict(outcome, **_job_fields(position, job)))
    return items


def _job_fields(position: int, job: Job) -> dict:
    return {"position": position, "path": job.path, "size": job.size, "mtime": job.mtime, "image_id": job.image_id}


# -- the Ray Data pipeline ------------------------------------------------------------------------
def _job_table(todo) -> pa.Table:
    return pa.Table.from_pylist([
        dict(_job_fields(position, job), window=list(job.window) if job.window else None,
             scene_path=job.scene.path if job.scene else None, plain_source=job.plain_source)
        for position, job in todo
    ], schema=pa.schema([("position", pa.int64()), ("path", pa.string()), ("size", pa.int64()),
                         ("mtime", pa.float64()), ("image_id", pa.int64()), ("window", pa.list_(pa.int64())),
                         ("scene_path", pa.string()), ("plain_source", pa.string())]))


def _run_pipeline(todo, embedder, spec, pca, *, run_dir, address, batch_size, rows_per_shard, actors, progress,
                  chips, on_shard=None) -> None:
    ray, started_here = connect(address)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        size = actors or gpus or max(1, int(resources.get("CPU", 1)) // 2)
        threads = 1 if gpus else max(1, int(resources.get("CPU", 1)) // size)
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_arrow(_job_table(todo)).repartition(max(1, -(-len(todo) // rows_per_shard)))
        decoded = dataset.map_batches(
            decode_rows, batch_size=rows_per_shard, batch_format="pyarrow", num_cpus=1,
            fn_kwargs={"preprocess": embedder.preprocess, "chips": json.dumps(dataclasses.asdict(chips))})
        written = decoded.map_batches(
            EmbedActor, batch_size=rows_per_shard, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
            num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
            fn_constructor_kwargs={"spec": dataclasses.asdict(spec), "fingerprint": embedder.provenance["fingerprint"],
                                   "pca_mean": pca.mean, "pca_components": pca.components,
                                   "run_dir": str(run_dir), "batch_size": batch_size, "threads": threads})
        bar = tqdm(total=len(todo), unit="img", disable=not progress, desc=f"embedding on Ray ({size} actors)")
        try:
            for row in written.iter_rows():
                bar.update(row["rows"])
                if on_shard is not None:
                    try:
                        on_shard(row["shard"])
                    except Exception as error:  # the driver's own ingestion: not a Ray failure
                        raise _DriverError() from error
        finally:
            bar.close()
    except _DriverError as wrapped:
        raise wrapped.__cause__ from None
    except Exception as error:
        raise _plain_error(error) from error
    finally:
        if started_here:
            ray.shutdown()


class _DriverError(Exception):
    """Carries an error of the driver's ingestion out of the Ray loop unchanged."""


def _plain_error(error: Exception) -> Exception:
    """A library error raised inside a worker comes back wrapped by Ray: unwrap it for the CLI's one line."""
    cause = error
    while cause is not None:
        if isinstance(cause, IndexerError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    return IndexerError(f"the Ray job failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


@lru_cache(maxsize=64)
def _scene(path: str, bands, stretch):
    return scenes.open_scene(path, bands=bands, stretch=stretch)


def decode_rows(table: pa.Table, *, preprocess: Preprocess, chips: str) -> pa.Table:
    """CPU workers: jobs → pixels (B, 3, H, W) and JSON outcomes, as DecodeDataset decodes for one process."""
    options = json.loads(chips)
    bands = tuple(options["bands"]) if options["bands"] else None
    stretch = tuple(options["stretch"])
    jobs = []
    for row in table.to_pylist():
        scene = _scene(row["scene_path"], bands, stretch) if row["scene_path"] else None
        jobs.append(Job(row["path"], row["size"], row["mtime"], image_id=row["image_id"], scene=scene,
                        window=tuple(row["window"]) if row["window"] else None, plain_source=row["plain_source"]))
    # uint8, resized only: a quarter of the bytes through Ray's object store; the actor's embedder normalises
    dataset = DecodeDataset(jobs, preprocess, min_valid=options["min_valid"], stretch=stretch, gsd=options["gsd"],
                            raw=True)
    outcomes, pixels, shapes = [], [], []
    try:
        for start in range(0, len(jobs), DECODE_BATCH):  # a batch's images of one size are resized together
            for item in dataset.__getitems__(list(range(start, min(start + DECODE_BATCH, len(jobs))))):
                array = item.pop("pixels").numpy() if "pixels" in item else None  # (3, H, W) uint8
                outcomes.append(json.dumps(item))
                pixels.append(b"" if array is None else np.ascontiguousarray(array, dtype=np.uint8).tobytes())
                shapes.append(None if array is None else list(array.shape))
    finally:
        dataset.close()
    return (table.append_column("outcome", pa.array(outcomes))
            .append_column("pixels", pa.array(pixels, type=pa.binary()))
            .append_column("shape", pa.array(shapes, type=pa.list_(pa.int64()))))


class EmbedActor:
    """One copy of the model per actor (per GPU, or per CPU process): embeds a block and writes it as a shard."""

    def __init__(self, *, spec: dict, fingerprint: str | None, pca_mean, pca_components, run_dir: str,
                 batch_size: int, threads: int):
        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.embedder = DinoV3Embedder.from_pretrained(**spec)
        if fingerprint and self.embedder.provenance["fingerprint"] != fingerprint:
            raise IndexerError(f"the model {spec['model']!r} on this worker has other weights than the driver's "
                               "copy: every node needs the same model files")
        self.pca = PCA(mean=np.asarray(pca_mean, np.float32), components=np.asarray(pca_components, np.float32),
                       fitted_on=0)
        self.run_dir = Path(run_dir)
        self.batch_size = batch_size

    def __call__(self, table: pa.Table) -> dict:
        columns = table.to_pydict()
        decoded = [np.frombuffer(blob, dtype=np.uint8).reshape(shape)
                   for blob, shape in zip(columns["pixels"], columns["shape"]) if blob]
        vectors, grids = [], []
        pixels = torch.from_numpy(np.stack(decoded)) if decoded else ()  # (B, 3, H, W) uint8
        # as a single-process run does: an out-of-memory error halves the batch for the rest of this actor
        for _, _, embedding, self.batch_size in embed_in_chunks(self.embedder, pixels, self.batch_size):
            vectors.append(embedding.global_vectors.cpu().numpy())
            grids.append(_project(embedding.patch_tokens, self.pca).cpu().numpy())
        items = [dict(json.loads(outcome), position=position, path=path, size=size, mtime=mtime, image_id=image_id)
                 for outcome, position, path, size, mtime, image_id in zip(
                     columns["outcome"], columns["position"], columns["path"], columns["size"], columns["mtime"],
                     columns["image_id"])]
        rows = shard_rows(items, np.concatenate(vectors) if vectors else None,
                          np.concatenate(grids) if grids else None)
        shard_path = write_shard(self.run_dir, rows)
        return {"shard": [shard_path.name], "rows": [len(rows)]}
