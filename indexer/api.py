"""The Python API for notebooks: open a store, load its model, embed an image, search."""
import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import replace
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from store import Store, StoreError
from store.store import check_k, chip_fields, provenance_conflicts
from store.swap import last_chip_options, open_live, recorded_runs

from .embedder import DEFAULT_MODEL, DinoV3Embedder, Embedding
from .errors import IndexerError, UnreadableImage, check_open_store
from .images import decode_for_model, draft_side, load_image, read_error, upright_rgb, upright_size
from .neardup import near_duplicates
from .pipeline import index_collection
from .plan import SCENE_SUFFIXES
from .refine import COMBINES, UNLIKE_WEIGHT, Refinement, combined_search
from .scenes import check_crop, is_georeferenced, scene_image, scene_size

__all__ = ["DEFAULT_MODEL", "Part", "draft_side", "embed_image", "index_collection", "indexed_size",
           "load_embedder", "load_indexed_image", "load_query_image", "near_duplicates", "open_store",
           "query_file_size", "read_part", "scene_read_options", "search", "search_each", "store_draft_side"]


def open_store(store_dir) -> Store:
    """The live store with its index loaded (from the same store, even while a rebuild swaps one in)."""
    return open_live(Path(store_dir))


def load_embedder(store: Store | None = None, *, model: str | None = None, device: str = "auto",
                  dtype: str = "auto") -> DinoV3Embedder:
    """The embedder a store was built with (or `model` with default settings when no store is given).

    `model` may point the store's model at another copy (a local directory of the same weights);
    a copy whose weights differ from the recorded ones is refused.
    """
    if store is None:
        return DinoV3Embedder.from_pretrained(model or DEFAULT_MODEL, device=device, dtype=dtype)
    check_open_store(store)
    recorded = store.provenance
    if recorded is None:
        raise IndexerError(f"the store at {store.store_dir} has no vectors yet: index something first")
    embedder = DinoV3Embedder.from_pretrained(
        model or recorded["model"], device=device, dtype=dtype, resolution=recorded["resolution"],
        normalization=recorded["normalization"], pooling=recorded["pooling"],
    )
    check_embedder(store, embedder)
    return embedder


def check_embedder(store: Store, embedder) -> None:
    """An embedder given for a store must make vectors comparable with the store's: its model, resolution,
    normalisation and pooling (its provenance). None (the store's own model, made when needed) passes, and so does
    a stand-in without a provenance (a wrapper of the caller's, who answers for it)."""
    recorded, wanted = store.provenance, getattr(embedder, "provenance", None)
    if embedder is None or recorded is None or not isinstance(wanted, dict):
        return
    problems = provenance_conflicts(recorded, wanted)
    if problems:
        raise IndexerError(f"this model does not match the store: {'; '.join(problems)}")


def _check_unchanged(item: dict) -> None:
    """Only the file that was indexed is shown: a path whose file (or symlink target) no longer has the
    size and time recorded for it (replaced, or a link pointed elsewhere) is refused, not read."""
    if item.get("size") is None or item.get("mtime") is None:
        return
    path = source_file(item)
    try:
        stat = path.stat()
    except OSError as error:
        raise UnreadableImage(f"{path} cannot be read ({error.strerror or error})") from None
    if (stat.st_size, stat.st_mtime) != (item["size"], item["mtime"]):
        raise UnreadableImage(f"{path} changed on disk since it was indexed: not shown until `lookalike index` "
                              "runs again")


def load_indexed_image(item: dict, *, crop: tuple | None = None, at_least: int | None = None) -> Image.Image:
    """The pixels behind a catalogue row or search hit: the file, or a chip read again from its scene. `crop`
    (col, row, width, height) takes a part of that picture, in its own pixels (a chip's as it was indexed).
    `at_least` (images.draft_side of the store's resolution) decodes a whole large JPEG as `index` did: smaller."""
    from .scenes import load_chip_image

    _check_unchanged(item)
    if item.get("scene") and (item.get("geo") or {}).get("plain"):
        col, row, width, height = item["window"]
        image = load_image(Path(item["scene"])).crop((col, row, col + width, row + height))
    elif item.get("scene"):
        image = load_chip_image(item["scene"], item["window"], item.get("geo") or {})
    else:
        image = load_image(Path(item["path"]), at_least=None if crop else at_least)
    return _cropped(image, crop, item["path"])


