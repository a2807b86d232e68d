"""Issue 20's acceptance items, measured on real rclpy: the sim, policy and monitor executables
started as sim.launch.py starts them (config/sim.yaml), once on a quiet machine and once with
two busy competing processes. Writes bench/ros_graph.json.

    python bench/ros_graph.py                      # 120 s windows, 20 OOD trials, quiet + loaded
    python bench/ros_graph.py --window 30 --trials 10 --conditions loaded

Per condition:
  rate      commands on the trajectory topic over --window seconds: mean rate, p99 and max
            inter-arrival; stop-flag raises in that window (nominal operation, monitor on);
            episode outcomes the sim published
  swap      SetParameters (what `ros2 param set` calls) onedp -> alt -> onedp: largest command
            gap from each request until 1 s after the new policy drives; an unknown name
  ood       --trials frames sets (noise, a solid colour, an unrelated pattern) on both camera
            topics: time from the first OOD frame to the stop flag, joints held exactly while
            stopped, ~/reset releases and motion resumes
  shutdown  SIGINT to the process group (twice, as `ros2 launch` forwards it): exit codes,
            seconds to exit, tracebacks on stderr
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdp_ros.nodes.processes import SIM_GRAPH, DomainLease, NodeGroup, sim_launch_args  # noqa: E402

FRONT, WRIST = "/camera/front/image_raw", "/camera/wrist/image_raw"


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def intervals_ms(times: list[float]) -> np.ndarray:
    return 1e3 * np.diff(np.asarray(times)) if len(times) > 1 else np.zeros(0)


def stats_ms(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    return {"mean": round(float(np.mean(x)), 2), "p50": round(float(np.percentile(x, 50)), 2),
            "p99": round(float(np.percentile(x, 99)), 2), "max": round(float(np.max(x)), 2)}


def command_times(probe, t0, t1=None) -> list[float]:
    return [t for t, _ in probe.snapshot("commands") if t >= t0 and (t1 is None or t <= t1)]


def stop_raises(probe, t0, t1) -> list[float]:
    stops, out, last = probe.snapshot("stop"), [], False
    for t, value in stops:
        if value and not last and t0 <= t <= t1:
            out.append(t)
        last = value
    return out


def release(probe) -> None:
    probe.trigger("/fastdp_ood_monitor/reset")
    probe.wait_for(lambda: probe.stopped() is False, 10.0)
    probe.trigger("/fastdp_policy/reset")


def stop_lines(log: str, wall0: float, wall1: float) -> list[str]:
    """The monitor's "STOP: reason" lines logged between two wall-clock times (ROS log stamps)."""
    out = []
    for line in log.splitlines():
        if "]: STOP: " not in line:
            continue
        try:
            stamp = float(line.split("] [", 1)[1].split("]", 1)[0])
        except (IndexError, ValueError):
            continue
        if wall0 <= stamp <= wall1:
            out.append(line.split("STOP: ", 1)[1].split(" for ")[0][:100])
    return out


def measure_rate(probe, group, window: float) -> dict:
    release(probe)
    t0, wall0 = time.monotonic(), time.time()
    time.sleep(window)
    t1, wall1 = time.monotonic(), time.time()
    times = command_times(probe, t0, t1)
    gaps = intervals_ms(times)
    outcomes = [o for t, o in probe.snapshot("outcomes") if t0 <= t <= t1]
    raises = stop_raises(probe, t0, t1)
    monitor_log = group.nodes["fastdp_ood_monitor"].stderr()
    return {"window_s": round(t1 - t0, 1), "commands": len(times), "rate_hz": round(len(times) / (t1 - t0), 2),
            "inter_arrival_ms": stats_ms(gaps), "stops": len(raises),
            "stop_reasons": stop_lines(monitor_log, wall0, wall1),
            "episodes": len(outcomes), "successes": sum(o["success"] for o in outcomes)}


