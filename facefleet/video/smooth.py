"""The One Euro filter (Casiez, Roussel and Vogel, CHI 2012), vectorised in numpy, for landmark tracks.

A first-order low-pass filter whose cutoff frequency rises with the signal's speed: still signals are
smoothed hard (``min_cutoff``), fast ones followed with little lag (``beta``). For a value ``x`` at time
``t`` seconds, with ``dt`` since the previous value and ``alpha(fc) = 1 / (1 + 1 / (2 pi fc dt))``:

    dx      = (x - x_hat_prev) / dt
    dx_hat  = dx_hat_prev + alpha(d_cutoff) * (dx - dx_hat_prev)
    fc      = min_cutoff + beta * |dx_hat| / scale
    x_hat   = x_hat_prev + alpha(fc) * (x - x_hat_prev)

every element of ``x`` with its own cutoff. ``scale`` (facefleet: the face's size in pixels) normalises the
speed, so ``beta`` is in face sizes per second and a face filmed at twice the resolution (coordinates and
scale doubled) is filtered exactly as the smaller one (outputs doubled).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["OneEuroFilter", "filter_many", "smoothing_factor"]


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """Exponential smoothing factor ``alpha`` in (0, 1] of a first-order low-pass filter of ``cutoff``
    Hz sampled every ``dt`` seconds (elementwise over ``cutoff``)."""
    r = 2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt
    return r / (r + 1.0)


class OneEuroFilter:
    """The state of one filtered signal (e.g. one face track's ``(V, 3)`` landmarks), any array shape.

    >>> f = OneEuroFilter(min_cutoff=1.0, beta=0.5)
    >>> f(np.zeros(3), t=0.0, scale=100.0)
    array([0., 0., 0.])

    Args:
        min_cutoff: cutoff frequency (Hz) of a still signal; lower: steadier, more lag.
        beta: cutoff increase per unit of normalised speed (``|dx/dt| / scale``, e.g. face sizes per
            second); higher: less lag on fast motion.
        d_cutoff: cutoff frequency (Hz) of the speed estimate.

    The first value (and the first after :meth:`reset`) passes unchanged. Internal state is float64;
    outputs have the input's floating dtype (float64 for integer input).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if not min_cutoff > 0 or not d_cutoff > 0:
            raise ValueError(f"OneEuroFilter: cutoffs must be > 0, got {min_cutoff=} {d_cutoff=}")
        if not beta >= 0:
            raise ValueError(f"OneEuroFilter: beta must be >= 0, got {beta}")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self._x: np.ndarray | None = None  # previous output
        self._dx: np.ndarray | None = None  # previous filtered speed (units per second)
        self._t = 0.0

    def reset(self) -> None:
        """Forget the signal: the next value passes unchanged (a new track, or after a scene cut)."""
        self._x = self._dx = None

    @property
    def started(self) -> bool:
        """Whether a value has been filtered since construction or :meth:`reset`."""
        return self._x is not None

    def __call__(self, x: ArrayLike, t: float, scale: ArrayLike = 1.0) -> np.ndarray:
        """Filter ``x`` (any shape, the same at every call) observed at ``t`` seconds.

        ``scale``: positive, broadcastable to ``x`` (a scalar, or e.g. ``(N, 1, 1)`` for ``N`` faces'
        ``(N, V, 3)`` landmarks filtered as one signal). ``t`` must increase from call to call.
        """
        a = np.asarray(x)
        out_dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)
        v = a.astype(np.float64)
        if self._x is None or self._dx is None:
            self._x, self._dx, self._t = v.copy(), np.zeros_like(v), float(t)
            return v.astype(out_dtype)
        if v.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter: got shape {v.shape}, the signal has shape {self._x.shape}")
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"OneEuroFilter: time must increase (t={t}, previous {self._t})")
        s = np.asarray(scale, dtype=np.float64)
        if np.any(s <= 0):
            raise ValueError("OneEuroFilter: scale must be > 0")
        dx = (v - self._x) / dt
        dx_hat = self._dx + smoothing_factor(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(dx_hat) / s
        x_hat = self._x + smoothing_factor(cutoff, dt) * (v - self._x)
        self._x, self._dx, self._t = x_hat, dx_hat, float(t)
        return x_hat.astype(out_dtype)


def filter_many(filters: list[OneEuroFilter], x: np.ndarray, t: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``filters[i](x[i], t[i], scale[i])`` for every ``i`` in a few array operations over all of them (the
    same float64 arithmetic, so the same values as one call per filter).

    ``x``: ``(N, ...)`` floating (one signal per filter, each of the shape its filter has seen);
    ``t``: ``(N,)`` seconds; ``scale``: ``(N,)`` positive. Filters may share nothing but their
    ``d_cutoff``-independent settings: each keeps its own ``min_cutoff``, ``beta`` and ``d_cutoff``.
    Returns ``(N, ...)`` of ``x``'s dtype; each filter's state is updated as its own call would.
    """
    n = len(filters)
    a = np.asarray(x)
    if a.shape[0] != n or len(t) != n or len(scale) != n:
        raise ValueError(
            f"filter_many: {n} filters, {a.shape[0]} signals, {len(t)} times, {len(scale)} scales"
        )
    out = np.empty(a.shape, a.dtype if a.dtype.kind == "f" else np.float64)
    warm = [i for i, f in enumerate(filters) if f.started and f._x is not None and f._x.shape == a.shape[1:]]
    cold = sorted(set(range(n)) - set(warm))
    for i in cold:  # first values (or a shape change, which raises as one call does)
        out[i] = filters[i](a[i], float(t[i]), float(scale[i]))
    if not warm:
        return out
    fs = [filters[i] for i in warm]
    ts = np.asarray([float(t[i]) for i in warm], dtype=np.float64)
    dt = ts - np.asarray([f._t for f in fs], dtype=np.float64)
    bad = np.flatnonzero(~(dt > 0))
    if len(bad):
        f = fs[int(bad[0])]
        raise ValueError(f"OneEuroFilter: time must increase (t={ts[bad[0]]}, previous {f._t})")
    s = np.asarray([float(scale[i]) for i in warm], dtype=np.float64)
    if np.any(s <= 0):
        raise ValueError("OneEuroFilter: scale must be > 0")
    shape = (len(fs),) + (1,) * (a.ndim - 1)
    dtb, sb = dt.reshape(shape), s.reshape(shape)
    v = a[warm].astype(np.float64)
    px = np.stack([f._x for f in fs])  # type: ignore[misc]
    pdx = np.stack([f._dx for f in fs])  # type: ignore[misc]
    dcut = np.asarray([f.d_cutoff for f in fs], dtype=np.float64).reshape(shape)
    mins = np.asarray([f.min_cutoff for f in fs], dtype=np.float64).reshape(shape)
    betas = np.asarray([f.beta for f in fs], dtype=np.float64).reshape(shape)
    dx = (v - px) / dtb
    dx_hat = pdx + _alpha(dcut, dtb) * (dx - pdx)
    cutoff = mins + betas * np.abs(dx_hat) / sb
    x_hat = px + _alpha(cutoff, dtb) * (v - px)
    for k, f in enumerate(fs):
        f._x, f._dx, f._t = x_hat[k], dx_hat[k], float(ts[k])
    out[warm] = x_hat
    return out


def _alpha(cutoff: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """:func:`smoothing_factor` with ``dt`` an array broadcast against ``cutoff``."""
    r = 2.0 * math.pi * cutoff * dt
    return r / (r + 1.0)