def indexed_size(item: dict) -> tuple[int, int]:
    """(width, height) of load_indexed_image(item) uncropped: the pixels a part of it counts. A whole file's from
    its header, turned upright as its EXIF says, without decoding it (a 3720 x 2160 JPEG's whole decode takes
    0.14 s: bench/results/cpu/jpeg_draft/)."""
    if item.get("scene"):
        return load_indexed_image(item).size
    _check_unchanged(item)
    return upright_size(Path(item["path"]))


def source_file(item: dict) -> Path:
    """The file on disk behind a row or hit (a chip's scene)."""
    return Path(item.get("scene") or item["path"])


def reading_key(item: dict) -> str:
    """How load_indexed_image reads a row's pixels, besides its path and its file: a scene chip's bands and stretch,
    which a rebuild with other --bands or --stretch changes while the chip's path and scene file stay the same."""
    from .scenes import CHIP_READING

    geo = item.get("geo") or {}
    return json.dumps([geo.get(key) for key in CHIP_READING])


def load_query_image(source, *, name: str | None = None, read_options: dict | None = None,
                     crop: tuple | None = None, at_least: int | None = None) -> Image.Image:
    """A query as one RGB image. A georeferenced raster (told as `index` tells one: its suffix, then a CRS) is
    read whole as a scene, with its mask and `read_options` (a store's `scene_read_options`: the bands and
    stretch its chips were read with, an indexed scene's own); anything else is decoded by Pillow. `source`: a
    path, or an upload's bytes and `name`. `crop` (col, row, width, height) in the file's pixels (a plain image's
    upright after EXIF) takes that part of it, read at full resolution (a scene's up to 2,048 px on its long
    side). Without a crop, `at_least` (store_draft_side's) decodes a large JPEG at the reduced scale `index`
    decodes it to: a search by an indexed file then embeds the very pixels its stored vector came from, and
    decodes faster."""
    source = _unviewed(source)
    scene, name = _as_scene(source, name)
    if scene is not None:
        options = _options_for(source, read_options or {})
        return scene_image(scene, **dict(options, **({"window": tuple(crop)} if crop else {})))
    at_least = None if crop else at_least  # a crop counts the file's own pixels
    if isinstance(source, (bytes, bytearray)):
        image = decode_for_model(bytes(source), name=name, at_least=at_least)[0]
    else:
        image = load_image(source, at_least=at_least)
    return _cropped(image, crop, name)


def store_draft_side(store: Store) -> int | None:
    """load_query_image's `at_least` for queries of this store: images.draft_side of its resolution (None before
    the store has vectors)."""
    recorded = store.provenance
    return draft_side(recorded["resolution"]) if recorded and recorded.get("resolution") else None


def query_file_size(source, *, name: str | None = None) -> tuple[int, int]:
    """(width, height) in the pixels a query's `crop` counts: a georeferenced raster's own (its whole read is
    smaller when it is large), anything else's as decoded and turned upright. `source` as load_query_image's."""
    source = _unviewed(source)
    scene, _ = _as_scene(source, name)
    if scene is not None:
        return scene_size(scene)
    if isinstance(source, (bytes, bytearray)):
        return upright_size(io.BytesIO(source))
    try:
        os.stat(source)
    except OSError as error:  # not "not an image format": as load_query_image says it
        raise UnreadableImage(f"{source}: {read_error(error)}") from error
    return upright_size(Path(source))


def _unviewed(source):
    """A memoryview of a file's bytes as those bytes (a copy); anything else as it is."""
    return source.tobytes() if isinstance(source, memoryview) else source


def _as_scene(source, name: str | None) -> tuple:
    """(what to read as a scene, or None for a plain image; the name errors give it), told as `index` tells a
    scene: its suffix, then a CRS. `source` is a path, or an upload's bytes named `name`."""
    if isinstance(source, (bytes, bytearray)):
        name = name or "upload"
        georeferenced = Path(name).suffix.lower() in SCENE_SUFFIXES and is_georeferenced(io.BytesIO(source))
        return (io.BytesIO(source) if georeferenced else None), name
    path = Path(source)
    georeferenced = path.suffix.lower() in SCENE_SUFFIXES and path.is_file() and is_georeferenced(path)
    return (path if georeferenced else None), str(path)


