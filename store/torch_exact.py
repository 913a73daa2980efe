"""Exact search in torch on a CUDA device, for machines whose faiss has no GPU support."""
import logging

import numpy as np

log = logging.getLogger(__name__)

QUERY_BATCH = 256


def cuda_device_available() -> bool:
    """True when torch is installed and sees a CUDA device (torch is imported only to ask)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class TorchExactIndex:
    """All vectors as one (N, D) matrix on the device: scores are a matrix product, neighbours a top-k."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, *, device: str = "cuda", dtype: str = "float16"):
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.matrix = torch.as_tensor(np.asarray(vectors, dtype=np.float32)).to(
            self.device, getattr(torch, dtype))  # (N, D)

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int):
        """(scores, ids) like faiss: (Q, k) float32 and int64, ids -1 past the end of the collection."""
        torch = self._torch
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        found = min(k, self.ntotal)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if found == 0:
            return scores, ids
        with torch.inference_mode():
            for start in range(0, len(queries), QUERY_BATCH):
                batch = torch.as_tensor(queries[start:start + QUERY_BATCH]).to(self.device, self.matrix.dtype)
                similarity = batch @ self.matrix.T  # (B, N)
                top_scores, top_rows = torch.topk(similarity.float(), found, dim=1)
                rows = slice(start, start + len(batch))
                scores[rows, :found] = top_scores.cpu().numpy()
                ids[rows, :found] = self.ids[top_rows.cpu().numpy()]
        return scores, ids
