"""The `lookalike` command line, a click group; library errors become one clear line, never a traceback."""
import json
import logging
import sys
import warnings
from pathlib import Path

import click

from .cli_common import (device_option, dtype_option, finite_number, friendly_errors, index_memory_option, json_option,
                         memory_bytes, normalization_value, parse_numbers, patch_multiple, store_option,
                         target_recall_option)
from .cli_neardup import near_duplicates
from .cli_search import search
from .cli_serve import serve
from .cli_store import export, failures, info, reindex


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


for subcommand in (search, near_duplicates, info, export, failures, reindex, serve):  # each in its own module
    cli.add_command(subcommand)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _store_model(recorded: dict | None) -> str | None:
    """The model an existing store was indexed with (its provenance, `recorded`), for an `index` given none: a Hub
    id, or a local folder that is still there (a folder gone leaves the default, as before)."""
    name = (recorded or {}).get("model")
    if not name or (Path(name).is_absolute() and not Path(name).is_dir()):
        return None
    return name


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
    click.echo(f"{click.format_filename(store_dir)} holds {plan['indexed_now']:,} images now, about "
               f"{plan['after']:,} after (pictures that do not decode and chips under --min-valid are found only "
               "when read); nothing was loaded or written")


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(readable=False, path_type=Path))
@store_option
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Hub id or local directory (env LOOKALIKE_MODEL). Default: the store's model; for a new store "
                   "(or --rebuild) the DINOv3 ViT-7B/16 SAT-493M FP16.")
@dtype_option
@device_option
@click.option("--resolution", type=click.IntRange(16, 4096), default=224, show_default=True, callback=patch_multiple,
              help="Square input size in pixels, a multiple of 16.")
@click.option("--normalization", default="auto", show_default=True, callback=normalization_value,
              help="auto (SAT-493M values for sat493m models, else ImageNet), sat493m, imagenet, or 'm,m,m/s,s,s'.")
@click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default="cls", show_default=True,
              help="The image's vector: the CLS token (pooler_output), the patch tokens' mean, or both joined.")
@click.option("--batch-size", default="auto", show_default=True, callback=lambda c, p, v: _batch_size(v),
              help="Images per forward pass, or auto: the largest that fits the GPU's memory (probed; 16 on a CPU). "
                   "Halved for the rest of the run after an out-of-memory error.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decode workers [default: cores - 1; 0 for a model on a 2-core CPU].")
@click.option("--rebuild", is_flag=True, help="Forget the store's contents and embed everything again.")
@click.option("--chip-size", type=click.IntRange(16, 100000), default=None,
              help="Georeferenced TIFF scenes are cut into chips this many pixels square, edges shifted inward "
                   "[default: 512]. Given explicitly, plain images larger than it are cut too.")
@click.option("--overlap", type=click.IntRange(0, 99999), default=0, show_default=True,
              help="Pixels shared by neighbouring chips.")
@click.option("--min-valid", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              callback=finite_number,
              help="Skip chips with less than this share of valid (not nodata, not transparent) pixels.")
@click.option("--bands", default=None,
              help="Scene bands to use as red,green,blue, e.g. 3,2,1 [default: declared RGB, else 1,2,3].")
@click.option("--stretch", default="2,98", show_default=True,
              help="Low,high percentiles that map non-8-bit scenes to 0-255.")
@click.option("--gsd", type=click.FloatRange(min=0, min_open=True), default=None,
              callback=finite_number,
              help="Metres per pixel wanted (the backbone was trained on 0.6 m): a chip then covers chip-size x "
                   "gsd metres and is resampled to --resolution. Needs a projected CRS in metres.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the backbone: for long GPU runs (7B on an H100: +28 % images/s after a ~50 s "
                   "compile, worth it beyond ~40,000 images). No gain on a CPU.")
@click.option("--strict", is_flag=True,
              help="Exit with status 1 while any file fails (after the run): this run's failures, and earlier ones "
                   "not tried again because their files are unchanged.")
@click.option("--retry-failed", is_flag=True,
              help="Try again the files that failed before, even unchanged (after installing a reader, say). "
                   "Files the system would not let be read (permissions, a drive away) are tried on every run.")
@click.option("--allow-shrink", is_flag=True,
              help="Remove the images whose files are gone even when the store would keep under half its images "
                   "(refused otherwise: a drive or share may not be mounted).")
@click.option("--dry-run", is_flag=True,
              help="Say what the run would embed, skip and remove, from the files and the store alone: no model "
                   "is loaded and nothing is written.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar on stderr while embedding.")
