"""`lookalike search`: one query or several examples, each of many queries, a place; text, JSON or GeoJSON."""
import json
import os
from pathlib import Path

import click

from .cli_common import (device_option, dtype_option, finite_number, friendly_errors, json_option, parse_numbers,
                         store_option)


@click.command()
@click.argument("images", nargs=-1, type=click.Path(readable=False, path_type=Path))
@store_option
@click.option("--id", "image_ids", type=int, multiple=True,
              help="Query by an indexed image's id instead of a file (repeat it for several examples).")
@click.option("--at", "at_text", default=None, metavar="LON,LAT",
              help="Query by the indexed chip that shows this place (WGS84 degrees): the one whose centre is "
                   "nearest; the others covering it are listed.")
@click.option("-k", type=click.IntRange(1, 10000), default=10, show_default=True, help="How many neighbours.")
@click.option("--combine", type=click.Choice(["mean", "any"]), default="mean", show_default=True,
              help="With several examples: 'mean' finds what they have in common; 'any' ranks by the best "
                   "score against any one of them.")
@click.option("--exclude-query", is_flag=True, help="Leave the query images given by --id out of the results.")
@click.option("--crop", "crop_text", default=None, metavar="COL,ROW,WIDTH,HEIGHT",
              help="Query with this pixel window of each IMAGE (of a scene: read at full resolution, up to 2,048 px); "
                   "with no IMAGE, of the first --id's (or the --at chip's) picture as it was indexed.")
@click.option("--unlike", "unlike_images", type=click.Path(path_type=Path), multiple=True, metavar="IMAGE",
              help="An image the results should not look like (repeat it): the query moves away from it.")
@click.option("--unlike-id", "unlike_ids", type=int, multiple=True, metavar="N",
              help="An indexed image the results should not look like (repeat it); it is never among them.")
@click.option("--unlike-weight", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              callback=finite_number,
              help="How far the query moves away from the --unlike images (Rocchio's weight for them).")
@click.option("--each", is_flag=True,
              help="Answer every IMAGE (folders and .txt/.lst lists of paths too) and --id on its own, with one "
                   "model load: one answer per query, as JSON Lines with --json; --unlike then moves every query.")
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Another copy of the store's model (e.g. a local directory); its weights must match.")
@click.option("--dedupe/--no-dedupe", default=True, show_default=True,
              help="Collapse overlapping chips of one scene to the best-ranked.")
@click.option("--bbox", default=None, help="Only chips touching WEST,SOUTH,EAST,NORTH (WGS84 degrees).")
@click.option("--dates", default=None, help="Only chips dated FROM,TO: 2015, 2015-07 or 2015-07-31, either may be "
              "empty; a year or month covers all of itself.")
@click.option("--exclude-scene", is_flag=True, help="Leave out chips of the query chips' own scenes.")
@click.option("--nprobe", type=click.IntRange(1, 1 << 20), default=None,
              help="Inverted lists to search, instead of the value tuned to the store's recall target "
                   "(approximate indexes only; more is slower and finds more).")
@click.option("--geojson", "geojson_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results as a GeoJSON FeatureCollection (RFC 7946) to this file.")
@dtype_option
@device_option
@json_option
@friendly_errors
def search(images, store_dir, image_ids, at_text, k, combine, exclude_query, crop_text, unlike_images, unlike_ids,
           unlike_weight, each, model, dedupe, bbox, dates, exclude_scene, nprobe, geojson_path, dtype, device,
           as_json):
    """Find the images in a store that look most like IMAGE (or like indexed image --id N).

    Several examples (IMAGE... and/or --id N --id M ...) make one query: by default the images they have in
    common. Scores are cosine similarities (1 = identical descriptors).

    Example: lookalike search query.jpg --store demo-store -k 5 --json

    Example: lookalike search --id 7 --store scenes --exclude-scene --dates 2015-01-01, --geojson hits.geojson

    Example: lookalike search --id 12 --id 40 --id 95 --store demo-store --exclude-query

    Example: lookalike search --each queries/ --store demo-store -k 5 --json > answers.jsonl

    Example: lookalike search --at -99.15,47.02 --store scenes --exclude-scene

    Example: lookalike search big-scene.tif --crop 2048,1024,512,512 --store scenes

    Example: lookalike search --id 42 --crop 64,64,128,128 --store scenes --exclude-query

    Example: lookalike search --id 12 --unlike-id 57 --unlike greenhouse.jpg --store demo-store
    """
    from indexer import api
    from indexer.embedder import quiet_loading
    from indexer.refine import Refinement

    at, date_range, box = _checked_options(images, image_ids, at_text=at_text, dates=dates, bbox=bbox,
                                           exclude_scene=exclude_scene, exclude_query=exclude_query, each=each,
                                           geojson_path=geojson_path)
    refinement = Refinement(dedupe=dedupe, bbox=box, dates=date_range)
    crop = parse_numbers(crop_text, "--crop", int, 4, 4)
    if crop and not images and (each or not (image_ids or at_text)):
        raise click.UsageError("--crop cuts the IMAGE files (or, without --each, the first --id's picture): give one")
    store = api.open_store(store_dir)
    store.index.nprobe_override = nprobe
    if nprobe is not None and (store.index_state() or {}).get("kind") != "ivf":
        click.echo("note: --nprobe has no effect here: this store's index is exact, every vector is searched",
                   err=True)
    if at is not None:
        image_ids = (*image_ids, _chip_at(store, *at))
    if each:
        with quiet_loading(as_json):  # a model loaded for the files: no bar beside the JSON
            _search_each(store, images, image_ids, k=k, model=model, device=device, dtype=dtype, as_json=as_json,
                         unlike=(unlike_images, unlike_ids, unlike_weight),
                         exclude_query=exclude_query, exclude_scene=exclude_scene, refinement=refinement, crop=crop)
        return
    with quiet_loading(as_json):
        answer = _search_examples(store, images, image_ids, k=k, combine=combine, model=model, device=device,
                                  dtype=dtype, exclude_query=exclude_query, exclude_scene=exclude_scene,
                                  refinement=refinement, crop=crop,
                                  unlike=(unlike_images, unlike_ids, unlike_weight))
    _print_answer(store, answer, geojson_path=geojson_path, as_json=as_json,
                  filtered=bool(bbox or date_range or exclude_scene))


