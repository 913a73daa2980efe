"""The `lookalike` command line, a click group; library errors become one clear line, never a traceback."""
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .cli_common import device_option, dtype_option, friendly_errors, json_option, parse_numbers, store_option
from .cli_neardup import near_duplicates
from .cli_search import search

SCENES_SHOWN = 20


def ray_options(command):
    """--ray [ADDRESS], --shard-dir, --shard-rows, --ray-actors: shared by index and rebuild."""
    command = click.option("--ray-actors", type=click.IntRange(1, 4096), default=None,
                           help="Embedding actors [default: one per GPU of the cluster, else one per 2 CPUs].")(command)
    command = click.option("--shard-rows", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
                           help="Jobs per shard (one actor call, one Parquet file).")(command)
    command = click.option("--shard-dir", type=click.Path(path_type=Path), default=None,
                           help="Where Ray writes embedding shards; every node must reach it "
                                "[default: STORE/shards].")(command)
    return click.option(
        "--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
        help="Embed on Ray Data: alone (or 'local') a local Ray instance, else the cluster at ADDRESS "
             "(e.g. ray://head:10001 or auto). Needs the ray extra.")(command)


index_memory_option = click.option(
    "--index-memory", default=None,
    help="Most memory the search index may take, e.g. 4GB or 512MiB: picks exact, float16 or compressed "
         "inverted-file storage [default: no limit; remembered by the store].")
target_recall_option = click.option(
    "--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None,
    help="recall@10 (against exact search) an approximate index is tuned to reach [default: 0.95; remembered].")


def _batch_size(value):
    if value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= 4096:
        raise click.BadParameter(f"{value!r} is not 'auto' or a whole number from 1 to 4096", param_hint="--batch-size")
    return size


def _bytes(text):
    from store import StoreError
    from store.ann import parse_bytes

    try:
        return None if text is None else parse_bytes(text)
    except StoreError as error:
        raise click.BadParameter(str(error), param_hint="--index-memory") from None


@click.group()
@click.version_option(package_name="lookalike")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Find satellite and aerial images that look alike (DINOv3 SAT-493M + FAISS + SQLite)."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rasterio").setLevel(max(level, logging.ERROR))  # GDAL's notes on odd TIFF headers
    if not verbose:  # Pillow's notes on odd files (a corrupt EXIF block): each is read, or its failure recorded
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


cli.add_command(search)
cli.add_command(near_duplicates)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _print_preview(sources, store_dir, *, chips, rebuild: bool, retry_failed: bool, as_json: bool) -> None:
    from indexer.preview import preview_run

    plan = preview_run(sources, store_dir, chips=chips, rebuild=rebuild, retry_failed=retry_failed)
    if as_json:
        click.echo(json.dumps(plan))
        return
    parts = [f"{_count(plan['files'], 'file')} whole"] if plan["files"] else []
    parts += [f"{_count(plan['chips'], 'chip')} of {_count(plan['scenes'], 'scene')}"] if plan["chips"] else []
    parts += [f"{plan['copies']:,} of them " + ("a copy of an image embedded before it" if plan["copies"] == 1 else
                                                "copies of images embedded before them") + ": no model pass"] \
        if plan["copies"] else []
    parts += [f"{_count(plan['copies_unchecked'], 'file')} not read to look for copies"] \
        if plan["copies_unchecked"] else []
    click.echo(f"dry run: would embed {_count(plan['embed'], 'image')}" + (f" ({', '.join(parts)})" if parts else "")
               + f", skip {plan['skipped']:,}"
               + (f", keep {plan['moved']:,} moved under new paths" if plan["moved"] else "")
               + (f", give {plan['relocated']:,} chips of scenes moved on the ground their new places"
                  if plan.get("relocated") else "")
               + f", remove {plan['removed']:,}, and refuse "
               f"{_count(plan['failing'], 'file')} before reading")
    for failure in plan["failures"]:
        click.echo(f"  would fail: {failure['path']}: {failure['reason']}")
    if plan["failing"] > len(plan["failures"]):
        click.echo(f"  ... and {plan['failing'] - len(plan['failures']):,} more")
    click.echo(f"{store_dir} holds {plan['indexed_now']:,} images now, about {plan['after']:,} after (pictures that "
               "do not decode and chips under --min-valid are found only when read); nothing was loaded or written")


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@store_option
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Hub id or local directory (env LOOKALIKE_MODEL). Default: the DINOv3 ViT-7B/16 SAT-493M FP16.")
@dtype_option
@device_option
@click.option("--resolution", type=click.IntRange(16, 4096), default=224, show_default=True,
              help="Square input size in pixels, a multiple of 16.")
