"""Shared fixtures: tiny random DINOv3 models, small image folders, the real data in ../shared/data."""
import os

# Before anything imports huggingface_hub or transformers: tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import SHARED_DATA_DIR, copy_chips, ids_by_path, random_pixels  # noqa: E402


def _save_model(model_dir: Path, **kwargs) -> Path:
    from indexer.random_model import save_random_model

    return save_random_model(model_dir, "tiny", **kwargs)


@pytest.fixture(autouse=True)
def _no_lookalike_env(monkeypatch):
    """The CLI reads these; a developer's shell must not change what a test sees."""
    for name in ("LOOKALIKE_STORE", "LOOKALIKE_MODEL"):
        monkeypatch.delenv(name, raising=False)


# -- models ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Tiny random DINOv3 (4 registers), named like a SAT-493M model."""
    return _save_model(tmp_path_factory.mktemp("m") / "tiny-dinov3-sat493m")


@pytest.fixture(scope="session")
def lvd_model_dir(tmp_path_factory) -> Path:
    """The same shape named like a web-image (LVD-1689M) model."""
    return _save_model(tmp_path_factory.mktemp("m") / "tiny-dinov3-lvd1689m")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory) -> Path:
    """Same shape and naming as model_dir, different weights (seed)."""
    return _save_model(tmp_path_factory.mktemp("m") / "tiny-dinov3-sat493m-seed1", seed=1)


@pytest.fixture(scope="session")
def two_register_model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("m") / "tiny-dinov3-sat493m-r2", num_register_tokens=2)


@pytest.fixture(scope="session")
def load_embedder():
    """Load a model directory through the product's from_pretrained path (float32, CPU)."""
    from indexer.embedder import DinoV3Embedder

    def load(model_dir, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("device", "cpu")
        return DinoV3Embedder.from_pretrained(str(model_dir), **kwargs)

    return load


@pytest.fixture(scope="session")
def embedder(model_dir, load_embedder):
    """Shared, read-only: tests that patch an embedder load their own."""
    return load_embedder(model_dir)


# -- images ------------------------------------------------------------------------------------
@pytest.fixture
def write_image():
    """write_image(path, size=(w, h), seed=0) writes random RGB pixels; the format follows the suffix."""

    def write(path, *, size=(64, 48), seed=0) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_pixels(size, seed)).save(path)
        return path

    return write


@pytest.fixture
def chips_dir(tmp_path) -> Path:
    """A dozen real NAIP chips from the bundled sample, spread over the scenes."""
    return copy_chips(tmp_path / "chips")


@pytest.fixture
def chip_paths(chips_dir) -> list[Path]:
    return sorted(p.absolute() for p in chips_dir.glob("*.jpg"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"the shared test data is not at {SHARED_DATA_DIR}")
    return SHARED_DATA_DIR


@pytest.fixture
def naip_dir(shared_data_dir, tmp_path) -> Path:
    """Three NAIP years of the same place, copied so that tests may change them or put sidecars beside them."""
    target = tmp_path / "naip"
    target.mkdir()
    for path in sorted((shared_data_dir / "naip").glob("*.tif"))[:3]:
        shutil.copy2(path, target / path.name)
    return target


# -- indexing ----------------------------------------------------------------------------------
@pytest.fixture
def index(embedder):
    """index(sources, store_dir, **kw): the pipeline with test-friendly defaults (no workers, no bar)."""
    from indexer.pipeline import index_collection

    def run(sources, store_dir, *, embedder=embedder, **kwargs):
        kwargs.setdefault("workers", 0)
        kwargs.setdefault("progress", False)
        return index_collection([str(s) for s in sources], store_dir, embedder=embedder, **kwargs)

    return run


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def indexed(index, chips_dir, store_dir):
    """The chips indexed once into store_dir; returns the run summary."""
    return index([chips_dir], store_dir)


@pytest.fixture
def open_store():
    """Open stores and close them at the end of the test."""
    from store import Store

    opened = []

    def open_(store_dir):
        store = Store.open(store_dir)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()



# -- the search page ---------------------------------------------------------------------------
UI_CHIP_COUNT = 24  # more than one page of 20 results


@pytest.fixture(scope="session")
def ui_store_dir(tmp_path_factory, embedder) -> Path:
    """24 real chips indexed once with the tiny model; the page tests only read it."""
    from indexer.pipeline import index_collection

    root = tmp_path_factory.mktemp("ui")
    chips = copy_chips(root / "chips", UI_CHIP_COUNT)
    index_collection([str(chips)], root / "store", embedder=embedder, workers=0, progress=False)
    return root / "store"


@pytest.fixture(scope="session")
def ui_ids(ui_store_dir) -> dict[str, int]:
    """Path → image_id of every image in ui_store_dir."""
    from store import Store

    store = Store.open(ui_store_dir)
    try:
        return ids_by_path(store)
    finally:
        store.close()


@pytest.fixture
def page(monkeypatch, ui_store_dir, model_dir):
    """page(**query_params) runs the page on the test store, as `lookalike serve` would start it."""
    monkeypatch.setenv("LOOKALIKE_STORE", str(ui_store_dir))
    monkeypatch.setenv("LOOKALIKE_MODEL", str(model_dir))

    def open_page(**query_params):
        from streamlit.testing.v1 import AppTest

        from page_helpers import APP_PATH, run

        at = AppTest.from_file(str(APP_PATH), default_timeout=60)
        for name, value in query_params.items():
            at.query_params[name] = str(value)
        return run(at)

    return open_page