def _cropped(image: Image.Image, crop, name: str) -> Image.Image:
    if not crop:
        return image
    col, row, width, height = crop
    check_crop(crop, image.size, name)
    return image.crop((col, row, col + width, row + height))


def scene_read_options(store: Store) -> dict:
    """How load_query_image reads a scene as `index` read the store's: the --bands and --stretch of the store's
    last run that cut scenes (defaults when none did); and, under "by_path" and "by_sha256", those each indexed
    scene was cut with, which a query by that scene (or an upload of its bytes) takes instead: runs may differ."""
    check_open_store(store)
    by_path, by_sha256 = {}, {}
    for path, record in store.scenes_by_path().items():
        if record["options"] and record["georeferenced"] is not False:  # a plain image is never read as a scene
            by_path[path] = _read_options(json.loads(record["options"]))
            if record["sha256"]:
                by_sha256[record["sha256"]] = by_path[path]
    return dict(_read_options(last_chip_options(recorded_runs(store))), by_path=by_path, by_sha256=by_sha256)


def _read_options(chips: dict) -> dict:
    """scene_image's bands and stretch from recorded chip options."""
    return {"bands": tuple(chips["bands"]) if chips.get("bands") else None,
            "stretch": tuple(chips.get("stretch") or (2, 98))}


def _options_for(source, read_options: dict) -> dict:
    """scene_image's bands and stretch for `source` (a path, or an upload's bytes): an indexed scene's own (its path
    as `index` records one: absolute, links kept), else the store's last run's."""
    by_path, by_sha256 = read_options.get("by_path") or {}, read_options.get("by_sha256") or {}
    if isinstance(source, (bytes, bytearray)):
        own = by_sha256.get(hashlib.sha256(source).hexdigest()) if by_sha256 else None
    else:
        own = by_path.get(os.path.abspath(source))
    return own or {name: value for name, value in read_options.items() if name in ("bands", "stretch")}


def embed_image(image, embedder) -> Embedding:
    """One image (a path or a PIL image) → its Embedding (a batch of one)."""
    import torch

    if isinstance(image, Image.Image):
        picture = _picture(image)
    else:  # a file: decoded as `index` decodes it for this model (a plugged-in preprocess may not say its size)
        resolution = getattr(embedder.preprocess, "resolution", None)
        picture = load_query_image(image, at_least=draft_side(resolution) if resolution else None)
    pixels = torch.from_numpy(embedder.preprocess(picture))[None]  # (1, 3, H, W)
    return embedder.embed(pixels)


def _picture(image: Image.Image) -> Image.Image:
    """A PIL image given as a query, upright in RGB; an empty one is refused in one line."""
    if min(image.size) < 1:
        raise UnreadableImage(f"the image is {image.size[0]}×{image.size[1]} px: nothing to search by")
    return upright_rgb(image)


class Part(NamedTuple):
    """A query by a part of an indexed image: `crop` (col, row, width, height) in its pixels as it was indexed
    (load_indexed_image's); embedded with the model, as an image file is."""
    image_id: int
    crop: tuple


def read_part(store: Store, part: Part) -> tuple[dict, Image.Image]:
    """(the part described in an answer, its pixels); an unknown id, a changed file or a crop that does not fit
    fails here, before any model loads."""
    about, row = _indexed_row(store, part.image_id)
    picture = load_indexed_image(dict(about, size=row["size"], mtime=row["mtime"]), crop=tuple(part.crop))
    return dict(about, crop=list(part.crop)), picture


def _is_image_id(query) -> bool:
    return isinstance(query, Integral) and not isinstance(query, bool)


def _indexed_query(store: Store, image_id: int) -> tuple[dict, "np.ndarray", dict]:
    """An indexed image as a query: (its description in an answer, its stored vector, its catalogue row)."""
    about, row = _indexed_row(store, image_id)
    return about, store.vector(int(image_id)), row


def _indexed_row(store: Store, image_id: int) -> tuple[dict, dict]:
    row = store.image(int(image_id))  # an unknown id fails here
    return {"id": int(image_id), "path": row["path"], **chip_fields(row)}, row