@click.option("--normalization", default="auto", show_default=True,
              help="auto (SAT-493M values for sat493m models, else ImageNet), sat493m, imagenet, or 'm,m,m/s,s,s'.")
@click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default="cls", show_default=True)
@click.option("--batch-size", default="auto", show_default=True, callback=lambda c, p, v: _batch_size(v),
              help="Images per forward pass, or auto: the largest that fits the GPU's memory (probed; 32 on a CPU). "
                   "Halved for the rest of the run after an out-of-memory error.")
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Decode workers [default: cores - 1].")
@click.option("--rebuild", is_flag=True, help="Forget the store's contents and embed everything again.")
@click.option("--chip-size", type=click.IntRange(16, 100000), default=None,
              help="Georeferenced TIFF scenes are cut into chips this many pixels square, edges shifted inward "
                   "[default: 512]. Given explicitly, plain images larger than it are cut too.")
@click.option("--overlap", type=click.IntRange(0, 99999), default=0, show_default=True,
              help="Pixels shared by neighbouring chips.")
@click.option("--min-valid", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Skip chips with less than this share of valid (not nodata, not transparent) pixels.")
@click.option("--bands", default=None,
              help="Scene bands to use as red,green,blue, e.g. 3,2,1 [default: declared RGB, else 1,2,3].")
@click.option("--stretch", default="2,98", show_default=True,
              help="Low,high percentiles that map non-8-bit scenes to 0-255.")
@click.option("--gsd", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Metres per pixel wanted (the backbone was trained on 0.6 m): a chip then covers chip-size x "
                   "gsd metres and is resampled to --resolution. Needs a projected CRS in metres.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the backbone: for long GPU runs (7B on an H100: +28 % images/s after a ~50 s "
                   "compile, worth it beyond ~40,000 images). No gain on a CPU.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any file failed (after the run).")
@click.option("--retry-failed", is_flag=True,
              help="Try again the files that failed before, even unchanged (after installing a reader, say). "
                   "Files the system would not let be read (permissions, a drive away) are tried on every run.")
@click.option("--dry-run", is_flag=True,
              help="Say what the run would embed, skip and remove, from the files and the store alone: no model "
                   "is loaded and nothing is written.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@index_memory_option
@target_recall_option
@ray_options
@json_option
@friendly_errors
def index(sources, store_dir, model, dtype, device, resolution, normalization, pooling, batch_size, workers,
          rebuild, chip_size, overlap, min_valid, bands, stretch, gsd, compile_model, strict, retry_failed, dry_run,
          progress, index_memory, target_recall, ray_address, shard_dir, shard_rows, ray_actors, as_json):
    """Embed the images in SOURCES (folders, files, or .txt lists of paths) into a store.

    Incremental: unchanged files are skipped, changed ones re-embedded, vanished ones removed.
    Georeferenced TIFF scenes (GeoTIFF, COG) are read by windows and cut into chips.

    Example: lookalike index samples/naip --store demo-store --model ./my-dinov3

    Example: lookalike index /data/scenes --store scenes --chip-size 256 --dry-run
    """
    from indexer.embedder import DEFAULT_MODEL, DinoV3Embedder
    from indexer.normalization import normalization_for
    from indexer.pipeline import index_collection
    from indexer.plan import precheck_store

    chips = _chip_options(chip_size=chip_size, overlap=overlap, min_valid=min_valid, bands=bands, stretch=stretch,
                          gsd=gsd)
    model = model or DEFAULT_MODEL
    index_settings = {"memory_bytes": _bytes(index_memory), "target_recall": target_recall}
    if ray_address:
        from indexer.distributed import require_ray

        require_ray()  # one clear line now, not after a minutes-long model load
    normalization = normalization_for(model, normalization)  # once: the model, and any Ray actors, take it made
    if not rebuild:
        precheck_store(store_dir, model=model, resolution=resolution, pooling=pooling, normalization=normalization)
    if dry_run:
        _print_preview(sources, store_dir, chips=chips, rebuild=rebuild, retry_failed=retry_failed, as_json=as_json)
        return
    embedder = DinoV3Embedder.from_pretrained(
        model, dtype=dtype, device=device, resolution=resolution,
        normalization=normalization, pooling=pooling, compile=compile_model,
    )
    batch_size = batch_size or embedder.probe_batch_size()
    if ray_address:
        from indexer.distributed import ModelSpec, index_collection_ray

        spec = ModelSpec(model=model, dtype=dtype, device=device, resolution=resolution,
                         normalization=normalization, pooling=pooling, compile=compile_model)
        summary = index_collection_ray(sources, store_dir, embedder=embedder, spec=spec, address=ray_address,
                                       shard_dir=shard_dir, rows_per_shard=shard_rows, actors=ray_actors,
                                       batch_size=batch_size, index_settings=index_settings,
                                       rebuild=rebuild, progress=progress and not as_json, chips=chips,
                                       retry_failed=retry_failed)
    else:
        summary = index_collection(sources, store_dir, embedder=embedder, batch_size=batch_size, workers=workers,
                                   rebuild=rebuild, progress=progress and not as_json, chips=chips,
                                   index_settings=index_settings, retry_failed=retry_failed)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary, store_dir)
    if strict and summary["failed"]:
        raise click.ClickException(
            f"--strict: {summary['failed']} file(s) failed; `lookalike failures --store {store_dir}` says why")


def _chip_options(*, chip_size, overlap, min_valid, bands, stretch, gsd):
    """index's chip options from its flags, refused with a clear message before any model loads."""
    from indexer.pipeline import ChipOptions

    chips = ChipOptions(chip_size=chip_size or 512, chip_plain=chip_size is not None, overlap=overlap,
                        min_valid=min_valid, gsd=gsd, bands=parse_numbers(bands, "--bands", int, 1, 3),
                        stretch=parse_numbers(stretch, "--stretch", float, 2, 2))
    if chips.overlap >= chips.chip_size:
        raise click.BadParameter(f"{overlap} must be smaller than --chip-size {chips.chip_size}",
                                 param_hint="--overlap")
    if not 0 <= chips.stretch[0] < chips.stretch[1] <= 100:  # before any model loads, not once per scene
        raise click.BadParameter(f"{stretch!r}: the percentiles must satisfy 0 <= low < high <= 100",
                                 param_hint="--stretch")
    if chips.bands is not None and (len(chips.bands) == 2 or min(chips.bands) < 1):
        raise click.BadParameter(f"{bands!r}: give 3 band numbers for colour or 1 for grey, counting from 1",
                                 param_hint="--bands")
    return chips


def _print_summary(summary: dict, store_dir) -> None:
    """index's closing lines: what the run did, and its failures by reason."""
    notes = [f"{_count(summary['scenes'], 'scene')} cut into chips, {_count(summary['skipped_chips'], 'chip')} "
             "under --min-valid skipped"] if summary["scenes"] else []
    if summary.get("copied"):
        notes.append(f"{summary['copied']} of them copies of images already embedded: no model pass")
    click.echo(
        f"indexed {summary['indexed']}" + (f" ({'; '.join(notes)})" if notes else "")
        + f", skipped {summary['skipped']}, "
        + (f"kept {summary['moved']} moved under new paths, " if summary.get("moved") else "")
        + (f"gave {summary['relocated']} chips of scenes moved on the ground their new places, "
           if summary.get("relocated") else "")
        + f"removed {summary['removed']}, "
        f"failed {summary['failed']} in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.2f} images/s) into {store_dir}"
    )
    for reason, count in sorted(summary["failure_reasons"].items(), key=lambda item: -item[1]):
        click.echo(f"  failed: {count} × {reason}, e.g. {summary['failure_examples'][reason]}")
    if summary["failed"]:
        click.echo(f"  every failure and its reason: lookalike failures --store {store_dir}")


@cli.command()
@store_option
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Model for the new vectors (env LOOKALIKE_MODEL) [default: the store's own].")
@dtype_option
@device_option
@click.option("--resolution", type=click.IntRange(16, 4096), default=None, help="[default: the store's own]")
@click.option("--normalization", default=None, help="[default: the store's own]")
@click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default=None,
              help="[default: the store's own]")
@click.option("--batch-size", default="auto", show_default=True, callback=lambda c, p, v: _batch_size(v),
              help="Images per forward pass, or auto (see `index --help`).")
@click.option("--workers", type=click.IntRange(0, 64), default=None, help="Decode workers [default: cores - 1].")
@click.option("--keep-previous/--discard-previous", default=True, show_default=True,
              help="Keep the replaced store as DIR.previous (until the next rebuild).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@ray_options
@json_option
@friendly_errors
def rebuild(store_dir, model, dtype, device, resolution, normalization, pooling, batch_size, workers, keep_previous,
            progress, ray_address, shard_dir, shard_rows, ray_actors, as_json):
    """Re-embed a store's whole collection into a new store beside it and swap it in when complete.

    The sources and chip options are those the store's runs recorded. The page and `lookalike search` keep
    answering from the old store until the swap (one atomic directory exchange) and from the new one after;
    an interrupted rebuild leaves the live store untouched and resumes when run again.

    Example: lookalike rebuild --store demo-store --model ./another-dinov3-sat493m --ray
    """
    from indexer.embedder import DinoV3Embedder
    from indexer.rebuild import recorded_collection, rebuild_store

    if ray_address:
        from indexer.distributed import require_ray

        require_ray()
    recorded, _, _ = recorded_collection(store_dir)
    model = model or recorded["model"]
    resolution = resolution or recorded["resolution"]
    normalization = normalization or recorded["normalization"]
    pooling = pooling or recorded["pooling"]
    embedder = DinoV3Embedder.from_pretrained(model, dtype=dtype, device=device, resolution=resolution,
                                              normalization=normalization, pooling=pooling)
    batch_size = batch_size or embedder.probe_batch_size()
    options = {"batch_size": batch_size, "progress": progress and not as_json}
    if ray_address:
        from indexer.distributed import ModelSpec, index_collection_ray

        spec = ModelSpec(model=model, dtype=dtype, device=device, resolution=resolution,
                         normalization=normalization, pooling=pooling)
        options.update(index=index_collection_ray, spec=spec, address=ray_address, shard_dir=shard_dir,
                       rows_per_shard=shard_rows, actors=ray_actors)
    else:
        options.update(workers=workers)
    summary = rebuild_store(store_dir, embedder=embedder, keep_previous=keep_previous, **options)
    if as_json:
        click.echo(json.dumps(summary))
        return
    kept = f"; the old one is at {summary['previous']}" if summary["previous"] else ""
    click.echo(f"rebuilt {store_dir}: indexed {summary['indexed']}, failed {summary['failed']} in "
               f"{summary['seconds']:.1f} s ({summary['images_per_second']:.2f} images/s), swapped in{kept}")


@cli.command()
@store_option
@json_option
@friendly_errors
def info(store_dir, as_json):
    """Describe a store: counts, the model and settings its vectors were made with, the index.

    Example: lookalike info --store demo-store --json
    """
    from store import Store

    details = Store.open(store_dir).info()
    if as_json:
        click.echo(json.dumps(details))
        return
    scene_list = details.pop("scene_list")
    click.echo(f"{'index':>20}: {_describe_index(details.pop('index'))}")
    for key, value in details.items():
        hint = f" (lookalike failures --store {store_dir} says why)" if key == "failed" and value else \
            " (every chip skipped: too little valid data)" if key == "scenes_without_chips" and value else ""
        click.echo(f"{key:>20}: {json.dumps(value) if isinstance(value, (dict, list)) else value}{hint}")
    for item in scene_list[:SCENES_SHOWN]:
        bands = ",".join(map(str, item["bands"])) if item["bands"] else "-"
        click.echo(f"{'scene':>20}: {item['scene']} · bands {bands} ({item['band_source'] or 'plain image'}) · "
                   f"{item['crs'] or 'no CRS'} · {item['date'] or 'no date'} · {item['chips']} chips")
    if len(scene_list) > SCENES_SHOWN:
        click.echo(f"{'':>20}  … and {len(scene_list) - SCENES_SHOWN} more scenes (all of them in --json)")


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@store_option
@json_option
@friendly_errors
def export(out_dir, store_dir, as_json):
    """Write a store's vectors and catalogue to OUT_DIR as plain files: vectors.npy ((N, D) float32),
    images.jsonl (one line per row: id, path, and a chip's scene, window, date, centroid, bounds) and
    provenance.json. Needs no model.

    Example: lookalike export embeddings/ --store demo-store
    """
    from store import Store
    from store.export import export_store

    summary = export_store(Store.open(store_dir), out_dir)
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"exported {summary['images']} vectors of {summary['dim']} dims to {summary['out']} "
               f"({', '.join(summary['files'])})")


@cli.command()
@store_option
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="Show at most this many, newest first (--json lists them all unless --limit is given).")
@json_option
@friendly_errors
def failures(store_dir, limit, as_json):
    """List the files that failed to index and why (a file that fails again replaces its old reason).

    Example: lookalike failures --store demo-store --limit 10
    """
    from indexer.images import READ_ERROR
    from store import Store

    store = Store.open(store_dir)
    explicit = click.get_current_context().get_parameter_source("limit") != click.core.ParameterSource.DEFAULT
    rows = store.failures(limit=limit if explicit or not as_json else None)
    total = store.count_failures()
    if as_json:
        click.echo(json.dumps({"failed": total, "failures": rows}))
        return
    if not total:
        click.echo("no failures recorded")
    for row in rows:
        click.echo(f"{row['path']}: {row['reason']}")
    if total > len(rows):
        click.echo(f"… and {total - len(rows)} more (--limit, or --json for all)")
    if total:  # on stderr: stdout stays one "path: reason" line per failure
        refused = store.count_failures(reason_starting=READ_ERROR)
        again = (f"{refused} the system refused to read {'is' if refused == 1 else 'are'} tried again by the next "
                 "index run; " if refused else "a file that failed is not tried again until it changes; ")
        click.echo(f"{again}to try every one: lookalike index SOURCE... --store {store_dir} --retry-failed", err=True)