def _checked_options(images, image_ids, *, at_text, dates, bbox, exclude_scene, exclude_query, each, geojson_path):
    """Usage errors, before anything opens: returns the place (lon, lat) or None, the date range and the box."""
    from indexer.errors import IndexerError
    from indexer.refine import parse_bbox, parse_dates, parse_lonlat

    try:
        at = parse_lonlat(at_text) if at_text is not None else None
    except IndexerError as error:
        raise click.BadParameter(str(error), param_hint="--at") from error
    if not images and not image_ids and at is None:
        raise click.UsageError("give an IMAGE file, --id N or --at LON,LAT (or several)")
    if exclude_scene and not image_ids and at is None:
        raise click.UsageError("--exclude-scene needs a query chip given by --id or --at")
    if exclude_query and not image_ids and at is None:
        raise click.UsageError("--exclude-query needs a query image given by --id or --at")
    try:
        date_range = parse_dates(dates)
    except IndexerError as error:
        raise click.BadParameter(str(error), param_hint="--dates") from error
    try:
        box = parse_bbox(bbox)
    except IndexerError as error:
        raise click.BadParameter(str(error), param_hint="--bbox") from error
    if each and geojson_path is not None:
        raise click.UsageError("--geojson writes one query's results: it does not go with --each")
    if geojson_path is not None and not os.access(geojson_path.parent, os.W_OK):  # before any model loads
        raise click.BadParameter(f"cannot write into {geojson_path.parent}", param_hint="--geojson")
    return at, date_range, box


def _search_examples(store, images, image_ids, *, k, combine, model, device, dtype, exclude_query, exclude_scene,
                     refinement, crop=None, unlike=((), (), 0.25)) -> dict:
    """One query: one image or id, or several combined, moved away from the `unlike` (images, ids, weight). Ids
    and files are checked before the model loads."""
    from dataclasses import replace

    from indexer import api

    unlike_images, unlike_ids, unlike_weight = unlike
    rows = [store.image(image_id) for image_id in (*image_ids, *unlike_ids)]  # an unknown id fails here
    if exclude_scene:
        refinement = replace(refinement, exclude_scene=tuple(row["scene"] for row in rows[:len(image_ids)]
                                                             if row["scene"]))
    indexed = list(image_ids)
    if crop and not images:  # a part of the first indexed example's picture (read, and its crop checked, by
        indexed[0] = api.Part(image_ids[0], crop)  # api.search before it makes the model)
    read_options = api.scene_read_options(store) if images or unlike_images else None
    at_least = api.store_draft_side(store)  # a whole large JPEG decoded as `index` decoded the store's
    examples = [_query_picture(image, read_options, crop, at_least=at_least)  # unreadable: fails here
                for image in images]
    avoided = [_query_picture(image, read_options, None, at_least=at_least, role="--unlike image")
               for image in unlike_images]
    answer = api.search(store, examples + indexed, k=k, refinement=refinement, exclude_self=exclude_query,
                        combine=combine, unlike=avoided + list(unlike_ids), unlike_weight=unlike_weight,
                        make_embedder=lambda: api.load_embedder(store, model=model, device=device, dtype=dtype))
    query = answer["query"]
    described = query["examples"] if "examples" in query else [query]
    for example, image in zip(described, images):  # the files first, as api.search got them
        example.update(path=str(image), **({"crop": list(crop)} if crop else {}))
    for example, image in zip(query.get("unlike", []), unlike_images):
        example["path"] = str(image)
    return answer


