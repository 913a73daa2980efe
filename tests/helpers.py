"""Small helpers the tests share (fixtures live in conftest.py)."""
import shutil
from pathlib import Path

import numpy as np
import rasterio

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples" / "naip"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
CHIP_COUNT = 12


def copy_chips(target: Path, count: int = CHIP_COUNT, *, offset: int = 0) -> Path:
    """`count` real NAIP chips from the bundled sample, spread over the scenes, copied into `target`; another
    `offset` picks other chips (the same bytes twice would be embedded once)."""
    sample = sorted(SAMPLES_DIR.glob("*.jpg"))
    assert len(sample) >= count, f"the bundled sample {SAMPLES_DIR} is missing"
    target.mkdir(parents=True)
    for path in sample[offset:: max(1, len(sample) // count)][:count]:
        shutil.copy2(path, target / path.name)
    return target


def random_pixels(size=(64, 48), seed=0) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # (H, W, 3)


def ids_by_path(store) -> dict[str, int]:
    return {path: row["id"] for path, row in store.images_by_path().items()}


def all_vectors(store) -> dict[int, np.ndarray]:
    return {image_id: store.vector(image_id) for image_id in ids_by_path(store).values()}


class CountingEmbedder:
    """Wraps an embedder and counts the images it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0
        self.preprocess, self.provenance = inner.preprocess, inner.provenance

    def embed(self, pixels, **kwargs):
        self.images += len(pixels)
        return self.inner.embed(pixels, **kwargs)


def mask_sidecar(scene_path, tmp_path):
    """Write a GDAL .msk beside `scene_path` that masks its left half, without touching the scene's own bytes."""
    work = tmp_path / "mask-work"
    work.mkdir()
    copy = shutil.copy2(scene_path, work / "scene.tif")
    with rasterio.open(copy) as source:
        mask = np.full((source.height, source.width), 255, np.uint8)
    mask[:, : mask.shape[1] // 2] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(copy, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as target:
        target.write_mask(mask)
    shutil.copy2(work / "scene.tif.msk", f"{scene_path}.msk")


def only_unchanging_catalogues_open(monkeypatch, message: str) -> None:
    """SQLite answering `message` to every open of a catalogue but as an unchanging file (immutable=1): what a
    reader meets where it cannot make a WAL catalogue's shared-memory file (a read-only folder, a full disk)."""
    import sqlite3

    from store import catalogue

    connect = sqlite3.connect

    def refusing(target, *args, uri=False, **kwargs):
        if not (uri and "immutable=1" in str(target)):
            raise sqlite3.OperationalError(message)
        return connect(target, *args, uri=uri, **kwargs)

    monkeypatch.setattr(catalogue.sqlite3, "connect", refusing)
