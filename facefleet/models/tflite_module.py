"""``TFLiteModule``: a converted TFLite graph as a torch module (fixed batch sizes, channels-last, CUDA
graphs, compiled graphs)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from facefleet.models.tflite_steps import _head_steps

# --------------------------------------------------------------------------------------------- module


class TFLiteModule(nn.Module):
    """A TFLite graph as a torch module.

    ``forward(x)``: ``x`` is ``(B, C, H, W)`` float (the TFLite input ``(1, H, W, C)`` channels-first,
    any batch size, already normalised as the model expects); it is cast to the module's dtype.
    Returns a tuple with one tensor per TFLite output, in the TFLite order and shape with batch ``B``,
    e.g. ``(B, 896, 16)`` or ``(B, 1, 1, 1404)``.
    """

    _dtype_probe: torch.Tensor

    def __init__(
        self,
        steps: list[nn.Module],
        wiring: list[tuple[tuple[int, ...], int, tuple[int, ...]]],
        n_slots: int,
        outputs: list[tuple[int, bool]],
        input_shape: tuple[int, ...],
        output_shapes: list[tuple[int, ...]],
        output_names: list[str],
        source: str,
    ) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self._wiring = wiring  # per step: input slots, output slot, slots to free afterwards
        self._n_slots = n_slots
        self._outputs = outputs  # (slot, is rank 4 -> permute back to NHWC)
        self.input_shape = input_shape  # (C, H, W)
        self.output_shapes = output_shapes  # TFLite shapes, batch dim as -1
        self.output_names = output_names
        self.source = source
        self.register_buffer("_dtype_probe", torch.zeros(()), persistent=False)
        self._head = _head_steps(steps, wiring, [slot for slot, _ in outputs])

    def extra_repr(self) -> str:
        shape = ", ".join(map(str, self.input_shape))
        return f"source={self.source!r}, input=(B, {shape}), outputs={self.output_shapes}"

    channels_last = False  # run convolutions in NHWC memory layout (faster on GPUs); see use_channels_last
    # captured CUDA graphs by input (shape, dtype, device): (graph, static input, static outputs)
    _graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]]
    batch_sizes: tuple[int, ...] = ()  # fixed network batch sizes (see use_fixed_batches); () = any

    def use_fixed_batches(self, sizes: Sequence[int] | None = (128,)) -> TFLiteModule:
        """Run the network only at the given batch sizes: a batch is padded to the smallest size that
        holds it, larger batches go in chunks of the largest (outputs are sliced back to the real
        batch). ``None`` or ``()`` turns this off.

        cuDNN builds execution plans per new input shape, which takes far longer (seconds) than
        running a batch (milliseconds). In a stream of batches whose sizes vary (faces per batch,
        tiles, the last batch of a unit) that cost would recur on every new size; with fixed sizes it is
        paid once, in :meth:`warmup`."""
        self.batch_sizes = tuple(sorted({int(n) for n in sizes or ()}))
        if any(n < 1 for n in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive, got {sizes}")
        return self

    @torch.inference_mode()
    def warmup(self) -> None:
        """Run every fixed batch size once (builds the cuDNN plans, and captures the CUDA graphs when
        they are on, before the first real batch)."""
        p = self._dtype_probe
        for n in self.batch_sizes:
            self(torch.zeros((n, *self.input_shape), dtype=p.dtype, device=p.device))

    cuda_graphs = False  # replay fixed-size CUDA calls as captured graphs (see use_cuda_graphs)

    def use_cuda_graphs(self, enable: bool = True) -> TFLiteModule:
        """On CUDA, run each fixed batch size (:meth:`use_fixed_batches`) as a captured CUDA graph:
        one launch instead of one per operator (~100-200 per network), which is what bounds these
        small networks (their kernels are short; the host's launches are the limit).
        Same kernels, same results as eager. A graph is captured on the first call of each shape
        (:meth:`warmup` does it up front); calls from several threads are ordered on the device.
        Other batch sizes, devices and calls made while a stream is being captured run eagerly."""
        self.cuda_graphs = bool(enable)
        self._graphs = {}
        return self

    compiled = False  # captured graphs run torch.compile's fused kernels (see use_compile)

    def use_compile(self, enable: bool = True) -> TFLiteModule:
        """Capture the CUDA graphs of :meth:`use_cuda_graphs` from ``torch.compile``'s code (TorchInductor,
        Triton kernels) instead of eager operators: each convolution's bias, PReLU and residual add fuse
        into one kernel rather than a pass over memory each, which shortens the networks' GPU time
        (figures in docs/benchmarks.md). Outputs differ from eager by fp16 rounding of the fused
        operations. The compilation happens at the first capture, in :meth:`warmup` (tens of seconds on
        a cold machine, less once torch's on-disk cache holds the code); if it fails the graphs capture
        eager code, with a warning. Only the graph path uses it: other calls and devices run
        eagerly."""
        self.compiled = bool(enable)
        self._graphs = {}
        return self

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        # .to() / .half() / .cuda() replace the weights: captured graphs would read the old ones
        self._graphs = {}
        out = super()._apply(*args, **kwargs)
        for i in self._head:  # the output heads stay in float32 (see _head_steps)
            self.steps[i].float()
        return out

    def use_channels_last(self, enable: bool = True) -> TFLiteModule:
        """Keep weights and activations in channels-last memory (same results, faster cuDNN kernels)."""
        self._graphs = {}  # the weights are replaced: captured graphs would read the old ones
        self.channels_last = bool(enable)
        fmt = torch.channels_last if enable else torch.contiguous_format
        for m in self.modules():
            for _name, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if p is not None and p.dim() == 4:  # clone: canonical strides (see _frozen)
                    p.data = p.data.clone(memory_format=fmt)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{Path(self.source).name}: expected input (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != self._dtype_probe.dtype:
            x = x.to(self._dtype_probe.dtype)
        n = int(x.shape[0])
        if not self.batch_sizes or n in self.batch_sizes:
            return self._forward(x)
        top = self.batch_sizes[-1]
        if n > top:  # chunks of the largest size, the last one padded
            parts = [self(x[s : s + top]) for s in range(0, n, top)]
            return tuple(torch.cat(ys) for ys in zip(*parts, strict=True))
        size = next(b for b in self.batch_sizes if b >= n)
        x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        return tuple(y[:n] for y in self._forward(x))

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._replay(x) if self._graphable(x) else self._eager(x)

    def _graphable(self, x: torch.Tensor) -> bool:
        return (
            self.cuda_graphs
            and x.is_cuda
            and int(x.shape[0]) in self.batch_sizes
            and not torch.cuda.is_current_stream_capturing()
        )

    def _replay(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (tuple(x.shape), x.dtype, x.device)
        shared = _GraphDevice.of(x.device)
        with shared.lock:
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._graphs[key] = self._capture(x, shared.pool)
                except RuntimeError as exc:  # a driver or build that cannot capture: run eagerly
                    self.cuda_graphs = False
                    warnings.warn(
                        f"{Path(self.source).name}: CUDA graph capture failed ({exc}); running eagerly",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return self._eager(x)
            graph, static_in, static_out = entry
            stream = torch.cuda.current_stream(x.device)
            if shared.done is not None:  # a replay queued by another thread/stream is over
                stream.wait_event(shared.done)
            static_in.copy_(x)
            graph.replay()
            out = tuple(o.clone() for o in static_out)  # later replays overwrite static_out
            done = torch.cuda.Event()
            done.record(stream)
            shared.done = done
        return out

    def _capture(self, x: torch.Tensor, pool: Any) -> tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]:
        static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        body: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = self._eager
        with torch.cuda.stream(side):  # a run first: cuDNN plans, workspaces and compiled code exist
            if self.compiled:
                body = self._compiled_body(static_in)
            body(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: decoder threads of the engine may use the device while this thread captures
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_out = body(static_in)
        return graph, static_in, static_out

    def _compiled_body(self, x: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        """``torch.compile`` of :meth:`_eager` for the fixed shape of ``x``, compiled now (a first call)
        so that capturing it records kernels only; :meth:`_eager` when that fails (no Triton, an
        unsupported build), with a warning."""
        import torch._dynamo

        # every network (and batch size, dtype) is one more compiled entry of the same code object,
        # TFLiteModule._eager: past torch's default of 8 per code object, further modules would silently
        # run uncompiled (a process benchmarking several precisions holds more than 8). The limit is
        # raised for this compilation only (entries are added only here: the graph replays the code
        # later, and the capture's call finds this entry), not for the process
        cfg = torch._dynamo.config
        try:
            fn = torch.compile(self._eager, dynamic=False)
            with cfg.patch(cache_size_limit=max(int(cfg.cache_size_limit), 64)):
                fn(x)
            return fn
        except Exception as exc:  # any compiler failure: run the eager code instead
            self.compiled = False
            warnings.warn(
                f"{Path(self.source).name}: torch.compile failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); capturing eager code",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._eager

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        vals: list[torch.Tensor | None] = [None] * self._n_slots
        vals[0] = x
        for k, (step, (ins, out, free)) in enumerate(zip(self.steps, self._wiring, strict=True)):
            args = [vals[i] for i in ins]
            if k in self._head:
                args = [a.float() if a is not None and a.is_floating_point() else a for a in args]
            vals[out] = step(*args)
            for i in free:
                vals[i] = None
        results = []
        for slot, rank4 in self._outputs:
            y = vals[slot]
            assert y is not None
            results.append(y.permute(0, 2, 3, 1).contiguous() if rank4 else y)
        return tuple(results)


class _GraphDevice:
    """The CUDA-graph state shared by every network on one device: one memory pool (the graphs'
    intermediate buffers may overlap), so replays must not overlap either: one lock, and the event
    after the last replay's outputs were copied out, which the next replay's stream waits for."""

    _all: ClassVar[dict[torch.device, _GraphDevice]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.lock = threading.Lock()
        self.done: Any = None

    @classmethod
    def of(cls, device: torch.device) -> _GraphDevice:
        with cls._guard:
            if device not in cls._all:
                cls._all[device] = cls()
            return cls._all[device]
