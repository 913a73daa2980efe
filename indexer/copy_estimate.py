"""Planned files that are copies (same bytes) of embedded or planned files: the dry run's count, --ray's copies."""
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from store import Store

from .images import HEAD_BYTES, file_sha256, head_sha256
from .plan import Job

READ_BUDGET = 1 << 30  # bytes a dry run reads at most to find copies; the files past it are left unchecked


@dataclass
class CopyEstimate:
    copies: int = 0  # planned files whose bytes an indexed file or an earlier planned file has; chips of scene copies
    unchecked: int = 0  # files that might be copies but were past the read budget
    bytes_read: int = 0


@dataclass
class FileCopies:
    """Planned whole files found to hold the bytes of an indexed image or of a file planned before them."""
    of_indexed: dict = field(default_factory=dict)  # path -> the id of an indexed image with its bytes
    of_planned: dict = field(default_factory=dict)  # path -> the path of the first planned file with its bytes
    sha256: dict = field(default_factory=dict)  # path -> its SHA-256, for the files read whole
    unchecked: int = 0
    bytes_read: int = 0


def estimate_copies(jobs: list[Job], store: Store, *, budget: int = READ_BUDGET) -> CopyEstimate:
    """The dry run's count (find_copies within `budget` bytes), plus the chips of scene copies. The run itself
    embeds such copies once (indexer/copies.py); files that do not decode are not known here."""
    found = find_copies(jobs, store, budget=budget)
    scene_copies = sum(1 for job in jobs if job.copy_of is not None or job.copy_key)
    return CopyEstimate(copies=scene_copies + len(found.of_indexed) + len(found.of_planned),
                        unchecked=found.unchecked, bytes_read=found.bytes_read)


def find_copies(jobs: list[Job], store: Store, *, budget: int | None = None) -> FileCopies:
    """Only files sharing their size with an indexed whole file or another planned file are read: their first
    HEAD_BYTES when only planned files share it, then whole where the heads (or an indexed size) still match;
    at most `budget` bytes in all (None: no limit). An indexed image this run re-embeds (a changed file under
    its old id) is no twin: its vector may be replaced first."""
    whole = [job for job in jobs if job.scene is None and job.plain_source is None]
    reembedded = {job.image_id for job in whole if job.image_id is not None}
    indexed_sizes = store.whole_file_sizes()
    sizes = Counter(job.size for job in whole)
    found = FileCopies()
    candidates = [job for job in whole if job.size in indexed_sizes or sizes[job.size] > 1]
    heads = {}
    for job in candidates:
        if job.size not in indexed_sizes and job.size > HEAD_BYTES:
            heads[job.path] = _head(job, found, budget)
    shared_heads = Counter((job.size, heads.get(job.path)) for job in candidates)
    first = {}  # sha256 -> the first planned path with those bytes
    for job in candidates:
        if job.path in heads and (heads[job.path] is None or shared_heads[job.size, heads[job.path]] < 2):
            found.unchecked += heads[job.path] is None
            continue  # no other file starts the same: not a copy (or not read, past the budget)
        if budget is not None and found.bytes_read + job.size > budget:
            found.unchecked += 1
            continue
        try:
            sha256 = file_sha256(Path(job.path))
        except OSError:
            continue  # the run reports it
        found.bytes_read += job.size
        found.sha256[job.path] = sha256
        twins = [i for i in store.image_ids_with_bytes(sha256) if i not in reembedded]
        if twins:
            found.of_indexed[job.path] = twins[0]
        elif sha256 in first:
            found.of_planned[job.path] = first[sha256]
        else:
            first[sha256] = job.path
    return found


def _head(job: Job, found: FileCopies, budget: int | None) -> str | None:
    if budget is not None and found.bytes_read + HEAD_BYTES > budget:
        return None
    try:
        head = head_sha256(Path(job.path))
    except OSError:
        return f"unreadable {job.path}"  # a head of its own: the run reports the file
    found.bytes_read += min(job.size, HEAD_BYTES)
    return head