@cli.command()
@store_option
@index_memory_option
@target_recall_option
@click.option("--index-type", "factory", default=None,
              help="A faiss index_factory string to use instead of the automatic choice, e.g. 'IVF4096,SQ8' "
                   "(inner product; ids kept). 'auto' goes back to the automatic choice.")
@click.option("--nprobe", type=click.IntRange(1, 1 << 20), default=None,
              help="Inverted lists to search instead of tuning to --target-recall (recall is still measured).")
@json_option
@friendly_errors
def reindex(store_dir, index_memory, target_recall, factory, nprobe, as_json):
    """Rebuild only the search index from the stored vectors, with new settings; nothing is re-embedded.

    The new settings are remembered: later `index` runs keep to them.

    Example: lookalike reindex --store big-store --index-memory 4GB --target-recall 0.97
    """
    from store import Store

    store = Store.open(store_dir)
    wishes = {"memory_bytes": _bytes(index_memory), "target_recall": target_recall}
    if factory:
        wishes["factory"] = "" if factory == "auto" else factory
    if nprobe is not None:
        wishes["params"] = {"nprobe": nprobe}
    elif any(value is not None for value in wishes.values()):
        wishes["params"] = {}  # new target, budget or type: tune anew
    described = store.reindex(**wishes)
    store.close()
    if as_json:
        click.echo(json.dumps(described))
        return
    click.echo(_describe_index(described))


