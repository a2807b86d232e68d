"""fastdp_ros.hardware: thread defaults, passive waiting, bf16 detection and the fp32 fall-back;
bench's competing load; the one-line errors of the options that use them."""

import logging
import multiprocessing

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastdp_ros import hardware
from fastdp_ros.cli.main import main
from fastdp_ros.engines.bench import BenchRow, competing_load, contention_summary
from fastdp_ros.errors import ConfigError


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@given(st.integers(1, 512))
def test_inference_threads_leave_half_the_cpus_free(cpus):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hardware, "usable_cpus", lambda: cpus)
        n = hardware.inference_threads()
        assert 1 <= n <= 4
        assert n <= max(1, cpus // 2)
        assert n == min(4, max(1, cpus // 2))
        assert hardware.training_threads() == cpus


def test_usable_cpus_is_the_affinity_mask():
    assert 1 <= hardware.usable_cpus() <= (multiprocessing.cpu_count() or 1)


def test_configure_threads_sets_torch_and_returns_the_count(restore_threads, monkeypatch):
    monkeypatch.setattr(hardware, "usable_cpus", lambda: 6)
    assert hardware.configure_threads(None) == 3 == torch.get_num_threads()
    assert hardware.configure_threads(None, role="training") == 6 == torch.get_num_threads()
    assert hardware.configure_threads(1) == 1 == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_configure_threads_refuses_bad_counts(bad, restore_threads):
    with pytest.raises(ConfigError, match="--threads must be an integer >= 1"):
        hardware.configure_threads(bad)


def test_passive_waiting_is_a_default_not_an_override(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    hardware.prefer_passive_waiting()
    assert hardware.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    hardware.prefer_passive_waiting()
    assert hardware.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_importing_the_package_asks_for_passive_waiting_before_torch(tmp_path):
    import subprocess
    import sys

    code = ("import os; os.environ.pop('OMP_WAIT_POLICY', None); import fastdp_ros, sys; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in hardware.os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n")
    assert {"avx2", "avx512_bf16", "amx_tile"} <= hardware.cpu_flags(str(info))
    assert hardware.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags, hardware_name", [
    ({"avx2", "amx_bf16", "avx512_bf16"}, "AMX"),
    ({"avx2", "avx512_bf16"}, "AVX512-BF16"),
    ({"avx2", "avx512f"}, None),
    (set(), None),
])
def test_bf16_hardware_from_cpu_flags(flags, hardware_name):
    assert hardware.bf16_hardware("cpu", flags) == hardware_name


def test_bf16_without_hardware_falls_back_to_fp32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="fastdp_ros.hardware"):
        assert hardware.resolve_precision("bf16", "cpu", flags={"avx2"}) == "fp32"
    assert "no bfloat16 hardware" in caplog.text and "fp32" in caplog.text
    assert hardware.resolve_precision("bf16", "cpu", flags={"avx512_bf16"}) == "bf16"
    assert hardware.resolve_precision("fp32", "cpu", flags={"avx512_bf16"}) == "fp32"


def test_train_records_the_precision_it_used(tmp_path, monkeypatch, caplog, restore_threads):
    """--precision bf16 on a CPU without bf16 hardware trains in fp32, says so, and the model's
    provenance records fp32."""
    import json

    monkeypatch.setattr(hardware, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2"})
    data = tmp_path / "push"
    assert main(["collect", "--task", "reach", "--episodes", "2", "--out", str(data), "--no-images"]) == 0
    out = tmp_path / "dp"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--policy", "dp", "--dataset", str(data), "--out", str(out), "--steps", "2",
                     "--batch-size", "2", "--image-keys", "", "--lowdim-keys", "joint_pos,gripper,object_state",
                     "--down-dims", "8,16", "--precision", "bf16", "--threads", "1"]) == 0
    assert "no bfloat16 hardware" in caplog.text
    assert "warm-up shortened from 500 to 1 steps" in caplog.text
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    assert provenance["train_settings"]["precision"] == "fp32"
    log_rows = (out / "train_log.csv").read_text().splitlines()
    assert float(log_rows[-1].split(",")[2]) > 0  # the last step's learning rate, not the next one's


def test_competing_load_runs_and_stops_busy_processes():
    before = set(multiprocessing.active_children())
    with competing_load(2):
        busy = [p for p in multiprocessing.active_children() if p not in before]
        assert len(busy) == 2 and all(p.is_alive() for p in busy)
    assert not any(p.is_alive() for p in busy)
    with pytest.raises(ConfigError, match="load"):
        with competing_load(-1):
            pass


def test_contention_summary_compares_each_loaded_row_with_its_quiet_one():
    def row(name, backend, load, p99, error=None):
        return BenchRow(model=name, name=name, backend=backend, load=load, latency_ms={"p99": p99}, error=error)

    rows = [row("a", "torch", 0, 10.0), row("a", "onnxruntime", 0, 4.0), row("a", "torch", 2, 25.0),
            row("a", "onnxruntime", 2, 6.0), row("b", "torch", 2, 9.0), row("a", "tensorrt", 2, 1.0, error="no GPU")]
    summary = contention_summary(rows)
    assert [(c["name"], c["backend"], c["p99_ratio"]) for c in summary] == [("a", "torch", 2.5),
                                                                            ("a", "onnxruntime", 1.5)]


def test_bench_refuses_a_negative_load(capsys):
    assert main(["bench", "models/push_onedp", "--load", "0,-1", "--out", "/nonexistent"]) == 2


def test_train_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 64)", "(default: 0.0001)", "(default: 500)", "--horizon HORIZON actions predicted per "
                    "chunk (default: 16)"):
        assert default in text


def test_threads_on_every_command_that_computes(capsys):
    for command in ("eval", "run", "bench", "collect", "train", "distill", "index", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--threads" in capsys.readouterr().out, command


def test_fastdp_without_torch_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert main(["eval", "models/push_onedp"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch is not installed" in err and "requirements-torch-cpu.txt" in err and len(err.splitlines()) == 1
