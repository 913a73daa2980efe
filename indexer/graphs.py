"""One-image forwards replayed from CUDA graphs: what a query waits for, without a kernel launch per op."""
import logging
import threading

import torch

log = logging.getLogger(__name__)

WARMUPS = 3  # eager forwards on a side stream before capture, as CUDA graph capture requires


class OneImageGraphs:
    """The backbone's forward for one image, captured into a CUDA graph per input shape and replayed.

    The 7B's forward on one 224 px image launches hundreds of small kernels; replayed from a graph it took
    10.3 ms p50 against 23.4 ms eager on an H200 (bench/results/gpu/h200-2026-11-30). Replays share one input
    and one output buffer per shape, hence the lock: the search page serves its sessions from threads. Capture
    is thread-local, so other threads' GPU work (a search, a heatmap) goes on meanwhile. A shape that cannot be
    captured runs eagerly from then on, with one warning.
    """

    def __init__(self, forward):
        self._forward = forward
        self._graphs = {}  # shape -> (graph, static input, static output), or None where capture failed
        self._lock = threading.Lock()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """last_hidden_state for `pixels` (1, 3, H, W) on the model's device and dtype."""
        shape = tuple(pixels.shape)
        with self._lock:
            if shape not in self._graphs:
                self._graphs[shape] = self._capture(pixels)
            captured = self._graphs[shape]
            if captured is not None:
                graph, static, output = captured
                static.copy_(pixels)
                graph.replay()
                return output.clone()
        return self._forward(pixel_values=pixels).last_hidden_state

    def _capture(self, pixels: torch.Tensor):
        static = pixels.clone()
        try:
            side = torch.cuda.Stream(device=pixels.device)
            side.wait_stream(torch.cuda.current_stream(pixels.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUPS):
                    self._forward(pixel_values=static)
            torch.cuda.current_stream(pixels.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                output = self._forward(pixel_values=static).last_hidden_state
        except Exception as error:  # noqa: BLE001 - an uncapturable model still answers, eagerly
            if pixels.is_cuda:
                torch.cuda.synchronize(pixels.device)
            log.warning("the one-image forward at %s could not be captured as a CUDA graph (%s); it runs eagerly",
                        "x".join(map(str, pixels.shape[2:])), str(error).splitlines()[0] if str(error) else error)
            return None
        return graph, static, output