def _described_picture(query, crop: tuple | None = None) -> dict:
    """An answer's description of a picture query: its path; "<image>" for a PIL image, "<bytes>" for a file's
    bytes (never their repr)."""
    about = {"path": "<image>" if isinstance(query, Image.Image) else "<bytes>" if _is_bytes(query) else str(query)}
    return dict(about, crop=list(crop)) if crop and not isinstance(query, Image.Image) else about


def _is_bytes(query) -> bool:
    return isinstance(query, (bytes, bytearray, memoryview))


def _check_query(query) -> None:
    """One-line refusal of what is no query (True, None, a number that is no id, a dict, ...)."""
    if not (_is_image_id(query) or isinstance(query, (str, os.PathLike, Image.Image, Part)) or _is_bytes(query)):
        raise IndexerError(f"{_short(query)} is not a query: give an indexed image id (an int), a path, a PIL "
                           "image, a file's bytes or a Part")


def _short(value) -> str:
    """A value in an error's one line: its repr's first line, cut short (a numpy array's runs to many lines)."""
    lines = repr(value).splitlines() or [""]
    text = lines[0][:80] + ("..." if len(lines) > 1 or len(lines[0]) > 80 else "")
    return text if isinstance(value, (type(None), bool, int, float, str, dict, list, tuple)) else \
        f"{type(value).__name__} {text}"


class _QueryReader:
    """Reads query images as `index` read the store's: a scene with its bands and stretch, a whole large JPEG
    at the scale its files were decoded to; looked up once."""

    def __init__(self, store: Store, crop: tuple | None = None):
        self.store, self.crop, self._options = store, crop, None

    def __call__(self, query) -> Image.Image:
        if isinstance(query, Image.Image):
            return _picture(query)
        self._options = self._options or (scene_read_options(self.store), store_draft_side(self.store))
        read_options, at_least = self._options
        return load_query_image(query, read_options=read_options, crop=self.crop, at_least=at_least)


def search(store: Store, query, *, k: int = 10, embedder=None, exclude_self: bool = False,
           refinement: Refinement | None = None, combine: str = "mean", unlike=(),
           unlike_weight: float = UNLIKE_WEIGHT, make_embedder=None) -> dict:
    """Nearest neighbours of an indexed image id (an int), of an image (a path or PIL image), of a Part of an
    indexed image, or of several such examples given as a list (combined by `combine`: 'mean' or 'any', see
    refine.combined_search). `unlike`: examples of the same kinds that the results should not look like; the
    query moves away from them (refine.away_from) and indexed ones are never among the results.

    With a `Refinement` (on by default: overlapping chips of one scene collapse to the best), more
    neighbours are fetched until k pass or the store is exhausted. `exclude_self` leaves the indexed
    examples themselves (and the images parts were cut from) out of the results. The answer's "query"
    describes the one query, or holds {"examples": [...], "combine": ...} for several, and with `unlike`
    always, with "unlike" and "unlike_weight" too. Without an `embedder`, one is made when a picture needs it,
    after every picture is read: by `make_embedder()`, or the store's own model.
    """
    check_open_store(store)
    refinement = Refinement() if refinement is None else refinement
    if combine not in COMBINES:  # before any model loads
        raise IndexerError(f"combine {combine!r} is not one of {', '.join(COMBINES)}")
    k = check_k(k)  # so is k
    check_embedder(store, embedder)
    examples, unlike = _as_list(query), _as_list(unlike) if unlike is not None else []
    if not examples:
        raise IndexerError("no query: give an indexed image id, an image, or a list of them")
    vectors, described = _examples(store, examples + unlike, embedder=embedder, make_embedder=make_embedder)
    exclude = _image_ids(unlike)  # a part's own image may still be wanted
    exclude += [about["id"] for about in described[:len(examples)] if "id" in about] if exclude_self else []
    results = combined_search(store, vectors[:len(examples)], k=k, exclude=exclude, refinement=refinement,
                              combine=combine, unlike=vectors[len(examples):], unlike_weight=unlike_weight)
    if unlike:
        about = _moved_query(described[:len(examples)], combine, described[len(examples):], unlike_weight)
    else:
        about = described[0] if len(described) == 1 else {"examples": described, "combine": combine}
    return {"query": about, "results": results}


