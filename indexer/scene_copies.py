"""Scenes with the bytes of another scene, embedded before or earlier in the run: their chips take its vectors."""
import json
import os
from pathlib import Path

from store import Store

from . import scenes
from .errors import IndexerError
from .images import file_sha256, head_sha256
from .scenes import Scene
from .sidecars import Sidecars, reading_digest


class SceneTwins:
    """The georeferenced scenes recorded with a hash, every window done, to be found again by a new scene path
    with the same bytes, cut with the same options and read the same way (a scene copied into a second folder).
    A twin serves only while it is unchanged on disk, sidecars included, so that this run keeps its chips.

    A new scene's first bytes are hashed only when a candidate has its size and options, and the whole scene
    only when a candidate starts with the same bytes too: a collection of same-sized tiles is not read whole
    before the model starts. A candidate hashed by a lookalike older than the head hashes has its first bytes
    read when a new scene of its size comes. Scenes cut in this run have no hash yet (it is taken while they
    are embedded): find_planned compares them."""

    def __init__(self, store: Store, *, scene_records: dict, chips_of: dict, sidecars: Sidecars):
        self.store, self.chips_of, self.sidecars = store, chips_of, sidecars
        self.candidates = {}
        self.planned = {}  # (size, options) -> the new scenes this run embeds: [{path, reading, head, sha256}]
        self._heads = {}  # path -> first-bytes hash read now, of candidates recorded without one
        self._new_heads = {}  # path -> first-bytes hash of a new scene, read by find
        for record in scene_records.values():
            if all(record.get(name) for name in ("sha256", "windows", "georeferenced")):
                self.candidates.setdefault((record["size"], record["options"]), []).append(record)

    def find(self, scene: Scene, size: int, options_text: str) -> dict | None:
        """The twin's record (its hashes are the new scene's) for `scene` as opened with this run's options."""
        path = Path(scene.path)
        candidates = self.candidates.get((size, options_text))
        if not candidates:
            return None
        try:
            head = head_sha256(path)  # once: a folder of same-sized tiles has many candidates
            self._new_heads[str(path)] = head  # and find_planned need not read it again
            same_head = [record for record in candidates if self._head(record) == head]
            digest = file_sha256(path) if same_head else None
        except OSError:
            return None
        for record in same_head:
            if record["sha256"] == digest and record["path"] != str(path) and self._serves(record, scene):
                return record
        return None

    def _head(self, record: dict) -> str | None:
        """The twin's first-bytes hash; for a twin hashed by a lookalike older than those, read now (once, and
        only while the file is the one its whole hash was taken of)."""
        if record.get("head_sha256"):
            return record["head_sha256"]
        if record["path"] not in self._heads:  # kept apart: the records are the planner's, not to be changed
            try:
                stat = os.stat(record["path"])
                unchanged = (stat.st_size, stat.st_mtime) == (record["size"], record["mtime"])
                self._heads[record["path"]] = head_sha256(Path(record["path"])) if unchanged else None
            except OSError:
                self._heads[record["path"]] = None
        return self._heads[record["path"]]

    def chip_ids(self, twin_path: str, new_path: str) -> dict[str, int]:
        """The twin's chip ids, keyed as the new scene's chips will be ("<scene path>#<window>")."""
        start = len(twin_path)
        return {new_path + chip["path"][start:]: chip["id"] for chip in self.chips_of.get(twin_path, [])}

    def _serves(self, record: dict, scene: Scene) -> bool:
        try:
            stat = os.stat(record["path"])
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime) != (record["size"], record["mtime"]):
            return False  # changed since: it is cut again in this run
        if record["sidecars"] != json.dumps(self.sidecars.signature(record["path"]), sort_keys=True):
            return False  # it may be cut again in this run
        chips = self.chips_of.get(record["path"], [])
        if len(chips) + len(self.store.skipped_chip_keys(record["path"])) != record["windows"] or not chips:
            return False  # unfinished: a run cut short
        options = json.loads(record["options"])  # the same as this run's: they are part of the candidates' key
        try:  # read through its own sidecars: the same nodata, mask, CRS, bands and stretch as the copy?
            twin = scenes.open_scene(record["path"], bands=tuple(options["bands"]) if options["bands"] else None,
                                     stretch=tuple(options["stretch"]))
        except (OSError, IndexerError):
            return False
        return reading_digest(twin, with_date=False) == reading_digest(scene, with_date=False)

    def find_planned(self, scene: Scene, size: int, options_text: str) -> tuple[str, tuple] | None:
        """A new scene (no twin in the store) against the new scenes planned before it in this run: (the path of
        the one with its bytes, cut with the same options and read the same way, date aside; (sha256, head
        sha256) of those bytes), or None, and then it is planned to be embedded itself.

        Only scenes that read the same way are compared, and a scene's reading includes its geotransform, so
        the tiles of a mosaic, however alike in size, are never read for this; copies are read at most twice
        (first bytes, then whole) at planning."""
        entry = _planned_entry(scene, head=self._new_heads.get(str(scene.path)))
        alike = [other for other in self.planned.get((size, options_text), []) if other["reading"] == entry["reading"]]
        for other in alike:  # first bytes, then whole: each file read at most once for each
            if _same(entry, other, "head", head_sha256) and _same(entry, other, "sha256", file_sha256):
                return other["path"], (entry["sha256"], entry["head"])
        self.planned.setdefault((size, options_text), []).append(entry)
        return None

    def plan_part_done(self, scene: Scene, size: int, options_text: str) -> None:
        """A scene a run cut short left part-done, to be finished in this one: a twin new in this run (its copy,
        cut short before its chips were copied) copies from it once it is whole, as from a new scene."""
        self.planned.setdefault((size, options_text), []).append(_planned_entry(scene, head=None))


def _planned_entry(scene: Scene, *, head: str | None) -> dict:
    """A scene this run embeds, as later twins are matched against it (hashes read when first needed)."""
    return {"path": str(scene.path), "reading": reading_digest(scene, with_date=False), "head": head, "sha256": None}


def _same(one: dict, other: dict, name: str, digest) -> bool:
    mine = _digest(one, name, digest)
    return mine is not None and mine == _digest(other, name, digest)


def _digest(entry: dict, name: str, digest) -> str | None:
    """entry[name], computed once by digest(path); None for a file that cannot be read now (the run says why)."""
    if entry[name] is None:
        try:
            entry[name] = digest(Path(entry["path"]))
        except OSError:
            entry[name] = ""
    return entry[name] or None
