"""`fastdp export` and `fastdp bench` on a tiny model."""

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastdp_ros
from fastdp_ros.cli.main import main
from test_engines import make_model

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("cli") / "tiny_dp")


def test_export_builds_then_reuses(model, caplog):
    argv = ["export", str(model), "--backend", "onnxruntime", "--threads", "1"]
    with caplog.at_level(logging.INFO, logger="fastdp_ros.cli.export"):
        assert main(argv) == 0
        assert "built in" in caplog.text and "parity: max |engine - eager|" in caplog.text
        caplog.clear()
        assert main(argv) == 0
        assert "reused from the cache" in caplog.text
    assert (model / "engines").is_dir()


def test_bench_writes_json_markdown_and_plot(model, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", str(model), "--backend", "torch,onnxruntime", "--calls", "20", "--warmup", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"torch", "onnxruntime"} and report["baseline"] == "tiny_dp/torch"
    assert report["rows_isolated"] is True  # each row in a fresh process, as the CLI does by default
    assert rows["torch"]["speedup"] == 1.0
    for r in rows.values():
        assert r["error"] is None and r["nfe"] == 4 and r["parameters"] > 0
        assert r["latency_ms"]["count"] == 20
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["replan_hz"] == pytest.approx(1000 / r["latency_ms"]["p99"])
        assert r["peak_rss_mb"] > 0
    assert rows["onnxruntime"]["parity_max_abs_diff"] < 1e-4
    assert report["command"].startswith("fastdp bench ")
    assert report["host"]["fastdp_ros"] == fastdp_ros.__version__  # engines change between versions
    table = (out / "bench.md").read_text()
    assert table.count("| tiny_dp | dp |") == 2 and f"fastdp_ros {fastdp_ros.__version__}" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_load_times_every_row_quiet_and_beside_busy_processes(model, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", str(model), "--backend", "torch", "--calls", "12", "--warmup", "1", "--threads", "1",
                 "--load", "0,1", "--in-process", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["loads"] == [0, 1] and "--load 0,1" in report["command"]
    assert [(r["backend"], r["load"], r["latency_ms"]["count"]) for r in report["rows"]] == [("torch", 0, 12),
                                                                                          ("torch", 1, 12)]
    (entry,) = report["contention"]
    quiet, loaded = report["rows"]
    assert entry["load"] == 1 and entry["quiet_p99_ms"] == quiet["latency_ms"]["p99"]
    assert entry["p99_ratio"] == pytest.approx(loaded["latency_ms"]["p99"] / quiet["latency_ms"]["p99"])
    table = (out / "bench.md").read_text()
    assert "| load |" in table and "| tiny_dp | torch | 1 |" in table  # the load column, the ratio table


def eval_report(path, model, nfe: int, rate: float, mean_return: float, modes: dict | None = None):
    """A `fastdp eval --out` report with the fields the bench reads."""
    path.write_text(json.dumps({"success_rate": rate, "success_ci95": [rate / 2, (1 + rate) / 2], "nfe": nfe,
                                "mean_return": mean_return, "mode_coverage": modes or {},
                                "extra": {"model": str(model)}}))
    return path


def test_bench_records_unavailable_backends_and_eval_results(model, tmp_path):
    report_file = eval_report(tmp_path / "eval.json", model, 4, 0.75, -40.0)
    out = tmp_path / "bench"
    assert main(["bench", str(model), "--backend", "torch,tensorrt", "--calls", "5", "--warmup", "1",
                 "--threads", "1", "--in-process", "--out", str(out), "--eval", str(report_file)]) == 0
    rows = {r["backend"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert rows["torch"]["success_rate"] == 0.75
    assert rows["tensorrt"]["error"] and rows["tensorrt"]["latency_ms"] == {}
    assert "not run:" in (out / "bench.md").read_text()


def test_one_model_benched_with_two_samplers_gets_the_matching_eval_result(model, tmp_path):
    reports = []
    for nfe, rate, ret in ((4, 0.5, -60.0), (2, 0.25, -50.0)):
        reports.append(eval_report(tmp_path / f"eval{nfe}.json", model, nfe, rate, ret, {"0": 3, "1": 2}))
    out = tmp_path / "bench"
    assert main(["bench", str(model), f"{model}#sampler=ddim,steps=2", "--backend", "torch", "--calls", "5",
                 "--warmup", "1", "--threads", "1", "--in-process", "--out", str(out),
                 "--eval", *map(str, reports)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["rows_isolated"] is False and report["command"].endswith(" --in-process --eval " + " ".join(
        map(str, reports)))
    rows = report["rows"]
    assert [(r["name"], r["nfe"], r["success_rate"]) for r in rows] == [
        ("tiny_dp", 4, 0.5), ("tiny_dp (sampler=ddim, steps=2)", 2, 0.25)]
    assert [(r["mean_return"], r["mode_coverage"]) for r in rows] == [(-60.0, {"0": 3, "1": 2}),
                                                                      (-50.0, {"0": 3, "1": 2})]
    # DDIM-2 has the higher return; whether it is also faster at p99 decides the rest of the front
    ddpm, ddim = rows
    assert ddim["pareto_return"] and ddpm["pareto_success"]
    assert ddim["pareto_success"] == (ddim["latency_ms"]["p99"] < ddpm["latency_ms"]["p99"])
    assert ddpm["pareto_return"] == (ddpm["latency_ms"]["p99"] < ddim["latency_ms"]["p99"])
    table = (out / "bench.md").read_text()
    assert "50% (25%-75%)" in table and "0: 3, 1: 2" in table and "Pareto" in table


@pytest.mark.parametrize("argv, message", [
    (["bench", "{model}", "--backend", "torch,trt", "--out", "{tmp}/b"], "unknown backend(s) ['trt']"),
    (["bench", "{model}", "--calls", "0", "--out", "{tmp}/b"], "--calls must be >= 1"),
    (["bench", "{model}#steps", "--out", "{tmp}/b"], "expected key=value"),
    (["export", "{tmp}/missing", "--backend", "onnxruntime"], "does not exist"),
    (["export", "{model}", "--backend", "onnxruntime", "--precision", "fp16"], "TensorRT provider only"),
])
def test_bad_input_is_one_clear_error(model, tmp_path, caplog, argv, message):
    argv = [a.format(model=model, tmp=tmp_path) for a in argv]
    with caplog.at_level(logging.ERROR, logger="fastdp"):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors


@given(st.lists(st.tuples(st.floats(0.1, 100.0), st.floats(0.0, 1.0)), min_size=1, max_size=12))
def test_pareto_front_is_the_set_of_undominated_points(points):
    from fastdp_ros.engines.bench import pareto_front

    front = pareto_front(points)
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b
    assert any(front)  # the cheapest of the best is always on it
    for p, on in zip(points, front):
        assert on == (not any(dominates(q, p) for q in points))
