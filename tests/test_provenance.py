"""A store describes how its vectors were made and refuses vectors made another way, unless rebuilt."""
import json
import shutil

import pytest

from helpers import ids_by_path
from indexer import api
from indexer.errors import IndexerError
from store import ProvenanceMismatch


def test_store_records_its_provenance(indexed, store_dir, embedder, open_store):
    provenance = open_store(store_dir).provenance
    assert provenance["model"] == str(embedder.provenance["model"])
    assert provenance["fingerprint"].startswith("sha256:")
    assert (provenance["resolution"], provenance["pooling"], provenance["dim"]) == (224, "cls", 32)
    assert provenance["normalization"]["name"] == "sat493m"
    assert (provenance["patch_size"], provenance["num_register_tokens"]) == (16, 4)


@pytest.mark.parametrize("change, words", [
    ({"resolution": 256}, "resolution"),
    ({"pooling": "mean"}, "pooling"),
    ({"normalization": "imagenet"}, "normalization"),
    ({"other_model": True}, "model"),
])
def test_mismatch_is_refused_and_the_store_left_alone(index, indexed, chips_dir, store_dir, model_dir,
                                                      other_model_dir, load_embedder, embedder, open_store, change,
                                                      words):
    change = dict(change)
    other = load_embedder(other_model_dir if change.pop("other_model", False) else model_dir, **change)

    with pytest.raises(ProvenanceMismatch, match=words) as refused:
        index([chips_dir], store_dir, embedder=other)

    assert "--rebuild" in str(refused.value)
    store = open_store(store_dir)
    assert store.count_images() == 12
    assert (store.provenance["resolution"], store.provenance["pooling"]) == (224, "cls")
    assert store.provenance["fingerprint"] == embedder.provenance["fingerprint"]


def test_rebuild_accepts_and_reembeds(index, indexed, chips_dir, store_dir, model_dir, load_embedder, open_store):
    wider = load_embedder(model_dir, resolution=256)

    summary = index([chips_dir], store_dir, embedder=wider, rebuild=True)

    assert (summary["indexed"], summary["skipped"], summary["removed"]) == (12, 0, 0)
    store = open_store(store_dir)
    assert store.provenance["resolution"] == 256
    image_id = min(ids_by_path(store).values())
    assert store.patch_features(image_id).shape[:2] == (16, 16)
    assert store.index.ntotal == 12
    assert api.search(store, image_id, k=1)["results"][0]["id"] == image_id


def test_rebuild_with_another_dim(index, indexed, chips_dir, store_dir, model_dir, load_embedder, open_store):
    both = load_embedder(model_dir, pooling="cls+mean")
    index([chips_dir], store_dir, embedder=both, rebuild=True)
    store = open_store(store_dir)
    assert store.dim == 64
    image_id = min(ids_by_path(store).values())
    assert store.vector(image_id).shape == (64,)
    assert api.search(store, image_id, k=1)["results"][0]["score"] >= 0.999


def test_a_copy_of_the_same_weights_is_accepted(index, indexed, chips_dir, store_dir, model_dir, load_embedder,
                                                tmp_path):
    copy_dir = shutil.copytree(model_dir, tmp_path / "copy-of-tiny-dinov3-sat493m")
    summary = index([chips_dir], store_dir, embedder=load_embedder(copy_dir))
    assert (summary["indexed"], summary["skipped"]) == (0, 12)


def test_dtype_is_recorded_not_guarded(index, indexed, chips_dir, store_dir, model_dir, load_embedder, open_store):
    summary = index([chips_dir], store_dir, embedder=load_embedder(model_dir, dtype="bfloat16"))
    assert (summary["indexed"], summary["skipped"]) == (0, 12)
    assert open_store(store_dir).provenance["dtype"] == "bfloat16"


def test_load_embedder_refuses_a_model_with_other_weights(indexed, store_dir, other_model_dir, open_store):
    store = open_store(store_dir)
    with pytest.raises(IndexerError, match="does not match"):
        api.load_embedder(store, model=str(other_model_dir), device="cpu", dtype="float32")


