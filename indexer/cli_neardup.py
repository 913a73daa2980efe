"""`lookalike near-duplicates`: groups of images in a store that are near-copies of each other, as text or JSON."""
import json
import sys

import click

from .cli_common import finite_number, friendly_errors, json_option, one_line, store_option
from .neardup import DEFAULT_THRESHOLD

GROUPS_SHOWN = 50
MEMBERS_SHOWN = 20  # of each group, in the text output


@click.command("near-duplicates")
@store_option
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_THRESHOLD, show_default=True,
              callback=finite_number,
              help="The cosine similarity from which two images count as near-copies (1 is the same vector).")
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many nearest neighbours of each image are looked at for its near-copies.")
@click.option("--overlapping", is_flag=True,
              help="Also link chips of one scene whose windows overlap (they share pixels, so they look alike).")
@click.option("--limit", type=click.IntRange(0), default=GROUPS_SHOWN, show_default=True,
              help="Show at most this many groups, largest first (--json lists them all).")
@json_option
@friendly_errors
def near_duplicates(store_dir, threshold, k, overlapping, limit, as_json):
    """Find groups of near-copies among the indexed images: the same picture saved twice, re-encoded, resized,
    or the same place at another date that barely changed. No model is loaded: it searches the store with its
    own vectors. Each group is a chain of images each at or over the threshold with another of the group.

    Example: lookalike near-duplicates --store demo-store --threshold 0.98 --json > groups.json
    """
    from indexer.neardup import near_duplicates as find
    from store import Store

    store = Store.open(store_dir)
    found = find(store, threshold=threshold, k=k, overlapping=overlapping, progress=not as_json and sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps(found))
        return
    groups = found["groups"]
    if not found["images"]:
        click.echo("the store holds no images yet")
        return
    click.echo(f"{len(groups):,} group(s) of near-copies, {found['in_groups']:,} of {found['images']:,} images in them "
               f"(cosine at least {threshold:g} among each image's {k} nearest)")
    for number, group in enumerate(groups[:limit], start=1):
        scores = [link[2] for link in group["links"]]
        click.echo(f"group {number}: {group['size']} images, cosine {min(scores):.4f}–{max(scores):.4f}")
        for image in group["images"][:MEMBERS_SHOWN]:
            click.echo(f"  id={image['id']:<8} {one_line(image['path'])}")
        if group["size"] > MEMBERS_SHOWN:
            click.echo(f"  … and {group['size'] - MEMBERS_SHOWN:,} more in this group (--json for all)")
    if len(groups) > limit:
        click.echo(f"… and {len(groups) - limit:,} more groups (--limit, or --json for all)")
