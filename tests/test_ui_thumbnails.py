"""The page's cached pictures of a scene chip follow how the chip is read now, not only its path and file."""
import numpy as np

from indexer.plan import ChipOptions
from store import Store


def test_a_chips_thumbnail_follows_the_bands_the_store_reads_it_with(index, embedder, shared_data_dir, tmp_path):
    """A rebuild with other --bands keeps a chip's path (scene#window) and its scene file's time, but not its
    pixels: the page's caches, shared by every session, must not keep the old colours' thumbnail, nor the old
    pixels' patch tokens (Exact mode)."""
    from ui import resources

    scene = shared_data_dir / "landsat" / "1985.tif"  # 4 bands: SWIR1, NIR, red, green
    pictures = []
    for bands in ((3, 2, 1), (1, 2, 3)):
        store_dir = tmp_path / f"store-{''.join(map(str, bands))}"
        index([scene], store_dir, chips=ChipOptions(chip_size=1024, bands=bands))  # one chip: the whole scene
        store = Store.open(store_dir)
        try:
            (item,) = store.images([row[0] for row in store.db.execute("SELECT id FROM images")]).values()
        finally:
            store.close()
        thumbnail = np.asarray(resources.thumbnail(item))
        np.testing.assert_array_equal(thumbnail, np.asarray(resources.shrunk(item, resources.THUMBNAIL_SIZE)))
        pictures.append((item["path"], thumbnail, resources.full_tokens(item, embedder)))
    (first_path, first, first_tokens), (second_path, second, second_tokens) = pictures
    assert not np.allclose(first_tokens, second_tokens)
    assert first_path == second_path  # the same key as far as path and file go
    assert not np.array_equal(first, second)  # red and SWIR1 swapped
    np.testing.assert_array_equal(first[..., ::-1], second)
