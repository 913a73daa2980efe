"""Files beside a scene that change how GDAL reads it (.aux.xml, .msk, world files), and what they changed."""
import hashlib
import json
import os
from pathlib import Path

from .scenes import Scene

# Names GDAL looks for beside a raster: "{name}" is the scene's file name, "{stem}" the name without its suffix.
# .aux.xml can set the nodata value, the CRS and band roles; .msk is a mask; .ovr serves the stretch's decimated
# read; .aux (Erdas), world files and MapInfo .tab tables can georeference a TIFF that is not.
CANDIDATES = ("{name}.aux.xml", "{name}.msk", "{name}.ovr", "{stem}.aux", "{stem}.tfw", "{stem}.tifw",
              "{stem}.tiffw", "{stem}.wld", "{stem}.tab")
# The fields of a Scene its chips' pixels and places depend on, besides its bytes and the chip options.
READING = ("width", "height", "crs", "transform", "bands", "band_source", "mask_source", "nodata", "stretch", "date")
PLACE = ("crs", "transform", "date")  # where and when on the ground; a window's pixels do not depend on them


class Sidecars:
    """Sizes and times of the sidecars of scenes, from one listing of each folder (names matched in any case)."""

    def __init__(self):
        self._listings: dict[Path, dict[str, str]] = {}

    def signature(self, path) -> dict:
        """{candidate pattern: [size, mtime]} for the sidecars present; {} when there are none."""
        path = Path(path)
        names = self._listing(path.parent)
        found = {}
        for pattern in CANDIDATES:
            real = names.get(pattern.format(name=path.name, stem=path.stem).lower())
            if real is None:
                continue
            try:
                stat = os.stat(path.parent / real)
            except OSError:
                continue
            found[pattern] = [stat.st_size, stat.st_mtime]
        return found

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = {name.lower(): name for name in os.listdir(folder)}
            except OSError:
                self._listings[folder] = {}
        return self._listings[folder]


def reading_digest(scene: Scene, *, with_date: bool = True) -> str:
    """sha256 of how the scene reads (READING fields; the date, which may come from the file's name, only
    `with_date`) and of the bytes of its .msk mask, when it has one."""
    return _digests(scene, [name for name in READING if with_date or name != "date"])[0]


def reading_and_pixels_digests(scene: Scene) -> tuple[str, str]:
    """reading_digest(scene), and a sha256 of what the pixels of a window depend on (READING less the CRS,
    transform and date) and of the .msk bytes: a scene whose reading changed but not this second digest only
    lies elsewhere on the ground. The mask is read once for both."""
    return _digests(scene, READING, [name for name in READING if name not in PLACE])


def _digests(scene: Scene, *field_lists) -> tuple:
    record = scene.as_record()
    digests = [hashlib.sha256(json.dumps({name: record[name] for name in names}, sort_keys=True).encode())
               for names in field_lists]
    mask = next((path for path in (Path(f"{scene.path}.msk"), Path(f"{scene.path}.MSK")) if path.is_file()), None)
    if mask is not None:  # GDAL looks for both spellings
        with open(mask, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                for digest in digests:
                    digest.update(block)
    return tuple("sha256:" + digest.hexdigest() for digest in digests)