def _query_picture(image: Path, read_options, crop, *, at_least: int | None, role: str = "query image"):
    from indexer import api
    from indexer.errors import IndexerError

    if not image.is_file():
        raise IndexerError(f"{role} {image} does not exist or is not a file")
    return api.load_query_image(image, read_options=read_options, crop=crop, at_least=at_least)


def _print_answer(store, answer: dict, *, geojson_path, as_json: bool, filtered: bool) -> None:
    from indexer.refine import empty_results_note, to_geojson

    if geojson_path is not None:
        try:
            geojson_path.write_text(json.dumps(to_geojson(answer)))
        except OSError as error:
            raise click.ClickException(f"cannot write {geojson_path}: {error.strerror or error}") from error
    if as_json:
        click.echo(json.dumps(answer))
        return
    if not answer["results"]:
        click.echo(empty_results_note(filtered=filtered) if store.count_images() else "the store holds no images yet")
    for hit in answer["results"]:
        click.echo(_hit_line(hit))


def _chip_at(store, lon: float, lat: float) -> int:
    """search --at: the id of the indexed chip whose centre is nearest the point; says so, and names the others."""
    from indexer.errors import IndexerError

    chips = store.chips_at(lon, lat)
    if not chips:
        extent = store.wgs84_extent()  # not info(): it reads much more
        where = f" (its chips span {', '.join(f'{v:.5f}' for v in extent)} W,S,E,N)" if extent else \
            " (it holds no georeferenced chips)"
        raise IndexerError(f"no indexed chip in the store covers {lon},{lat}{where}")
    chosen = chips[0]
    others = f"; {len(chips) - 1} more cover it: ids {', '.join(str(c['id']) for c in chips[1:11])}" + \
        (" …" if len(chips) > 11 else "") if len(chips) > 1 else ""
    click.echo(f"{lon},{lat} is in chip id {chosen['id']} ({chosen['scene']}, {chosen['date'] or 'no date'}, centre "
               f"{chosen['distance_m']:.0f} m away){others}", err=True)
    return chosen["id"]


def _search_each(store, images, image_ids, *, k, model, device, dtype, as_json, exclude_query, exclude_scene,
                 refinement, crop=None, unlike=((), (), 0.25)):
    """search --each: one answer per query, printed as it comes; a query that fails is reported and skipped.
    The `unlike` (images, ids, weight) shape every query; one of them that cannot be read ends the run."""
    from indexer import api
    from indexer.images import scan_sources
    from indexer.refine import empty_results_note

    unlike_images, unlike_ids, unlike_weight = unlike
    paths = [Path(str(path)) for path in scan_sources(images, keep_missing=True)]  # a missing one: its error
    if not paths and not image_ids:
        raise click.ClickException(f"no image files to query with in {', '.join(map(str, images))}")
    for image_id in unlike_ids:  # an unknown id fails here
        store.image(image_id)
    for image in unlike_images:
        if not image.is_file():
            raise click.ClickException(f"--unlike image {image} does not exist or is not a file")
    failed = 0
    for answer in api.search_each(store, paths + list(image_ids), k=k, refinement=refinement,
                                  make_embedder=lambda: api.load_embedder(store, model=model, device=device,
                                                                          dtype=dtype),
                                  exclude_self=exclude_query, exclude_own_scene=exclude_scene, crop=crop,
                                  unlike=[*unlike_images, *unlike_ids], unlike_weight=unlike_weight):
        failed += "error" in answer
        if as_json:
            click.echo(json.dumps(answer))
            continue
        query = answer["query"]["examples"][0] if "examples" in answer["query"] else answer["query"]
        named = " · ".join(part for part in (f"id {query['id']}" if "id" in query else "", query.get("path")) if part)
        click.echo(f"== {named}")
        if "error" in answer:
            click.echo(f"   error: {answer['error']}")
        elif not answer["results"]:
            filtered = refinement.bbox is not None or refinement.dates is not None or exclude_scene
            click.echo(f"   {empty_results_note(filtered=filtered)}")
        for hit in answer.get("results", []):
            click.echo(_hit_line(hit))
    if failed:
        raise click.ClickException(f"{failed} of {len(paths) + len(image_ids)} queries could not be answered "
                                   "(each one's reason is in its answer)")


def _hit_line(hit: dict) -> str:
    return f"{hit['rank']:>4}  {hit['score']:.4f}  id={hit['id']:<8} {hit['path']}"