@index_memory_option
@target_recall_option
@ray_options
@json_option
@friendly_errors
def index(sources, store_dir, model, dtype, device, resolution, normalization, pooling, batch_size, workers,
          rebuild, chip_size, overlap, min_valid, bands, stretch, gsd, compile_model, strict, retry_failed,
          allow_shrink, dry_run, progress, index_memory, target_recall, ray_address, shard_dir, shard_rows, ray_actors,
          as_json):
    """Embed the images in SOURCES (folders, files, or .txt lists of paths) into a store.

    Incremental: unchanged files are skipped, changed ones re-embedded, vanished ones removed.
    Georeferenced TIFF scenes (GeoTIFF, COG) are read by windows and cut into chips.

    Example: lookalike index samples/naip --store demo-store --model ./my-dinov3

    Example: lookalike index /data/scenes --store scenes --chip-size 256 --dry-run
    """
    from indexer.embedder import DEFAULT_MODEL, DinoV3Embedder, check_model_name, quiet_loading
    from indexer.normalization import normalization_for
    from indexer.pipeline import index_collection
    from indexer.plan import precheck_store
    from store import Store
    from store.faiss_index import require_faiss
    from store.lock import check_not_busy

    chips = _chip_options(chip_size=chip_size, overlap=overlap, min_valid=min_valid, bands=bands, stretch=stretch,
                          gsd=gsd)
    recorded = None if rebuild else Store.peek_provenance(store_dir)  # read once: the model, then the precheck
    model = model or _store_model(recorded) or DEFAULT_MODEL
    index_settings = {"memory_bytes": memory_bytes(index_memory), "target_recall": target_recall}
    if ray_address:
        from indexer.distributed import require_ray

        require_ray(ray_address)  # one clear line now, not after a minutes-long model load
    if not dry_run:
        check_model_name(model)  # before the normalisation is chosen by the name (and warns about it)
    normalization = normalization_for(model, normalization)  # once: the model, and any Ray actors, take it made
    precheck_store(store_dir, recorded, resolution=resolution, pooling=pooling, normalization=normalization)
    if not dry_run:
        check_not_busy(store_dir)  # refused at once, not after the model load
        require_faiss()
    if dry_run:
        _print_preview(sources, store_dir, chips=chips, rebuild=rebuild, retry_failed=retry_failed, as_json=as_json)
        return
    with quiet_loading(not progress or as_json):
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
                                       retry_failed=retry_failed, allow_shrink=allow_shrink)
    else:
        summary = index_collection(sources, store_dir, embedder=embedder, batch_size=batch_size, workers=workers,
                                   rebuild=rebuild, progress=progress and not as_json, chips=chips,
                                   index_settings=index_settings, retry_failed=retry_failed,
                                   allow_shrink=allow_shrink)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary, store_dir)
    if strict:
        _fail_on_failures(summary, store_dir)


def _fail_on_failures(summary: dict, store_dir) -> None:
    """--strict: exit 1 while the store records any failure, this run's or an earlier one's that it did not try
    again (a file unchanged since it failed is not retried)."""
    from store import Store

    store = Store.open(store_dir)
    try:
        failing = store.count_failures()
    finally:
        store.close()
    if summary["failed"] or failing:
        earlier = failing - summary["failed"]
        raise click.ClickException(
            f"--strict: {summary['failed']} file(s) failed in this run"
            + (f" and {earlier} still fail unchanged since an earlier one" if earlier > 0 else "")
            + f"; `lookalike failures --store {click.format_filename(store_dir)}` says why")


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
    store_dir = click.format_filename(store_dir)  # a folder name in another encoding prints, replaced, not fails
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
@click.option("--resolution", type=click.IntRange(16, 4096), default=None, callback=patch_multiple,
              help="[default: the store's own]")
@click.option("--normalization", default=None, callback=normalization_value, help="[default: the store's own]")
@click.option("--pooling", type=click.Choice(["cls", "mean", "cls+mean"]), default=None,
              help="[default: the store's own]")
@click.option("--batch-size", default="auto", show_default=True, callback=lambda c, p, v: _batch_size(v),
              help="Images per forward pass, or auto (see `index --help`).")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Decode workers [default: cores - 1; 0 for a model on a 2-core CPU].")
@click.option("--keep-previous/--discard-previous", default=True, show_default=True,
              help="Keep the replaced store as DIR.previous (until the next rebuild).")
@click.option("--allow-shrink", is_flag=True,
              help="Swap in a rebuilt store with under half the live store's images (refused otherwise: its "
                   "sources may be unmounted).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar on stderr while embedding.")
@ray_options
@json_option
@friendly_errors
def rebuild(store_dir, model, dtype, device, resolution, normalization, pooling, batch_size, workers, keep_previous,
            allow_shrink, progress, ray_address, shard_dir, shard_rows, ray_actors, as_json):
    """Re-embed a store's whole collection into a new store beside it and swap it in when complete.

    The sources are those the store's runs recorded since it last started over (index --rebuild), each with
    the chip options it was last indexed with. The page and `lookalike search` keep
    answering from the old store until the swap (one atomic directory exchange) and from the new one after;
    an interrupted rebuild leaves the live store untouched and resumes when run again.

    Example: lookalike rebuild --store demo-store --model ./another-dinov3-sat493m --ray
    """
    from indexer.embedder import DinoV3Embedder, quiet_loading
    from indexer.rebuild import recorded_collection, rebuild_store
    from store.faiss_index import require_faiss
    from store.lock import check_not_busy

    if ray_address:
        from indexer.distributed import require_ray

        require_ray(ray_address)
    recorded, _ = recorded_collection(store_dir, warn=False)  # rebuild_store warns of sources gone
    check_not_busy(store_dir)  # refused at once, not after the model load
    require_faiss()
    model = model or recorded["model"]
    resolution = resolution or recorded["resolution"]
    normalization = normalization or recorded["normalization"]
    pooling = pooling or recorded["pooling"]
    with quiet_loading(not progress or as_json):
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
    summary = rebuild_store(store_dir, embedder=embedder, keep_previous=keep_previous, allow_shrink=allow_shrink,
                            **options)
    if as_json:
        click.echo(json.dumps(summary))
        return
    kept = f"; the old one is at {click.format_filename(summary['previous'])}" if summary["previous"] else ""
    click.echo(f"rebuilt {click.format_filename(store_dir)}: indexed {summary['indexed']}, failed "
               f"{summary['failed']} in {summary['seconds']:.1f} s ({summary['images_per_second']:.2f} images/s), "
               f"swapped in{kept}")


@cli.command("random-model")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--shape", type=click.Choice(["tiny", "vits16", "vitl16", "vit7b16"]), default="tiny", show_default=True,
              help="tiny for tests; the ViT-S/16, ViT-L/16 or real 7B shape (about 27 GB saved) for benchmarks.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The same seed and shape give the same weights.")
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
