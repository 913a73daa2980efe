"""Files whose bytes are already embedded, in the store or earlier in the run: they skip the model."""
from collections import deque

from store import Store


class Copies:
    """Tells the embedding loop which decoded whole files are byte-for-byte copies of an image with a vector,
    so they take its vector and patch features (StoreWriter.copied) instead of a forward pass.

    A copy is only ever sent after its twin's write, or of a twin the store keeps all run: images this run
    re-embeds (a changed file under its old id) are not taken as twins from the store, since their old
    vector may be replaced before the copy is written."""

    def __init__(self, store: Store, *, reembedded_ids):
        self._lookup = store.bytes_lookup()
        self._excluded = {int(image_id) for image_id in reembedded_ids if image_id is not None}
        self._unwritten = deque()  # (writer items queued when sent, the SHA-256s sent for embedding)
        self._unwritten_bytes = {}  # SHA-256 -> how many entries of _unwritten hold it

    def split(self, records: list[dict], pixels):
        """(records to embed, their pixels, copies of records embedded before or earlier in this batch)."""
        keep, copies, batch = [], [], set()
        for position, record in enumerate(records):
            sha256 = _whole_file_bytes(record)
            if sha256 and (sha256 in batch or self._has(sha256)):
                copies.append(record)
            else:
                keep.append(position)
                if sha256:
                    batch.add(sha256)
        if copies:
            records = [records[position] for position in keep]
            pixels = pixels[keep] if keep else None
        return records, pixels, copies

    def sent(self, records: list[dict], *, written_after: int) -> None:
        """`records` went to the writer: their bytes are embedded once it has done `written_after` items."""
        digests = {_whole_file_bytes(record) for record in records} - {None}
        if digests:
            self._unwritten.append((written_after, digests))
            for sha256 in digests:
                self._unwritten_bytes[sha256] = self._unwritten_bytes.get(sha256, 0) + 1

    def forget_written(self, done: int) -> None:
        """Drop what the writer has written (`done` items): the store answers for those from now on."""
        while self._unwritten and self._unwritten[0][0] <= done:
            for sha256 in self._unwritten.popleft()[1]:
                self._unwritten_bytes[sha256] -= 1
                if not self._unwritten_bytes[sha256]:
                    del self._unwritten_bytes[sha256]

    def close(self) -> None:
        self._lookup.close()

    def _has(self, sha256: str) -> bool:
        # In flight first: once dropped from there its write is committed, so the store's answer covers it.
        return sha256 in self._unwritten_bytes or any(
            image_id not in self._excluded for image_id in self._lookup.image_ids(sha256))


def _whole_file_bytes(record: dict) -> str | None:
    """The SHA-256 of a whole file's record; None for a chip (its vector is of one window of its scene)."""
    return record.get("sha256") if record.get("scene") is None else None
