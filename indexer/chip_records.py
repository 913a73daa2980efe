"""A scene chip's catalogue record: where its window lies on the ground and how its pixels were read."""
from rasterio.transform import Affine

from . import scenes

# The scene's fields each chip's record repeats (besides its footprint, valid share and ground sampling).
SCENE_FIELDS = ("crs", "date", "bands", "band_source", "mask_source", "stretch", "georeferencing")


def chip_record(job, *, valid: float, stretch, gsd: float | None) -> dict:
    """A scene chip's catalogue record (`job`: a plan.Job with its scene and window): its window's place on the
    ground and how its pixels were read."""
    scene = job.scene.as_record()  # once: a deep copy of the dataclass, not one per field
    geo = dict(scenes.chip_geometry(job.scene, job.window), valid_fraction=round(valid, 4),
               **{key: scene[key] for key in SCENE_FIELDS})
    col, row, width, height = job.window  # read_chip gives the whole window, never padded or cut
    # the chip's picture on the ground: from its width and height as fractions (0..1) to the scene's CRS, for
    # the outline of a part of it on a grid turned on the ground (part_geometry)
    grid = Affine(*job.scene.transform) @ Affine.translation(col, row) @ Affine.scale(width, height)
    geo["grid"] = list(grid)[:6]
    geo["stretch_percentiles"] = list(stretch)
    geo["native_gsd"] = scenes.native_gsd(job.scene)
    geo["gsd"] = gsd or geo["native_gsd"]
    return {"path": job.path, "size": job.size, "mtime": job.mtime, "image_id": None, "sha256": None,
            "width": int(width), "height": int(height), "scene": job.scene.path, "window": list(job.window),
            "geo": geo}