def test_load_embedder_uses_the_store_settings(index, chip_paths, tmp_path, model_dir, load_embedder, open_store):
    made = load_embedder(model_dir, resolution=256, pooling="mean", normalization="imagenet")
    index(chip_paths[:2], tmp_path / "store", embedder=made)
    store = open_store(tmp_path / "store")

    loaded = api.load_embedder(store, device="cpu", dtype="float32")

    for key in ("model", "fingerprint", "resolution", "pooling", "normalization", "dim"):
        assert loaded.provenance[key] == made.provenance[key]
    first = api.search(store, chip_paths[1], k=1, embedder=loaded)["results"][0]
    assert first["path"] == str(chip_paths[1])
    assert first["score"] >= 0.999


@pytest.mark.parametrize("change", [{"other_model": True}, {"resolution": 256}, {"pooling": "mean"},
                                    {"normalization": "0.5,0.5,0.5/0.25,0.25,0.25"}])
def test_an_embedder_given_to_search_must_match_the_store(indexed, store_dir, chip_paths, model_dir, other_model_dir,
                                                         load_embedder, open_store, change):
    """api.search(..., embedder=) is the README's own example: an embedder of other weights or settings gave
    vectors of another space, searched without a word (or faiss's bare AssertionError for another width)."""
    change = dict(change)
    other = load_embedder(other_model_dir if change.pop("other_model", False) else model_dir, **change)
    store = open_store(store_dir)

    with pytest.raises(IndexerError, match="this model does not match the store"):
        api.search(store, chip_paths[1], k=3, embedder=other)
    with pytest.raises(IndexerError, match="this model does not match the store"):
        api.search_each(store, [chip_paths[1]], k=3, embedder=other)
    same = load_embedder(model_dir)
    assert api.search(store, chip_paths[1], k=1, embedder=same)["results"][0]["path"] == str(chip_paths[1])


def test_a_normalisation_is_known_by_its_values_not_its_name(index, indexed, chips_dir, store_dir, model_dir,
                                                             load_embedder, open_store):
    """The store's normalisation given as 'm,m,m/s,s,s' is the same setting: not a mismatch."""
    recorded = open_store(store_dir).provenance["normalization"]
    spelled_out = ",".join(str(m) for m in recorded["mean"]) + "/" + ",".join(str(s) for s in recorded["std"])
    (chips_dir / "more").mkdir()
    shutil.copy(next(chips_dir.glob("*.jpg")), chips_dir / "more" / "copy.jpg")

    summary = index([chips_dir], store_dir, embedder=load_embedder(model_dir, normalization=spelled_out))

    assert summary["failed"] == 0 and summary["indexed"] + summary["skipped"] == 13


def test_index_without_a_model_takes_the_stores_own(chips_dir, chip_paths, tmp_path, model_dir, monkeypatch):
    """Not the 7B from the Hub (a 13 GB download, then refused as another model): the store's own, as search and
    rebuild take it."""
    from test_cli import RUN, invoke

    store_dir = tmp_path / "store"
    first = invoke("index", chip_paths[0], "--store", store_dir, "--model", model_dir, *RUN, "--workers", "0",
                   "--no-progress")
    assert first.exit_code == 0, first.output
    loads = []
    from indexer.embedder import DinoV3Embedder

    real = DinoV3Embedder.from_pretrained.__func__
    monkeypatch.setattr(DinoV3Embedder, "from_pretrained",
                        classmethod(lambda cls, model, **kw: loads.append(model) or real(cls, model, **kw)))

    again = invoke("index", chips_dir, "--store", store_dir, *RUN, "--workers", "0", "--no-progress", "--json")

    assert again.exit_code == 0, again.output
    assert loads == [str(model_dir.absolute())]
    assert json.loads(again.stdout)["indexed"] == len(chip_paths) - 1
