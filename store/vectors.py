"""Encoding of vectors and patch grids as SQLite blobs (little-endian, no pickles)."""
import numpy as np

VECTOR_DTYPE = np.dtype("<f4")
PATCH_DTYPE = np.dtype("<f2")


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


def patches_to_blob(grid: np.ndarray) -> bytes:
    # float16 halves the size; 64-dim PCA features lose nothing visible in a heatmap.
    return np.ascontiguousarray(grid, dtype=PATCH_DTYPE).tobytes()


def blob_to_patches(blob: bytes, grid_h: int, grid_w: int) -> np.ndarray:
    flat = np.frombuffer(blob, dtype=PATCH_DTYPE).astype(np.float32)
    return flat.reshape(grid_h, grid_w, -1)  # (h, w, C)