def _moved_query(examples: list, combine: str, unlike: list, unlike_weight: float) -> dict:
    """An answer's "query" when it moved away from `unlike` (descriptions of both)."""
    return {"examples": examples, "combine": combine, "unlike": unlike, "unlike_weight": unlike_weight}


def _image_ids(items) -> list[int]:
    """The indexed image ids among query items (not the pictures, nor the parts)."""
    return [int(item) for item in items if _is_image_id(item)]


def _as_list(query) -> list:
    return list(query) if isinstance(query, (list, tuple)) and not isinstance(query, Part) else [query]


def _examples(store: Store, examples: list, *, embedder=None, make_embedder=None) -> tuple[list, list]:
    """(each example's unit vector, its description). Every picture is read before any model loads."""
    read = _QueryReader(store)
    vectors, described, pictures = [], [], {}
    for example in examples:
        _check_query(example)
    for position, example in enumerate(examples):
        if _is_image_id(example):
            about, vector, _ = _indexed_query(store, example)
            vectors.append(vector)
        else:
            about, pictures[position] = read_part(store, example) if isinstance(example, Part) else \
                (_described_picture(example), read(example))  # unreadable: fails here
            vectors.append(None)
        described.append(about)
    if pictures and embedder is None:
        embedder = make_embedder() if make_embedder else load_embedder(store)
    for position, picture in pictures.items():
        vectors[position] = embed_image(picture, embedder).global_vectors[0].cpu().numpy()
    return vectors, described


def _embed_halving(embedder, pixels):
    """Global vectors (B, D) as numpy, the batch split in halves while the device runs out of memory."""
    import torch

    try:
        return embedder.embed(pixels).global_vectors.cpu().numpy()
    except torch.OutOfMemoryError:
        if len(pixels) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(pixels) // 2
        return np.concatenate([_embed_halving(embedder, pixels[:half]), _embed_halving(embedder, pixels[half:])])


class _Prepared(NamedTuple):
    """One query of search_each, ready to search: a vector, pixels still to embed, or the reason it failed."""
    described: dict
    vector: object = None  # (D,) of an indexed image
    pixels: object = None  # (3, H, W) of an image, embedded with its batch
    error: str | None = None
    own_id: int | None = None
    own_scene: str | None = None