def measure_swaps(probe, group) -> dict:
    release(probe)
    log = group.nodes["fastdp_policy"]
    out = []
    for name in ("alt", "onedp", "alt", "onedp"):
        t0 = time.monotonic()
        ok, reason = probe.set_string_parameter("fastdp_policy", "policy", name)
        marker = f"{name} ("
        before = log.output().count(" now drives the arm (loaded")
        done = probe.wait_for(lambda: log.output().count(" now drives the arm (loaded") > before, 120.0)
        t_done = time.monotonic()
        time.sleep(1.0)
        times = command_times(probe, t0 - 0.2, time.monotonic())
        gaps = intervals_ms(times)
        out.append({"to": name, "accepted": ok, "reason": reason, "switched": done and marker in log.output(),
                    "request_to_switch_s": round(t_done - t0, 2),
                    "largest_gap_ms": round(float(gaps.max()), 1) if len(gaps) else None,
                    "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1) if len(gaps) else None})
    t0 = time.monotonic()
    ok, reason = probe.set_string_parameter("fastdp_policy", "policy", "no_such_policy")
    time.sleep(1.0)
    after = len(command_times(probe, t0))
    return {"swaps": out, "largest_gap_ms": max((s["largest_gap_ms"] or 0) for s in out),
            "unknown_name": {"refused": not ok, "reason": reason, "commands_in_next_s": after}}


def ood_frames(kind: str, k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    if kind == "noise":
        return rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    if kind == "solid":
        return np.full((96, 96, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:96, 0:96]  # an unrelated picture: a tilted coloured checkerboard
    board = (((xx + yy // 2 + k) // 12 + (yy - xx // 3) // 12) % 2).astype(np.uint8)
    return np.stack([board * 230, (1 - board) * 200, np.full_like(board, 40 + 20 * (k % 5))], axis=-1)


def measure_ood(probe, trials: int) -> dict:
    from sensor_msgs.msg import Image

    results = []
    kinds = ("noise", "solid", "unrelated")
    for topic in (FRONT, WRIST):  # discovery first: the first trial's latency once included it (0.4-0.5 s)
        probe.publisher(Image, topic)
    for k in range(trials):
        kind = kinds[k % len(kinds)]
        release(probe)
        time.sleep(1.0)
        if probe.stopped():  # a false stop in between: count it, release, go on
            release(probe)
        frame = ood_frames(kind, k)
        t0 = time.monotonic()
        t_stop = None
        for _ in range(90):  # up to 1.5 s of OOD frames at 60 Hz
            probe.publish_image(FRONT, frame)
            probe.publish_image(WRIST, frame)
            stops = [t for t, v in probe.snapshot("stop") if v and t >= t0]
            if stops:
                t_stop = stops[0]
                break
            time.sleep(1 / 60)
        held = reset_while_held = None
        if t_stop is not None:
            time.sleep(0.4)
            t_h = time.monotonic()
            time.sleep(0.5)
            qs = [q for t, q in probe.snapshot("commands") if t >= t_h]
            held = bool(qs) and all(np.array_equal(q, qs[0]) for q in qs)
            # a new sim episode moves the arm to its start: the held command follows it there
            reset_while_held = any(t_h - 0.1 <= t <= time.monotonic() for t, _ in probe.snapshot("episodes"))
        release(probe)
        t_r = time.monotonic()
        time.sleep(1.5)
        qs = [q for t, q in probe.snapshot("commands") if t >= t_r]
        resumed = any(not np.array_equal(a, b) for a, b in zip(qs, qs[1:]))
        results.append({"kind": kind, "stopped": t_stop is not None,
                        "latency_ms": None if t_stop is None else round(1e3 * (t_stop - t0), 1),
                        "held_exactly": held, "episode_reset_while_held": reset_while_held, "resumed": resumed})
    lat = np.array([r["latency_ms"] for r in results if r["latency_ms"] is not None])
    by_kind = {kind: {"trials": sum(r["kind"] == kind for r in results),
                      "stopped": sum(r["kind"] == kind and r["stopped"] for r in results)} for kind in kinds}
    return {"trials": len(results), "stopped": int(sum(r["stopped"] for r in results)), "by_kind": by_kind,
            "latency_ms": stats_ms(lat), "held_exactly": sum(bool(r["held_exactly"]) for r in results),
            "moved_while_held_without_an_episode_reset": sum(r["held_exactly"] is False
                                                             and not r["episode_reset_while_held"] for r in results),
            "resumed": sum(r["resumed"] for r in results), "per_trial": results}


def measure_shutdown(group) -> dict:
    t0 = time.monotonic()
    group.interrupt_group(signal.SIGINT)
    time.sleep(0.05)
    group.interrupt_group(signal.SIGINT)
    exited = {}
    deadline = t0 + 30
    while time.monotonic() < deadline and len(exited) < len(group.nodes):
        for name, node in group.nodes.items():
            if name not in exited and not node.alive():
                exited[name] = round(time.monotonic() - t0, 2)
        time.sleep(0.01)
    codes = group.end_all()
    tracebacks = {n: ("Traceback" in node.stderr() or "KeyboardInterrupt" in node.stderr())
                  for n, node in group.nodes.items()}
    return {"exit_codes": codes, "exit_s": exited, "tracebacks": tracebacks}


def run_condition(name: str, load: int, args) -> dict:
    from fastdp_ros.nodes.probe import GraphProbe

    busy = busy_processes(load)
    try:
        with DomainLease() as lease, tempfile.TemporaryDirectory() as logs:
            group = NodeGroup(lease.domain_id, logs)
            probe = None
            try:
                for node, exe in SIM_GRAPH.items():
                    group.start(node, exe, sim_launch_args(node, overrides=args.overrides.get(node)))
                # commands, stop flag and diagnostics only: decoding the camera streams here too would
                # add the probe's own delays to the inter-arrival times it measures
                probe = GraphProbe(lease.domain_id, name="fastdp_bench", image_topics=())
                if not probe.wait_for(lambda: len(probe.snapshot("commands")) > 60, 300.0):
                    raise RuntimeError("the graph did not start commanding:\n" +
                                       "\n".join(n.output()[-2000:] for n in group.nodes.values()))
                result = {"competing_busy_processes": load}
                print(f"[{name}] rate window {args.window} s", flush=True)
                result["rate"] = measure_rate(probe, group, args.window)
                print(f"[{name}] {result['rate']}", flush=True)
                result["swap"] = measure_swaps(probe, group)
                print(f"[{name}] swap largest gap {result['swap']['largest_gap_ms']} ms", flush=True)
                result["ood"] = measure_ood(probe, args.trials)
                print(f"[{name}] ood {result['ood']['stopped']}/{result['ood']['trials']} "
                      f"{result['ood']['latency_ms']}", flush=True)
                result["nodes_alive_before_shutdown"] = {n: node.alive() for n, node in group.nodes.items()}
                probe.close()
                probe = None
                result["shutdown"] = measure_shutdown(group)
                print(f"[{name}] shutdown {result['shutdown']}", flush=True)
            finally:
                if probe is not None:
                    probe.close()
                group.end_all()
    finally:
        end(busy)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=120.0, help="seconds of nominal operation per condition")
    ap.add_argument("--trials", type=int, default=20, help="OOD trials per condition")
    ap.add_argument("--conditions", default="quiet,loaded", help="quiet and/or loaded (2 busy processes)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. other load)")
    ap.add_argument("--param", action="append", default=[], metavar="NODE.NAME=VALUE",
                    help="a parameter over the launch's (e.g. fastdp_ood_monitor.max_check_rate=60); repeatable")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ros_graph.json"))
    args = ap.parse_args(argv)
    args.overrides = {}
    for item in args.param:
        name, _, value = item.partition("=")
        node, _, param = name.partition(".")
        if node not in SIM_GRAPH or not param or not value:
            ap.error(f"--param {item!r}: expected NODE.NAME=VALUE with NODE one of {', '.join(SIM_GRAPH)}")
        try:  # numbers, booleans and lists as JSON; anything else is a string
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        args.overrides.setdefault(node, {})[param] = parsed
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "note": args.note,
               "parameters": args.overrides,
               "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "conditions": {}}
    for condition in args.conditions.split(","):
        results["conditions"][condition] = run_condition(condition, 2 if condition == "loaded" else 0, args)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
