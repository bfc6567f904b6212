"""UV texture sampling: the face mesh's UV layout filled with pixels from the source images.

Texel ``(row, col)`` of a ``T x T`` texture sits at ``uv = ((col + 0.5) / T, (row + 0.5) / T)``
in the layout of :func:`facefleet.geometry.load_geometry` (origin top-left, v down), so row 0
is the top of the face. Image coordinates follow the facefleet contract (pixels, x right, y
down, pixel ``i`` covering ``[i, i + 1)``); sampling is bilinear.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from facefleet.geometry import load_geometry
from facefleet.mesh.sampling import ImagePack, pack_images, sample_bilinear
from facefleet.models import CompileCache

__all__ = ["TextureSampler", "texel_map"]


@lru_cache(maxsize=8)
def texel_map(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the UV layout once per size (CPU, numpy; cached).

    Returns ``tri_id`` (size, size) int32 (-1 where no triangle covers the texel centre) and
    ``bary`` (size, size, 3) float32 barycentric weights of the triangle's three vertices.
    """
    if size < 8:
        raise ValueError(f"texel_map: texture size must be >= 8, got {size}")
    geo = load_geometry()
    uv = geo.uv.astype(np.float64) * size - 0.5  # texel-centre coordinates: col, row
    tri_id = np.full((size, size), -1, np.int32)
    bary = np.zeros((size, size, 3), np.float32)
    eps = 1e-7
    for k, (a, b, c) in enumerate(geo.triangles):
        pa, pb, pc = uv[a], uv[b], uv[c]
        lo = np.floor(np.minimum(np.minimum(pa, pb), pc)).astype(int)
        hi = np.ceil(np.maximum(np.maximum(pa, pb), pc)).astype(int)
        lo, hi = np.clip(lo, 0, size - 1), np.clip(hi, 0, size - 1)
        cols, rows = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        p = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
        v0, v1, v2 = pb - pa, pc - pa, p - pa
        den = v0[0] * v1[1] - v1[0] * v0[1]
        if abs(den) < 1e-12:
            continue
        w1 = (v2[:, 0] * v1[1] - v1[0] * v2[:, 1]) / den
        w2 = (v0[0] * v2[:, 1] - v2[:, 0] * v0[1]) / den
        w0 = 1.0 - w1 - w2
        inside = (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps)
        r, cidx = rows.ravel()[inside], cols.ravel()[inside]
        tri_id[r, cidx] = k
        bary[r, cidx] = np.stack([w0[inside], w1[inside], w2[inside]], 1)
    tri_id.setflags(write=False)
    bary.setflags(write=False)
    return tri_id, bary


