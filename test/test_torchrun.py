"""Distributed training: `torchrun --nproc_per_node=2` of a tiny `fastdp train` on CPU (gloo)."""

import os
import shutil
import subprocess
import sys

import numpy as np

from fastdp_ros.policies import load_policy
from test_dp import make_dataset, obs_of


def torchrun_command() -> list[str]:
    """The venv's torchrun script, else the module it runs (the same launcher)."""
    script = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "torch.distributed.run"]


def test_two_ranks_step_only_rank_zero_writes_and_the_model_loads(tmp_path):
    ds = make_dataset(tmp_path / "ds", images=False)
    out = tmp_path / "model"
    steps = 20
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [*torchrun_command(), "--standalone", "--nproc_per_node=2", "-m", "fastdp_ros.cli.main", "train",
           "--policy", "dp", "--dataset", str(ds), "--out", str(out), "--steps", str(steps), "--batch-size", "8",
           "--warmup-steps", "2", "--val-every", "10", "--ckpt-every", "10", "--image-keys", "", "--down-dims", "16,32",
           "--horizon", "8", "--n-action-steps", "4", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    for rank in (0, 1):  # both processes trained every step
        assert f"rank {rank} of 2: {steps} optimizer steps" in log, log[-3000:]
    # only rank 0 wrote: one save per checkpoint (steps 10 and 20), one log with one row per 50 steps or the end
    assert log.count("saved dp model to") == 2, log[-3000:]
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [r.split(",")[0] for r in rows[1:]] == [str(steps)]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint", "config.json", "model.safetensors", "train_log.csv"]
    chunk = load_policy(out).act(obs_of(1.0, images=False))
    assert chunk.shape == (8, 8) and np.all(np.isfinite(chunk))
