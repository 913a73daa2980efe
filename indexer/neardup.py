"""Near-duplicates in a store: images whose vectors are within a cosine threshold of each other, in groups."""
from tqdm import tqdm

from store import Store
from store.store import check_k

from .errors import IndexerError, check_open_store
from .refine import windows_overlap

DEFAULT_THRESHOLD = 0.95
ESTIMATE_MARGIN = 0.02  # how far under the threshold an exact index's score may be and still be checked
ROUNDING = 1e-6  # float32 dot products of equal unit vectors come out at 0.99999988 and the like


def near_duplicates(store: Store, *, threshold: float = DEFAULT_THRESHOLD, k: int = 10, overlapping: bool = False,
                    progress: bool = False) -> dict:
    """Every stored image searched against the store's index for its k nearest; two images whose cosine is at
    least `threshold` are linked, and a group is a set of images joined by links (connected components, so
    a chain of near-copies is one group). Chips of one scene whose windows overlap share pixels and are not
    linked unless `overlapping`. Approximate indexes find what their recall allows; exact ones find every
    pair among each image's k nearest.

    Returns {"threshold", "k", "images" (searched), "in_groups", "groups": [{"size", "images": [{id, path,
    ...}], "links": [[id, id, cosine], ...]}]}, the largest groups first."""
    if not 0 < threshold <= 1:
        raise IndexerError(f"the threshold {threshold} must be above 0 and at most 1 (a cosine similarity)")
    check_open_store(store)
    k = check_k(k)
    links = _links(store, threshold=threshold, k=k, progress=progress)
    rows = store.images({image_id for pair in links for image_id in pair})
    links = {(a, b): score for (a, b), score in links.items()
             if a in rows and b in rows  # not removed meanwhile
             and (overlapping or not _overlap(rows[a], rows[b]))}
    group_of = _components(links)
    members, member_links = {}, {}
    for image_id, group in group_of.items():
        members.setdefault(group, []).append(image_id)
    for (a, b), score in sorted(links.items(), key=lambda link: -link[1]):
        member_links.setdefault(group_of[a], []).append([a, b, round(score, 6)])
    groups = [{"size": len(ids), "images": [rows[image_id] for image_id in sorted(ids)], "links": member_links[group]}
              for group, ids in members.items()]
    groups.sort(key=lambda group: (-group["size"], group["images"][0]["id"]))
    return {"threshold": threshold, "k": k, "images": store.count_images(),
            "in_groups": sum(group["size"] for group in groups), "groups": groups}


def _links(store: Store, *, threshold: float, k: int, progress: bool) -> dict[tuple[int, int], float]:
    """(smaller id, larger id) → their cosine, from the stored vectors, for the pairs at or over threshold among
    each image's k nearest in the index. Checked a batch at a time: only that batch's candidates' vectors are
    read, each pair once; from an exact index only those scored near the threshold, from a compressed one all of
    them (its estimates stray: exact copies came out under 0.9)."""
    index, links, checked = store.index, {}, set()
    floor = threshold - ESTIMATE_MARGIN if store.index_description()["exact"] else float("-inf")
    bar = tqdm(total=index.ntotal, unit="img", desc="searching", disable=not progress)
    for ids, vectors in store.vector_batches(batch_size=1024):
        scores, found = index.search(vectors, k + 1)  # (n, k + 1): the image itself is among them
        candidates = []  # (row of the batch, other id, pair)
        for row, (image_id, image_scores, image_found) in enumerate(zip(ids.tolist(), scores.tolist(),
                                                                        found.tolist())):
            for score, other in zip(image_scores, image_found):
                pair = (min(image_id, other), max(image_id, other))
                if other >= 0 and other != image_id and score >= floor and pair not in checked:
                    checked.add(pair)
                    candidates.append((row, other, pair))
        others = store.vectors({other for _, other, _ in candidates})
        for row, other, pair in candidates:
            if other in others:  # not removed meanwhile
                score = min(1.0, float(vectors[row] @ others[other]))  # unit vectors: 1 within rounding is one
                if score >= threshold - ROUNDING:
                    links[pair] = score
        bar.update(len(ids))
    bar.close()
    return links


def _overlap(one: dict, other: dict) -> bool:
    return bool(one.get("scene") and one.get("scene") == other.get("scene")
                and windows_overlap(one["window"], other["window"]))


def _components(links) -> dict[int, int]:
    """Each linked image → its group's representative: connected components (union-find, path halving)."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in links:
        parent[root(a)] = root(b)
    return {node: root(node) for node in list(parent)}