def _describe_index(described: dict) -> str:
    recall = described.get("recall_at_10")
    size = described.get("file_bytes")
    return (f"{described.get('factory') or described['type']}: {described['vectors']:,} vectors"
            + (f", {size / 1e6:.1f} MB" if size else "")
            + (f", recall@10 {recall:.3f}" if recall is not None else "")
            + (f" with {json.dumps(described['params'])}" if described.get("params") else "")
            + (f", {described['latency_ms']:.2f} ms a query" if described.get("latency_ms") else "")
            + f" (search on {described['search_device']})")


@cli.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the page to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Another copy of the store's model for embedding uploads (e.g. a local directory).")
@click.option("--max-upload-mb", type=click.IntRange(1, 2000), default=50, show_default=True,
              help="Largest query upload accepted.")
@click.option("--basemap", type=click.Choice(["none", "carto"]), default="none", show_default=True,
              help="A base layer under the scene map; carto makes viewers' browsers fetch Carto's tiles.")
@friendly_errors
def serve(store_dir, host, port, model, max_upload_mb, basemap):
    """Start the browser search page (Streamlit) for a store.

    Example: lookalike serve --store demo-store --port 8501
    """
    import importlib.util

    from store import Store

    Store.open(store_dir).close()  # a missing store is one clear line here, not a page full of errors
    _check_port(host, port)
    app_path = Path(importlib.util.find_spec("ui").origin).parent / "app.py"
    env = dict(os.environ, LOOKALIKE_STORE=str(store_dir.absolute()))
    if model:
        env["LOOKALIKE_MODEL"] = model
    env["LOOKALIKE_BASEMAP"] = "" if basemap == "none" else basemap
    env["LOOKALIKE_MAX_UPLOAD_MB"] = str(max_upload_mb)
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_path),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal",
        "--server.maxUploadSize", str(max_upload_mb),
    ]
    click.echo(f"lookalike: serving {store_dir} at http://{host}:{port}", err=True)
    # Become Streamlit (exec), so that signals (Ctrl-C, kill, docker stop) reach the server itself.
    os.execve(sys.executable, command, env)


