"""First-call cost per new batch size of each network (cuDNN plan building), by layout and backend."""

import time

import torch

from facefleet.models import load_model


def t(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


for cudnn in (True, False):
    torch.backends.cudnn.enabled = cudnn
    for name, size in (
        ("face_landmark", 192),
        ("face_detection_short_range", 128),
        ("face_detection_full_range", 192),
    ):
        for cl in (True, False):
            net = load_model(name, "cuda", torch.float16, channels_last=cl)
            net.use_fixed_batches(None)  # each batch size as it comes (what is being measured)
            row = []
            for n in (64, 96, 100, 128):
                x = torch.rand(n, 3, size, size, device="cuda", dtype=torch.float16)
                first = t(lambda net=net, x=x: net(x))
                second = t(lambda net=net, x=x: net(x))
                row.append(f"n{n}: {first:7.1f}/{second:5.1f}")
            print(f"cudnn={cudnn!s:5} {name:28} cl={cl!s:5} first/second ms  " + "  ".join(row), flush=True)
