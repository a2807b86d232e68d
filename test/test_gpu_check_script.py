"""scripts/gpu_check.py, the device run's script, dry-run on the CPU with a tiny model so that it
cannot rot between the rare sessions that have a GPU: every section runs and reports."""

import json
import subprocess
import sys
from pathlib import Path

from test_engines import make_model

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_reports_every_section(tmp_path):
    model = make_model(tmp_path / "dp")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--out", str(out),
           "--models", str(model), f"{model}#sampler=ddpm", "--compile-models", "--calls", "3",
           "--slow-calls", "2", "--warmup", "1", "--faiss-sizes", "500", "--faiss-dims", "8",
           "--faiss-queries", "5", "--train-steps", "2", "--train-batch", "4", "--train-image-size", "16",
           "--train-down-dims", "16,32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["torch"]
    rows = {(r["name"], r["backend"]): r for r in report["engines"]["rows"]}
    eager, graph = rows[("dp", "eager CUDA")], rows[("dp", "CUDA graph")]
    assert eager["error"] is None and eager["calls"] == 3 and eager["nfe"] == 4
    assert rows[("dp (sampler=ddpm)", "eager CUDA")]["calls"] == 2  # the slow row's own count
    assert graph["error"] is None and graph["speedup"] > 0
    # a backend that cannot run here is a row that says why, not a crash
    assert "CUDA" in rows[("dp", "TensorRT fp16")]["error"]
    case = report["faiss"]["cases"][0]
    assert case["rows"] == 500 and case["cpu"]["single_query_ms"]["count"] == 5
    runs = report["train"]["runs"]
    assert runs["fp32"]["exit_code"] == 0 and runs["bf16"]["exit_code"] == 0
    assert runs["bf16"]["act_finite"] and runs["bf16"]["act_shape"][-1] == 8
    assert (out / "engines" / "bench.md").is_file() and "## faiss" in (out / "bench.md").read_text()