def _check_port(host: str, port: int) -> None:
    """Refuse a port something else listens on, in one line, before Streamlit starts and says it its own way."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise click.BadParameter(f"{host!r} does not resolve ({error.strerror})", param_hint="--host") from error
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise click.BadParameter(f"cannot listen on {host} ({error.strerror}): use an address of this "
                                             "machine, 127.0.0.1 or 0.0.0.0", param_hint="--host") from error
                raise click.ClickException(
                    f"cannot serve on {host}:{port} ({error.strerror}): another program (another `lookalike "
                    "serve`?) may hold it; pick another --port") from error


@cli.command("random-model")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--shape", type=click.Choice(["tiny", "vits16", "vitl16", "vit7b16"]), default="tiny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def random_model(model_dir, shape, seed):
    """Save a random-weight DINOv3 of a known shape to MODEL_DIR, for offline smoke tests and benchmarks.

    Its neighbours are meaningless: use it to check a set-up, never to judge results.
    Name the directory with 'sat493m' in it to get the SAT-493M normalisation.

    Example: lookalike random-model /tmp/tiny-dinov3-sat493m &&
    lookalike index samples/naip --store s --model /tmp/tiny-dinov3-sat493m
    """
    from indexer.random_model import save_random_model

    if model_dir.exists() and not model_dir.is_dir():
        raise click.BadParameter(f"{model_dir} is a file, not a folder", param_hint="MODEL_DIR")
    click.echo(f"random {shape} DINOv3 saved to {save_random_model(model_dir, shape, seed=seed)}")


def main(argv=None):
    cli.main(args=argv, prog_name="lookalike")


if __name__ == "__main__":
    main(sys.argv[1:])
