"""What the commands share: one-line errors for foreseeable failures, the common options, number lists."""
import functools
import logging
import math
import os
import sqlite3
import sys
from pathlib import Path

import click

DTYPE_CHOICES = ["auto", "float16", "bfloat16", "float32"]
DEVICE_CHOICES = ["auto", "cuda", "cpu"]


def friendly_errors(command):
    """Foreseeable errors end the command with one sentence and exit status 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from indexer.errors import IndexerError
        from store import StoreError

        try:
            return command(*args, **kwargs)
        except (IndexerError, StoreError) as error:
            logging.getLogger(__name__).debug("the traceback", exc_info=True)  # -vv: where it was found
            raise click.ClickException(str(error)) from error
        except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            except (OSError, ValueError):  # no real stdout (a test runner's)
                pass
            sys.exit(1)
        except sqlite3.DatabaseError as error:  # found while reading: opening checks only the catalogue's header
            logging.getLogger(__name__).debug("the traceback", exc_info=True)
            raise click.ClickException(_catalogue_trouble(error, kwargs.get("store_dir"))) from error
        except OSError as error:  # the file system said no (permissions, a full disk, a path that cannot exist)
            logging.getLogger(__name__).debug("the traceback", exc_info=True)
            where = f": {error.filename}" if error.filename else ""
            raise click.ClickException(f"{error.strerror or error}{where} ({WHERE_HINT})") from error

    return wrapper


# -v belongs to `lookalike` itself, before the command: `lookalike index -vv` is refused as an unknown option
WHERE_HINT = "run it again as `lookalike -vv COMMAND ...` to see where it happened"


def patch_multiple(_context, param, value):
    """A click callback: --resolution must cut into whole 16-pixel patches (the DINOv3 patch size)."""
    if value is not None and value % 16:
        lower = value // 16 * 16
        raise click.BadParameter(f"{value} is not a multiple of 16, the model's patch size (try {lower} or "
                                 f"{lower + 16})", param=param)
    return value


def normalization_value(_context, param, value):
    """A click callback: --normalization is auto, a preset or 'm,m,m/s,s,s', known before any model or store."""
    from indexer.errors import IndexerError
    from indexer.normalization import PRESETS, parse_custom

    if not value or value.lower() in {"auto", *PRESETS}:  # "" is not given, as before
        return value
    try:
        parse_custom(value)
    except IndexerError as error:
        raise click.BadParameter(str(error).removeprefix("--normalization "), param=param) from error
    return value


def finite_number(_context, param, value):
    """A click callback: FloatRange lets inf and nan through (nan fails no comparison), and no option means them."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def _catalogue_trouble(error: Exception, store_dir) -> str:
    """One sentence for an SQLite error met mid-command: a damaged catalogue, or another (a busy or full disk)."""
    from store.catalogue import DAMAGED_HINT

    where = f"the catalogue of the store at {store_dir}" if store_dir else "a store's catalogue"
    if isinstance(error, sqlite3.OperationalError) and "malformed" not in str(error):
        return f"{where} could not be read or written ({error}); {WHERE_HINT}"
    return f"{where} is damaged ({error}): {DAMAGED_HINT}"


store_option = click.option(
    "--store", "store_dir", required=True, envvar="LOOKALIKE_STORE", type=click.Path(path_type=Path),
    help="Store directory (env LOOKALIKE_STORE).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
device_option = click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                             help="Where the model runs: auto takes the GPU when there is one.")
dtype_option = click.option(
    "--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
    help="auto: float16 on CUDA, bfloat16 on CPUs that support it, else float32.",
)




def parse_numbers(text, name, kind, shortest, longest):
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not shortest <= len(values) <= longest:
        count = shortest if shortest == longest else f"{shortest} to {longest}"
        raise click.BadParameter(f"{text!r} is not {count} comma-separated numbers", param_hint=name)
    return values


index_memory_option = click.option(
    "--index-memory", default=None,
    help="Most memory the search index may take, e.g. 4GB or 512MiB: picks exact, float16 or compressed "
         "inverted-file storage [default: no limit; remembered by the store].")
target_recall_option = click.option(
    "--target-recall", type=click.FloatRange(0, 1, min_open=True), default=None, callback=finite_number,
    help="recall@10 (against exact search) an approximate index is tuned to reach [default: 0.95; remembered].")


def memory_bytes(text):
    """--index-memory's text (4GB, 512MiB) as bytes, or None."""
    from store import StoreError
    from store.ann import parse_bytes

    try:
        return None if text is None else parse_bytes(text)
    except StoreError as error:
        raise click.BadParameter(str(error), param_hint="--index-memory") from None


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {9: "\\t", 10: "\\n", 13: "\\r"}


def one_line(path: str) -> str:
    """A path as text output prints it, one line: control characters (a newline or tab in a file name) escaped
    as Python writes them; --json keeps the name as it is."""
    return path.translate(_CONTROL)
