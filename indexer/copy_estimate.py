"""The dry run's count of planned files that are copies (same bytes) of embedded or other planned files."""
from collections import Counter
from dataclasses import dataclass
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


def estimate_copies(jobs: list[Job], store: Store, *, budget: int = READ_BUDGET) -> CopyEstimate:
    """Only files sharing their size with an indexed whole file or another planned file are read: their first
    HEAD_BYTES when only planned files share it, then whole where the heads (or an indexed size) still match.
    The run itself embeds such copies once (indexer/copies.py); files that do not decode are not known here."""
    whole = [job for job in jobs if job.scene is None and job.plain_source is None]
    reembedded = {job.image_id for job in whole if job.image_id is not None}
    indexed_sizes = store.whole_file_sizes()
    sizes = Counter(job.size for job in whole)
    estimate = CopyEstimate(copies=sum(1 for job in jobs if job.copy_of is not None or job.copy_key))  # scene copies
    candidates = [job for job in whole if job.size in indexed_sizes or sizes[job.size] > 1]
    heads = {}
    for job in candidates:
        if job.size not in indexed_sizes and job.size > HEAD_BYTES:
            heads[job.path] = _head(job, estimate, budget)
    shared_heads = Counter((job.size, heads.get(job.path)) for job in candidates)
    seen = set()
    for job in candidates:
        if job.path in heads and (heads[job.path] is None or shared_heads[job.size, heads[job.path]] < 2):
            estimate.unchecked += heads[job.path] is None
            continue  # no other file starts the same: not a copy (or not read, past the budget)
        if estimate.bytes_read + job.size > budget:
            estimate.unchecked += 1
            continue
        try:
            sha256 = file_sha256(Path(job.path))
        except OSError:
            continue  # the run reports it
        estimate.bytes_read += job.size
        if sha256 in seen or any(i not in reembedded for i in store.image_ids_with_bytes(sha256)):
            estimate.copies += 1
        seen.add(sha256)
    return estimate


def _head(job: Job, estimate: CopyEstimate, budget: int) -> str | None:
    if estimate.bytes_read + HEAD_BYTES > budget:
        return None
    try:
        head = head_sha256(Path(job.path))
    except OSError:
        return f"unreadable {job.path}"  # a head of its own: the run reports the file
    estimate.bytes_read += min(job.size, HEAD_BYTES)
    return head
