"""Moved files and scenes: indexed content gone from its path and found again, by size and SHA-256, under a new one."""
import json

from store import Store

from .images import file_sha256

# What a scene's reading depends on beyond its bytes (a sidecar .aux.xml or .msk may not have moved with it).
READING_FIELDS = ("crs", "bands", "band_source", "mask_source")


class Moves:
    """The files and scenes whose recorded paths are gone, each to be taken at most once by a new path with the
    same bytes (a folder renamed, a collection copied to another disk and the old copy deleted): the new path
    then keeps their ids, vectors and patch features instead of being embedded again.

    A new path is hashed only when a gone file (or scene cut with the same options) has its size, and only
    content recorded with a hash can be found: plain files always are, scenes once a run has hashed them."""

    def __init__(self, store: Store, *, gone_rows: list[dict], gone_scenes: list[dict], chips_of: dict):
        self.store, self.chips_of = store, chips_of
        self.files, self.scenes = {}, {}
        for row in gone_rows:
            if row["scene"] is None and row["sha256"]:
                self.files.setdefault(row["size"], []).append(row)
        for record in gone_scenes:
            if record.get("sha256"):
                self.scenes.setdefault((record["size"], record["options"]), []).append(record)

    def file(self, path, size: int) -> dict | None:
        """The gone catalogue row with this file's bytes (taken: it moves once), or None."""
        return _take(self.files, size, path)

    def scene(self, path, size: int, options_text: str, *, reading: dict | None, pixels=None) -> dict | None:
        """The gone scene record with this scene's bytes, cut with the same options and, for a georeferenced
        scene (`reading`: its READING_FIELDS now; `pixels()`: the digest of what its windows' pixels depend on,
        such as a nodata value from an .aux.xml left behind, asked only of a scene with a gone twin), read the
        same way as its chips were; taken, or None."""
        def read_alike(record: dict) -> bool:
            if pixels is not None and record.get("pixels") not in (None, pixels()):
                return False
            chips = self.chips_of.get(record["path"], [])
            if reading is None or not chips:
                return True
            geo = json.loads(self.store.image(chips[0]["id"])["geo"] or "{}")
            return all(geo.get(name) == reading[name] for name in READING_FIELDS)

        return _take(self.scenes, (size, options_text), path, also=read_alike)

    def chips(self, old: str, new: str) -> list[dict]:
        """The gone scene's chip rows, keyed as the new path's chips will be."""
        return [dict(chip, path=_renamed(chip["path"], old, new)) for chip in self.chips_of.get(old, [])]

    def skipped_chip_keys(self, old: str, new: str) -> set[str]:
        """The gone scene's windows found too empty, keyed as the new path's chips will be."""
        return {_renamed(key, old, new) for key in self.store.skipped_chip_keys(old)}


def _renamed(chip_key: str, old: str, new: str) -> str:
    return new + chip_key[len(old):]  # "<scene path>#<window>": the new path, the same window


def _take(candidates: dict, key, path, *, also=None) -> dict | None:
    same_size = candidates.get(key)
    if not same_size:
        return None
    try:
        digest = file_sha256(path)
    except OSError:
        return None
    for position, candidate in enumerate(same_size):
        if candidate["sha256"] == digest and (also is None or also(candidate)):
            return same_size.pop(position)
    return None
