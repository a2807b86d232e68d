"""bench.json, bench.md and bench.png from a `run_bench` report."""

from __future__ import annotations

import json
from pathlib import Path

from fastdp_ros.errors import ConfigError


def _fmt(value, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def evaluation_cells(row: dict) -> list[str]:
    """success with its 95% interval, mean return, Pareto marks (S: success, R: return)."""
    rate, ci = row.get("success_rate"), row.get("success_ci95")
    success = _fmt(rate, ".0%") + (f" ({ci[0]:.0%}-{ci[1]:.0%})" if rate is not None and ci else "")
    marks = "".join(m for m, on in (("S", row.get("pareto_success")), ("R", row.get("pareto_return"))) if on)
    return [success, _fmt(row.get("mean_return"), ".1f"), marks]


def markdown(report: dict) -> str:
    """The report as a Markdown table, with the host and command it came from."""
    host = report["host"]
    load = host.get("load_average")
    lines = [
        "# fastdp bench",
        "",
        f"`{report['command']}`" if report.get("command") else "",
        "",
        (f"fastdp_ros {host['fastdp_ros']} · " if "fastdp_ros" in host else "")
        + f"{report['created']} · {host.get('cpu')} ({host.get('cpus')} CPUs"
        + (f", load average {load[0]:.2f}" if load else "") + f") · torch {host.get('torch')} "
        f"({host.get('torch_threads')} threads)"
        + (f" · onnxruntime {host['onnxruntime']}" if "onnxruntime" in host else "")
        + (f" · GPU {host['gpu']}" if "gpu" in host else ""),
        "",
        f"act() latency over {report['calls']} calls after {report['warmup']} warm-up calls, observation in, "
        f"action chunk out (validation and preprocessing included). Re-plan rate = 1000 / p99. Speedup = "
        f"p50 of {report.get('baseline') or 'the baseline'} / p50. Peak RSS = the process's resident "
        f"high-water mark during the row.",
        "",
    ]
    loaded = any(report.get("loads", [0]))
    if loaded:
        lines += [f"Each row was timed quiet and beside N busy competing processes (the `load` column; one "
                  f"core's worth each, {host.get('usable_cpus', host.get('cpus'))} usable CPUs), in alternating "
                  f"blocks of {report.get('load_block_calls', '?')} calls.", ""]
    gpu = any(r.get("gpu_peak_mb") is not None for r in report["rows"])
    success = any(r.get("success_rate") is not None for r in report["rows"])
    head = ["policy", "type", "backend", "NFE", "params", "p50 ms", "p90 ms", "p99 ms", "re-plan Hz",
            f"{report.get('target_hz', 60):g} Hz", "speedup", "peak RSS MB"]
    head += ["GPU MB"] if gpu else []
    costs = any(r.get("costs") for r in report["rows"])
    modes = any(r.get("mode_coverage") for r in report["rows"])
    head += ["parity max Δ", "load s"] + (["success (95% CI)", "mean return", "Pareto"] if success else [])
    head += ["successes per mode"] if modes else []
    head += ["load"] if loaded else []
    head += ["other costs"] if costs else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if r.get("error"):
            cells = [r["name"], r.get("policy_type") or "", r["backend"], f"not run: {r['error']}"]
            cells += [""] * (len(head) - len(cells))
        else:
            lat = r["latency_ms"]
            cells = [r["name"], r["policy_type"], r["description"], str(r["nfe"]), f"{r['parameters'] / 1e6:.2f}M",
                     f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{r['replan_hz']:.0f}",
                     "yes" if lat["p99"] <= 1000.0 / report.get("target_hz", 60) else "no",
                     _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] is not None else ""), _fmt(r["peak_rss_mb"], ".0f")]
            cells += [_fmt(r.get("gpu_peak_mb"), ".0f")] if gpu else []
            cells += [_fmt(r["parity_max_abs_diff"], ".1e"), _fmt(r["load_seconds"], ".1f")]
            cells += evaluation_cells(r) if success else []
            cells += [", ".join(f"{m}: {n}" for m, n in (r.get("mode_coverage") or {}).items())] if modes else []
            cells += [str(r.get("load", 0))] if loaded else []
            cells += [", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                for k, v in (r.get("costs") or {}).items())] if costs else []
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if success:
        lines += ["", "Pareto: on the front of p99 against success (S) and against mean return (R), among the "
                  "rows of the same backend and load."]
    if report.get("contention"):
        lines += ["", "p99 under load against the same row's quiet p99:", "",
                  "| policy | backend | load | quiet p99 ms | loaded p99 ms | ratio |", "|---|---|---|---|---|---|"]
        for c in report["contention"]:
            lines.append(f"| {c['name']} | {c['backend']} | {c['load']} | {c['quiet_p99_ms']:.2f} | "
                         f"{c['p99_ms']:.2f} | {c['p99_ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Latency per policy x backend (p50 bar, p90-p99 whisker, 60 Hz line); beside it, where
    evaluation results were given, p99 against success rate (95% interval) and against mean
    return, with the Pareto front of each."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        raise ConfigError("install matplotlib to write bench.png (pip install matplotlib)") from None
    rows = [r for r in report["rows"] if not r.get("error")]
    with_success = [r for r in rows if r.get("success_rate") is not None]
    with_return = [r for r in with_success if r.get("mean_return") is not None]
    ncols = 1 + bool(with_success) + bool(with_return)
    fig = Figure(figsize=(6.5 * ncols, 1.0 + 0.45 * max(3, len(rows))), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    ax = axes[0]
    labels = [f"{r['name']} · {r['backend']}" + (f" · load {r['load']}" if r.get("load") else "") for r in rows]
    p50 = [r["latency_ms"]["p50"] for r in rows]
    p99 = [r["latency_ms"]["p99"] for r in rows]
    p90 = [r["latency_ms"]["p90"] for r in rows]
    y = list(range(len(rows)))
    ax.barh(y, p50, color="tab:blue", alpha=0.8, label="p50")
    ax.errorbar(p99, y, xerr=[[b - a for a, b in zip(p90, p99)], [0] * len(rows)], fmt="|", color="black",
                label="p90–p99")
    target_ms = 1000.0 / report.get("target_hz", 60)
    ax.axvline(target_ms, color="tab:red", linestyle="--", label=f"{report.get('target_hz', 60):g} Hz")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    if p99 and max(p99) / max(min(p50), 1e-6) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("act() latency (ms)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("latency per policy and backend")
    panels = [("success_rate", "success rate (95% interval)", "pareto_success", with_success),
              ("mean_return", "mean return", "pareto_return", with_return)]
    for axis, (key, label, front_key, chosen) in zip(axes[1:], [p for p in panels if p[3]]):
        _pareto_panel(axis, chosen, key, front_key, target_ms)
        axis.set_ylabel(label)
        axis.set_title(f"act() p99 vs {label.split(' (')[0]}; Pareto front in black")
        if key == "success_rate":
            axis.set_ylim(-0.05, 1.05)
    fig.savefig(path, dpi=120)


def _pareto_panel(ax, rows: list[dict], key: str, front_key: str, target_ms: float) -> None:
    """One point per row (success rows with their 95% interval), the front joined by a step line."""
    for r in rows:
        x, v = r["latency_ms"]["p99"], r[key]
        ci = r.get("success_ci95") if key == "success_rate" else None
        yerr = [[v - ci[0]], [ci[1] - v]] if ci else None
        ax.errorbar(x, v, yerr=yerr, fmt="o", capsize=2,
                    color="black" if r.get(front_key) else "tab:gray", alpha=1.0 if r.get(front_key) else 0.7)
        ax.annotate(f"{r['name']} · {r['backend']}", (x, v), fontsize="x-small", xytext=(4, 4),
                    textcoords="offset points")
    for backend in sorted({(r["backend"], r.get("load", 0)) for r in rows}):
        front = sorted((r["latency_ms"]["p99"], r[key]) for r in rows
                       if r.get(front_key) and (r["backend"], r.get("load", 0)) == backend)
        if len(front) > 1:
            ax.step([x for x, _ in front], [v for _, v in front], where="post", color="black", linewidth=1)
    ax.axvline(target_ms, color="tab:red", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("act() latency p99 (ms)")


def write_reports(report: dict, out: str | Path) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into `out`; returns their paths."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out}: {e.strerror}") from None
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    return paths
