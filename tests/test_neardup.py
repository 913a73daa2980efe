"""Near-copies in a store: the groups against brute force over every pair, copies found, overlaps left out."""
import itertools
import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from indexer import api
from indexer.cli import cli
from indexer.pipeline import ChipOptions
from indexer.refine import windows_overlap


def brute_force_groups(store, threshold: float, *, overlapping: bool = True) -> list[set[int]]:
    ids = [image_id for _, image_id in store.path_ids()]
    vectors = {image_id: store.vector(image_id) for image_id in ids}
    rows = store.images(ids)
    groups = {image_id: {image_id} for image_id in ids}
    for a, b in itertools.combinations(sorted(ids), 2):
        if float(vectors[a] @ vectors[b]) < threshold:
            continue
        if not overlapping and rows[a].get("scene") and rows[a].get("scene") == rows[b].get("scene") \
                and windows_overlap(rows[a]["window"], rows[b]["window"]):
            continue
        merged = groups[a] | groups[b]
        for member in merged:
            groups[member] = merged
    return sorted({frozenset(group) for group in groups.values() if len(group) > 1}, key=min)


def found_groups(answer: dict) -> list[set[int]]:
    return sorted((frozenset(image["id"] for image in group["images"]) for group in answer["groups"]), key=min)


def pairwise_cosines(store) -> np.ndarray:
    ids = [image_id for _, image_id in store.path_ids()]
    vectors = np.stack([store.vector(image_id) for image_id in ids])
    return (vectors @ vectors.T)[np.triu_indices(len(ids), 1)]


def test_groups_are_the_linked_sets_of_every_pair_over_the_threshold(index, chips_dir, chip_paths, store_dir,
                                                                    open_store):
    shutil.copy2(chip_paths[0], chips_dir / "copy.jpg")  # the same bytes twice
    Image.open(chip_paths[1]).save(chips_dir / "re-encoded.jpg", quality=60)
    Image.open(chip_paths[2]).resize((100, 100)).save(chips_dir / "smaller.png")
    index([chips_dir], store_dir)
    store = open_store(store_dir)
    cosines = pairwise_cosines(store)
    group_sizes = set()
    for threshold in (0.99999, *np.quantile(cosines, [0.98, 0.9, 0.6]).tolist()):
        answer = api.near_duplicates(store, threshold=threshold, k=20)
        assert found_groups(answer) == brute_force_groups(store, threshold), threshold
        sizes = [group["size"] for group in answer["groups"]]
        assert sizes == sorted(sizes, reverse=True)  # largest first, as the README says
        group_sizes.add(tuple(sizes))
        assert answer["in_groups"] == sum(group["size"] for group in answer["groups"])
        for group in answer["groups"]:
            assert all(score >= threshold for _, _, score in group["links"])
            assert len(group["links"]) >= group["size"] - 1  # enough links to join them all
    assert any(len(set(sizes)) > 1 for sizes in group_sizes)  # groups of different sizes were there to order
    ids = {path: image_id for path, image_id in store.path_ids()}
    exact = api.near_duplicates(store, threshold=0.99999, k=5)["groups"]
    assert {ids[str(chip_paths[0])], ids[str(chips_dir / "copy.jpg")]} in [{i["id"] for i in g["images"]} for g in exact]


def test_overlapping_chips_of_a_scene_are_linked_only_when_asked(index, shared_data_dir, tmp_path, store_dir,
                                                                 open_store):
    naip = tmp_path / "naip"
    naip.mkdir()
    scene = sorted((shared_data_dir / "naip").glob("*.tif"))[0]
    shutil.copy2(scene, naip / scene.name)
    index([naip], store_dir, chips=ChipOptions(chip_size=256, overlap=128))
    store = open_store(store_dir)
    threshold = float(np.quantile(pairwise_cosines(store), 0.5))
    apart = api.near_duplicates(store, threshold=threshold, k=50)
    together = api.near_duplicates(store, threshold=threshold, k=50, overlapping=True)
    assert found_groups(apart) == brute_force_groups(store, threshold, overlapping=False)
    assert found_groups(together) == brute_force_groups(store, threshold, overlapping=True)

    def overlapping_links(answer):
        windows = {image["id"]: image["window"] for group in answer["groups"] for image in group["images"]}
        return [(a, b) for group in answer["groups"] for a, b, _ in group["links"]
                if windows_overlap(windows[a], windows[b])]

    assert not overlapping_links(apart) and overlapping_links(together)  # the overlaps did link chips here


