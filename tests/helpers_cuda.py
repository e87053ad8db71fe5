"""CUDA-graph scaffolding shared by the loss tests (the tests skip without CUDA)."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

#: Marks a test that needs a CUDA device.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def assert_no_host_sync(fn: Callable[[], object]) -> object:
    """Run ``fn`` with CUDA sync debugging set to error: a host synchronization inside raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def capture(fn: Callable[[], torch.Tensor], warmup: int = 2) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Capture ``fn`` in a CUDA graph after ``warmup`` calls on a side stream (as torch requires).

    Returns:
        The graph and the tensor ``fn`` returned during capture: each ``graph.replay()`` rewrites
        it in place.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def replay(graph: torch.cuda.CUDAGraph, out: torch.Tensor) -> float:
    """Replay ``graph``, wait for it and return the scalar ``out`` as a Python float."""
    graph.replay()
    torch.cuda.synchronize()
    return out.item()
