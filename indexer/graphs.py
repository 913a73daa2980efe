"""One-image forwards replayed from CUDA graphs: what a query waits for, without a kernel launch per op."""
import logging
import threading

import torch

log = logging.getLogger(__name__)

WARMUPS = 3  # eager forwards on the capture's stream before it, as CUDA graph capture requires
_CAPTURING = threading.Lock()  # CUDA allows one capture at a time in a process, whichever embedder asks
_failed = []  # set once a capture failed for another reason than memory: graphs stay off in this process


class OneImageGraphs:
    """The backbone's forward for one image, captured into a CUDA graph per input shape and replayed.

    The 7B's forward on one 224 px image launches hundreds of small kernels; replayed from a graph it took
    10.3 ms p50 against 23.4 ms eager on an H200 (bench/results/gpu/h200-2026-11-30). Replays share one input
    and one output buffer per shape, hence the lock, held until the replay's result is done on the device: the
    search page serves its sessions from threads. Capture runs on a stream of its own, thread-local, one at a
    time in the process; other threads' GPU work goes on meanwhile. Out of memory while capturing is raised as
    from an eager forward, and a later call tries again; any other failure turns graphs off for the process
    (one warning) and the forward runs eagerly.
    """

    def __init__(self, forward):
        self._forward = forward
        self._graphs = {}  # shape -> (graph, static input, static output)
        self._lock = threading.Lock()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """last_hidden_state for `pixels` (1, 3, H, W) on the model's device and dtype."""
        shape = tuple(pixels.shape)
        with self._lock, torch.cuda.device_of(pixels):  # the model's GPU, whichever is current in this thread
            if shape not in self._graphs and not _failed:
                captured = self._capture(pixels)
                if captured is not None:
                    self._graphs[shape] = captured
            if shape in self._graphs:
                graph, static, output = self._graphs[shape]
                static.copy_(pixels)
                graph.replay()
                result = output.clone()
                torch.cuda.current_stream().synchronize()  # the next caller, on any stream, reuses the buffers
                return result
        return self._forward(pixel_values=pixels).last_hidden_state

    def _capture(self, pixels: torch.Tensor):
        static = pixels.clone()
        with _CAPTURING:
            try:
                stream = torch.cuda.Stream(device=pixels.device)
                stream.wait_stream(torch.cuda.current_stream(pixels.device))
                with torch.cuda.stream(stream):  # restored on any failure, the capture's own exit included
                    for _ in range(WARMUPS):
                        self._forward(pixel_values=static)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                        output = self._forward(pixel_values=static).last_hidden_state
                torch.cuda.current_stream(pixels.device).wait_stream(stream)
            except torch.OutOfMemoryError:
                if pixels.is_cuda:
                    torch.cuda.synchronize(pixels.device)
                raise
            except Exception as error:  # noqa: BLE001 - an uncapturable model still answers, eagerly
                if pixels.is_cuda:
                    torch.cuda.synchronize(pixels.device)
                _failed.append(True)
                log.warning("the one-image forward at %s could not be captured as a CUDA graph (%s); forwards run "
                            "eagerly from now on", "x".join(map(str, pixels.shape[2:])),
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
                return None
        return graph, static, output