def test_cli_prints_groups_and_refuses_a_bad_threshold(index, chips_dir, chip_paths, store_dir, tmp_path):
    shutil.copy2(chip_paths[0], chips_dir / "copy.jpg")
    index([chips_dir], store_dir)
    runner = CliRunner()
    as_json = runner.invoke(cli, ["near-duplicates", "--store", str(store_dir), "--threshold", "0.99999", "--json"])
    assert as_json.exit_code == 0, as_json.output
    answer = json.loads(as_json.stdout)
    assert answer["images"] == 13 and answer["groups"][0]["size"] >= 2
    paths = {image["path"] for image in answer["groups"][0]["images"]}
    assert {str(chip_paths[0]), str(chips_dir / "copy.jpg")} <= paths
    text = runner.invoke(cli, ["near-duplicates", "--store", str(store_dir), "--threshold", "0.99999"])
    assert text.exit_code == 0 and "group 1:" in text.output and f"{chips_dir / 'copy.jpg'}" in text.output
    capped = runner.invoke(cli, ["near-duplicates", "--store", str(store_dir), "--threshold", "0.5", "--limit", "0"])
    assert capped.exit_code == 0 and "more groups" in capped.output
    zero = runner.invoke(cli, ["near-duplicates", "--store", str(store_dir), "--threshold", "0"])
    assert zero.exit_code == 2 and "--threshold" in zero.output
    (tmp_path / "nothing").mkdir()
    index([tmp_path / "nothing"], tmp_path / "empty")
    empty = runner.invoke(cli, ["near-duplicates", "--store", str(tmp_path / "empty")])
    assert empty.exit_code == 0 and "holds no images yet" in empty.output
    missing = runner.invoke(cli, ["near-duplicates", "--store", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no lookalike store" in missing.output


def test_threshold_one_finds_every_copy_of_the_same_bytes(index, chips_dir, chip_paths, store_dir, open_store):
    """A copy takes its twin's stored vector: cosine 1, which float32 rounding gives as 0.99999988 for some."""
    for path in chip_paths:
        shutil.copy2(path, chips_dir / f"copy-{path.name}")
    index([chips_dir], store_dir)
    answer = api.near_duplicates(open_store(store_dir), threshold=1.0, k=5)
    assert len(answer["groups"]) == len(chip_paths) and answer["in_groups"] == 2 * len(chip_paths)
    assert all(score == 1.0 for group in answer["groups"] for _, _, score in group["links"])


def test_links_are_scored_by_the_stored_vectors_not_the_index_estimate(index, chips_dir, store_dir, open_store):
    """A compressed index's scores are estimates (over as well as under): the pairs it offers are checked
    against the stored vectors, and only those truly at the threshold are linked, with their true cosine."""
    index([chips_dir], store_dir)
    store = open_store(store_dir)
    threshold = float(np.quantile(pairwise_cosines(store), 0.9))
    search = store.index.search
    store.index.search = lambda vectors, k, **kw: (lambda s, f: (s + 0.015, f))(*search(vectors, k, **kw))
    answer = api.near_duplicates(store, threshold=threshold, k=20)
    assert found_groups(answer) == brute_force_groups(store, threshold)
    for group in answer["groups"]:
        for a, b, score in group["links"]:
            assert score == round(float(store.vector(a) @ store.vector(b)), 6) >= threshold - 1e-6


def test_a_compressed_index_under_estimating_a_copy_still_groups_it(index, chips_dir, chip_paths, store_dir,
                                                                    open_store):
    """A product-quantised index can score exact copies under 0.9 (random-like vectors at a tight budget): every
    pair it returns is checked against the stored vectors, not only those it scores near the threshold."""
    for path in chip_paths:
        shutil.copy2(path, chips_dir / f"copy-{path.name}")
    index([chips_dir], store_dir)
    store = open_store(store_dir)
    search, describe = store.index.search, store.index_description
    store.index.search = lambda vectors, k, **kw: (lambda s, f: (s - 0.15, f))(*search(vectors, k, **kw))
    store.index_description = lambda: dict(describe(), exact=False)
    answer = api.near_duplicates(store, threshold=1.0, k=5)
    assert len(answer["groups"]) == len(chip_paths) and answer["in_groups"] == 2 * len(chip_paths)


def test_text_output_keeps_a_name_with_a_newline_on_one_line(index, chips_dir, chip_paths, store_dir):
    """`failures` and `near-duplicates` print one line per file: a newline or tab in a file name is escaped
    there, as Python writes it (--json keeps the name as it is)."""
    odd = chips_dir / "new\nline\tcopy.jpg"
    shutil.copy2(chip_paths[0], odd)
    broken = chips_dir / "bad\nfile.jpg"
    broken.write_bytes(b"not an image")
    index([chips_dir], store_dir)
    runner = CliRunner()
    duplicates = runner.invoke(cli, ["near-duplicates", "--store", str(store_dir), "--threshold", "0.99999"])
    assert duplicates.exit_code == 0, duplicates.output
    assert f"  id=13       {chips_dir}/new\\nline\\tcopy.jpg" in duplicates.stdout.splitlines()
    failures = runner.invoke(cli, ["failures", "--store", str(store_dir)])
    assert failures.stdout.splitlines() == [f"{chips_dir}/bad\\nfile.jpg: not an image format lookalike reads "
                                            "(JPEG, PNG, TIFF, WebP, BMP, GIF)"]
    listed = json.loads(runner.invoke(cli, ["failures", "--store", str(store_dir), "--json"]).stdout)
    assert [failure["path"] for failure in listed["failures"]] == [str(broken)]