class TextureSampler:
    """Sample RGBA UV textures of many faces at once on one device.

    ``sampler(images, landmarks, image_index)`` with ``images`` a list of (3, H, W) uint8 tensors
    (sizes may differ), ``landmarks`` (N, 468, 3) image coordinates and ``image_index`` (N,) the
    image of each face returns (N, 4, T, T) uint8: RGB plus alpha 255 where the texel lies on a
    mesh triangle that faces the camera and inside its image, else 0 (RGB 0 there too).
    ``chunk`` bounds how many faces are sampled together (memory ~ chunk * T^2 * 40 bytes).
    ``compiled``: the gather as ``torch.compile`` code (see :func:`sample_bilinear`; None: its default).
    """

    def __init__(
        self,
        size: int = 512,
        device: str | torch.device = "cpu",
        chunk: int = 32,
        compiled: bool | None = None,
        compile_cache: CompileCache | None = None,
    ) -> None:
        self.size = int(size)
        self.device = torch.device(device)
        self.chunk = max(1, int(chunk))
        self.compiled = compiled
        self.compile_cache: CompileCache = {} if compile_cache is None else compile_cache
        tri_id, bary = texel_map(self.size)
        flat = tri_id.reshape(-1)
        covered = np.nonzero(flat >= 0)[0]
        geo = load_geometry()
        self.texels = torch.tensor(covered, dtype=torch.long, device=self.device)  # (K,)
        self.texel_tri = torch.tensor(flat[covered], dtype=torch.long, device=self.device)  # (K,)
        self.texel_vert = torch.tensor(geo.triangles[flat[covered]], dtype=torch.long, device=self.device)
        self.texel_bary = torch.tensor(bary.reshape(-1, 3)[covered], dtype=torch.float32, device=self.device)
        self.triangles = torch.tensor(geo.triangles, dtype=torch.long, device=self.device)  # (F, 3)
        self.n_vertices = geo.num_vertices  # the textured mesh's (a family's first n_mesh landmarks)

    @property
    def coverage(self) -> Tensor:
        """(T, T) bool: texels covered by the UV layout (device tensor)."""
        m = torch.zeros(self.size * self.size, dtype=torch.bool, device=self.device)
        m[self.texels] = True
        return m.view(self.size, self.size)

    def facing(self, landmarks: Tensor) -> Tensor:
        """(N, 468, >=2) image coordinates -> (N, F) bool: triangle faces the camera.

        Triangles are counter-clockwise seen from the camera with y up, so with the image's y
        down a visible triangle has a negative signed area."""
        xy = landmarks[..., :2].float()
        a, b, c = (xy[:, self.triangles[:, i]] for i in range(3))
        ab, ac = b - a, c - a
        return (ab[..., 0] * ac[..., 1] - ab[..., 1] * ac[..., 0]) < 0

    def __call__(
        self, images: Sequence[Tensor], landmarks: Tensor, image_index: Tensor | Sequence[int]
    ) -> Tensor:
        """(list of (3, H, W) uint8, (N, 468, 3), (N,)) -> (N, 4, T, T) uint8 on the device.

        All faces of all images are sampled together (``chunk`` faces per step), whatever the image
        sizes; one host sync (the index range check)."""
        v = self.n_vertices
        if landmarks.ndim != 3 or landmarks.shape[1] != v or landmarks.shape[2] < 2:
            raise ValueError(f"TextureSampler: expected landmarks (N, {v}, 3), got {tuple(landmarks.shape)}")
        n = int(landmarks.shape[0])
        idx = torch.as_tensor(image_index, dtype=torch.long).reshape(-1).to(self.device)
        if idx.numel() != n:
            raise ValueError(f"TextureSampler: {n} faces but {idx.numel()} image indices")
        t = self.size
        if n == 0:
            return torch.zeros(0, 4, t, t, dtype=torch.uint8, device=self.device)
        lo, hi = torch.aminmax(idx)
        lo_h, hi_h = torch.stack([lo, hi]).tolist()
        if lo_h < 0 or hi_h >= len(images):
            raise ValueError(f"TextureSampler: image_index out of range for {len(images)} images")
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"TextureSampler: image {i} must be (3, H, W), got {tuple(img.shape)}")
        pack = pack_images(images, self.device)
        lm = landmarks.to(self.device, torch.float32)
        out = torch.empty(n, 4, t * t, dtype=torch.uint8, device=self.device)
        for s in range(0, n, self.chunk):
            out[s : s + self.chunk] = self._sample(pack, idx[s : s + self.chunk], lm[s : s + self.chunk])
        return out.view(n, 4, t, t)

    def _sample(self, pack: ImagePack, idx: Tensor, lm: Tensor) -> Tensor:
        """m faces of any images: image index (m,), landmarks (m, 468, 3) -> (m, 4, T*T) uint8."""
        m = lm.shape[0]
        xy = lm[..., :2]
        pos = torch.zeros(m, self.texels.numel(), 2, dtype=torch.float32, device=self.device)
        for j in range(3):
            pos += self.texel_bary[None, :, j, None] * xy[:, self.texel_vert[:, j]]
        w = pack.width[idx].float()[:, None]
        h = pack.height[idx].float()[:, None]
        inside = (pos[..., 0] >= 0) & (pos[..., 0] <= w) & (pos[..., 1] >= 0) & (pos[..., 1] <= h)
        visible = self.facing(lm)[:, self.texel_tri] & inside  # (m, K)
        # (m, 3, K) in [0, 255]
        rgb = sample_bilinear(pack, idx, pos, "border", compiled=self.compiled, cache=self.compile_cache)
        rgb = rgb.round().clamp(0, 255).to(torch.uint8) * visible[:, None]
        res = torch.zeros(m, 4, self.size * self.size, dtype=torch.uint8, device=self.device)
        res[:, :3, self.texels] = rgb
        res[:, 3, self.texels] = visible.to(torch.uint8) * 255
        return res
