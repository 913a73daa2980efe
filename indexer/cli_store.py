"""`lookalike info`, `export`, `failures` and `reindex`: the commands that read or re-index a store, no model."""
import json
from pathlib import Path

import click

from .cli_common import (friendly_errors, index_memory_option, json_option, memory_bytes, one_line, store_option,
                         target_recall_option)

SCENES_SHOWN = 20


@click.command()
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
    if details.get("crs"):
        details["crs"] = [_crs_label(crs) for crs in details["crs"]]
    click.echo(f"{'index':>20}: {_describe_index(details.pop('index'))}")
    for key, value in details.items():
        hint = f" (lookalike failures --store {store_dir} says why)" if key == "failed" and value else \
            " (every chip skipped: too little valid data)" if key == "scenes_without_chips" and value else ""
        click.echo(f"{key:>20}: {json.dumps(value) if isinstance(value, (dict, list)) else value}{hint}")
    for item in scene_list[:SCENES_SHOWN]:
        bands = ",".join(map(str, item["bands"])) if item["bands"] else "-"
        click.echo(f"{'scene':>20}: {item['scene']} · bands {bands} ({item['band_source'] or 'plain image'}) · "
                   f"{_crs_label(item['crs']) if item['crs'] else 'no CRS'} · {item['date'] or 'no date'} · "
                   f"{item['chips']} chip{'' if item['chips'] == 1 else 's'}")
    if len(scene_list) > SCENES_SHOWN:
        click.echo(f"{'':>20}  … and {len(scene_list) - SCENES_SHOWN} more scenes (all of them in --json)")


def _crs_label(crs: str) -> str:
    """A CRS as a reader scans it: an authority code as it is, a WKT by its name (the whole WKT is in --json)."""
    if not crs.lstrip().startswith(("PROJCS[", "GEOGCS[", "PROJCRS[", "GEOGCRS[", "COMPD_CS[", "COMPOUNDCRS[")):
        return crs
    name = crs.split('"')[1] if crs.count('"') >= 2 else "unnamed"
    return f"{name} (WKT)"


@click.command()
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


@click.command()
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
        click.echo(f"{one_line(row['path'])}: {row['reason']}")
    if total > len(rows):
        click.echo(f"… and {total - len(rows)} more (--limit, or --json for all)")
    if total:  # on stderr: stdout stays one "path: reason" line per failure
        refused = store.count_failures(reason_starting=READ_ERROR)
        again = (f"{refused} the system refused to read {'is' if refused == 1 else 'are'} tried again by the next "
                 "index run; " if refused else "a file that failed is not tried again until it changes; ")
        click.echo(f"{again}to try every one: lookalike index SOURCE... --store {store_dir} --retry-failed", err=True)


@click.command()
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
    wishes = {"memory_bytes": memory_bytes(index_memory), "target_recall": target_recall}
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
