"""Latency of the building blocks, eager torch vs onnxruntime (batch 1). Not a pass/fail test.

Skipped unless FASTDP_BENCH=1:

    FASTDP_BENCH=1 .venv/bin/python -m pytest -q -s test/test_nn_bench.py

Prints one line per piece: median milliseconds over repeated calls after a warm-up, eager
with torch's default and with 1 intra-op thread, and onnxruntime (CPU provider) with its
default and with 1 intra-op thread. Compare with the reference table in DESIGN.md; timings on a shared machine are
only as quiet as the machine.
"""

import io
import os
import statistics
import time
import warnings

import pytest
import torch

from fastdp_ros.diffusion import DDIMSampler, FixedStepSampler
from fastdp_ros.nn import MLP, ConditionalUnet1D, MultiImageObsEncoder

pytestmark = pytest.mark.skipif(os.environ.get("FASTDP_BENCH") != "1",
                                reason="latency benchmark: set FASTDP_BENCH=1")


def _median_ms(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _bench(name, module, args, names, reps=50):
    ort = pytest.importorskip("onnxruntime")
    module.eval()
    default_threads = torch.get_num_threads()
    with torch.inference_mode():
        eager = _median_ms(lambda: module(*args), reps)
        torch.set_num_threads(1)
        try:
            eager1 = _median_ms(lambda: module(*args), reps)
        finally:
            torch.set_num_threads(default_threads)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=17, input_names=names)
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    sess1 = ort.InferenceSession(f.getvalue(), one, providers=["CPUExecutionProvider"])
    feed = {n: a.numpy() for n, a in zip(names, args)}
    onnx_ms = _median_ms(lambda: sess.run(None, feed), reps)
    onnx1 = _median_ms(lambda: sess1.run(None, feed), reps)
    print(f"\n{name:<50} eager {eager:8.3f} | eager 1 thr {eager1:8.3f} | "
          f"onnxruntime {onnx_ms:8.3f} | ort 1 thr {onnx1:8.3f}  (ms)")
    return eager, onnx_ms


class _EncoderFlat(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, img, q):
        return self.enc({"img": img, "q": q})


def test_bench_unet_small():
    torch.manual_seed(0)
    cond_dim = 2 * (2 * 64 + 16)
    net = ConditionalUnet1D(8, cond_dim, down_dims=(64, 128, 256))
    args = (torch.randn(1, 16, 8), torch.tensor([10.0]), torch.randn(1, cond_dim))
    _bench("ConditionalUnet1D (64,128,256) T=16 Da=8, 1 step", net, args,
           ["sample", "timestep", "global_cond"])


def test_bench_unet_large():
    torch.manual_seed(0)
    cond_dim = 2 * (2 * 64 + 16)
    net = ConditionalUnet1D(8, cond_dim, down_dims=(256, 512, 1024))
    args = (torch.randn(1, 16, 8), torch.tensor([10.0]), torch.randn(1, cond_dim))
    _bench("ConditionalUnet1D (256,512,1024) T=16 Da=8, 1 step", net, args,
           ["sample", "timestep", "global_cond"], reps=20)


def test_bench_ddim10_loop():
    torch.manual_seed(0)
    cond_dim = 2 * (2 * 64 + 16)
    net = ConditionalUnet1D(8, cond_dim, down_dims=(64, 128, 256))
    loop = FixedStepSampler(net, DDIMSampler(100, 10))
    _bench("DDIM-10 loop, UNet (64,128,256)", loop,
           (torch.randn(1, cond_dim), torch.randn(1, 16, 8)), ["cond", "noise"], reps=20)


@pytest.mark.parametrize("backbone,kw", [("small_cnn", {}), ("resnet18", {})])
def test_bench_encoder(backbone, kw):
    torch.manual_seed(0)
    enc = MultiImageObsEncoder(["img"], (3, 96, 96), {"q": 8}, backbone=backbone,
                               backbone_kwargs=kw)
    args = (torch.rand(1, 3, 96, 96) * 2 - 1, torch.randn(1, 8))
    _bench(f"encoder {backbone} + spatial softmax, 96x96", _EncoderFlat(enc), args, ["img", "q"])


def test_bench_mlp():
    net = MLP(256, [256, 256], 256)
    _bench("MLP 3 layers x 256", net, (torch.randn(1, 256),), ["x"], reps=500)