def search_each(store: Store, queries, *, k: int = 10, embedder=None, exclude_self: bool = False,
                exclude_own_scene: bool = False, refinement: Refinement | None = None, batch_size: int = 16,
                crop: tuple | None = None, unlike=(), unlike_weight: float = UNLIKE_WEIGHT, make_embedder=None):
    """One answer per query, in order: each an indexed image id (an int), an image (a path or PIL image) or a
    Part of an indexed image, searched on its own, as `search` does one. Images are decoded one by one and
    embedded `batch_size` at a time with one model (loaded at the first image; a batch the device cannot hold is
    split in halves). A query that cannot be read (or an unknown id) gives {"query": ..., "error": reason} and
    the others go on. `exclude_self` leaves an indexed query (a Part's image too) out of its own results,
    `exclude_own_scene` its scene's chips; `crop` is load_query_image's, for every image file (a Part has its
    own). `unlike` (as search's, read and embedded once, before the first query; one that cannot be read ends it
    all) moves every query away from them, and each answer's "query" is then search's {"examples": [the query],
    "combine", "unlike", "unlike_weight"}. Without an `embedder`, one is made when a picture needs it: by
    `make_embedder()`, or the store's own model. The answers come one by one, as an iterator; the store, the
    list, k and batch_size are checked at the call."""
    check_open_store(store)  # here, when called, not at the first answer
    single = isinstance(queries, (str, os.PathLike, Image.Image, Part)) or _is_bytes(queries) or _is_image_id(queries)
    if single or not isinstance(queries, Iterable):
        raise IndexerError("search_each takes a list of queries: give [query] for one (or use search)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise IndexerError(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
    k = check_k(k)
    check_embedder(store, embedder)
    return _answers(store, list(queries), k=k, embedder=embedder, exclude_self=exclude_self,
                    exclude_own_scene=exclude_own_scene, refinement=refinement, batch_size=batch_size, crop=crop,
                    unlike=unlike, unlike_weight=unlike_weight, make_embedder=make_embedder)


def _answers(store: Store, queries: list, *, k, embedder, exclude_self, exclude_own_scene, refinement, batch_size,
             crop, unlike, unlike_weight, make_embedder):
    """search_each's answers, one by one."""
    import torch

    refinement = Refinement() if refinement is None else refinement
    read = _QueryReader(store, crop)
    made = [embedder] if embedder is not None else []

    def model():  # made once, when a picture first needs it, and kept for the whole run
        if not made:
            made.append(make_embedder() if make_embedder else load_embedder(store))
        return made[0]

    avoided, avoided_about, avoided_ids = [], [], []
    if unlike:
        avoided, avoided_about = _examples(store, list(unlike), make_embedder=model)
        avoided_ids = _image_ids(unlike)
    for start in range(0, len(queries), batch_size):
        prepared = [_prepare(query, store=store, read=read, crop=crop, model=model)
                    for query in queries[start:start + batch_size]]
        pixels = [entry.pixels for entry in prepared if entry.pixels is not None]
        embedded = iter(_embed_halving(model(), torch.stack(pixels)) if pixels else [])
        for entry in prepared:
            if entry.error is not None:
                yield {"query": entry.described, "error": entry.error}
                continue
            vector = next(embedded) if entry.pixels is not None else entry.vector
            refined = replace(refinement, exclude_scene=entry.own_scene) if exclude_own_scene and entry.own_scene \
                else refinement
            exclude = avoided_ids + ([entry.own_id] if exclude_self and entry.own_id else [])
            results = combined_search(store, [vector], k=k, refinement=refined, exclude=exclude,
                                      unlike=avoided or None, unlike_weight=unlike_weight)
            about = _moved_query([entry.described], "mean", avoided_about, unlike_weight) if unlike \
                else entry.described
            yield {"query": about, "results": results}


def _prepare_part(part: Part, *, store: Store, model) -> _Prepared:
    """A Part of an indexed image as one of search_each's queries: its own crop (not search_each's `crop`); its
    image (and scene) is its own, for exclude_self and exclude_own_scene, as in search."""
    import torch

    try:
        described, picture = read_part(store, part)
    except (IndexerError, StoreError, OSError, TypeError, ValueError) as error:  # unknown id, changed file, bad crop
        reason = str(error) if isinstance(error, (IndexerError, StoreError)) else f"{_short(part)}: {error}"
        return _Prepared(_described_part(part), error=reason)
    embedder = model()
    pixels = torch.from_numpy(embedder.preprocess(picture.convert("RGB")))
    return _Prepared(described, pixels=pixels, own_id=described["id"], own_scene=described.get("scene"))


def _described_part(part: Part) -> dict:
    """A Part that could not be read, described as one that could be ({"id", "crop"}), as far as it is one."""
    try:
        return {"id": int(part.image_id), "crop": [int(value) for value in part.crop]}
    except (TypeError, ValueError):
        return {"path": _short(part)}


def _prepare(query, *, store: Store, read, crop, model) -> _Prepared:
    """One of search_each's queries made ready: an indexed image's stored vector, a picture's pixels, or why it
    cannot be searched."""
    import torch

    if _is_image_id(query):
        try:
            described, vector, row = _indexed_query(store, query)
        except StoreError as error:
            return _Prepared({"id": int(query)}, error=str(error))
        return _Prepared(described, vector=vector, own_id=described["id"], own_scene=row["scene"])
    if isinstance(query, Part):
        return _prepare_part(query, store=store, model=model)
    try:
        _check_query(query)
    except IndexerError as error:
        return _Prepared({"path": _short(query)}, error=str(error))
    try:
        picture = read(query)
    except (IndexerError, OSError) as error:
        reason = str(error) if isinstance(error, IndexerError) else f"{query}: {error.strerror or error}"
        return _Prepared(_described_picture(query, crop), error=reason)
    embedder = model()  # a model that cannot load ends it all: not caught
    pixels = torch.from_numpy(embedder.preprocess(picture.convert("RGB")))
    return _Prepared(_described_picture(query, crop), pixels=pixels)
