"""Benchmark the REAL weekly training flow on N simulated athletes, and the naive loop.

    .venv/bin/python bench/weekly_run.py --athletes 1000
    .venv/bin/python bench/weekly_run.py --athletes 200,1000 --families recovery  # memory vs N

What it does, per N:

1. simulates N athletes x 180 days (``--profile realistic`` by default) into a fresh
   temporary ``VELOREADY_HOME`` (data, SQLite MLflow, OTA output, reports all there);
2. starts Prefect's local API once (reported apart: a deployed server is already up);
3. runs `flows.weekly_training.weekly_training` - the real flow: ingest, Great
   Expectations, chunked training on the configured runner (``--workers 2`` = two
   local Dask worker processes), MLflow registry, Core ML/ONNX export, OTA, report;
4. prints wall time, a per-stage table, the share of the wall time spent in Prefect
   orchestration, the cost per athlete and peak memory (process tree, sampled);
5. runs two naive references on ``--naive-sample`` of the same athletes, same trial
   budget, and prints the per-athlete ratios (``--naive both|textbook|optimised``):
   * *textbook* - the naive run the issue describes (`bench/naive_textbook.py`): one
     athlete at a time, a Prefect task per step, a study per athlete with no pruning,
     MLflow ``log_model`` with dependency inference, Core ML for every model;
   * *optimised* - the flow's own cheap per-athlete code in a plain Python loop: each
     athlete its own Optuna study, networks fitted alone from scratch with early
     stopping and pruning (`bench/naive_reference.tune_single`), no Prefect, no registry, no
     export. It isolates what batching and both cores buy over good per-athlete code.
   (`bench/nets_batched_vs_naive.py` also replays the batched trials one athlete at a
   time, to isolate what batching alone buys.)

How the figures are measured. Every stage function records its own start/end/CPU time
from inside the task (`veloready_pipeline.timing`; the training stage writes from the
Dask worker processes too). *Orchestration* is the flow's wall time during which no
stage code ran in any process: Prefect task/flow-run bookkeeping, moving inputs and
results between processes, starting the task runner. Peak memory is the largest sum of
RSS over this process and all its children (Dask workers, Prefect server), sampled
every 0.2 s, next to ``getrusage`` maxima.

With several N (``--athletes 200,1000``) each N runs in its own subprocess (a clean
peak-memory figure each) and a final table compares them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGE_ORDER = ["ingest", "validate", "train", "register", "export", "ota", "report",
               "summary"]


# ------------------------------------------------------------------ memory sampling


class MemorySampler:
    """Peak RSS of this process plus all its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.every_s = every_s
        self.peak_tree = 0
        self.peak_self = 0
        self.peak_children = 0
        self.cpu_seen: dict[int, float] = {}  # pid -> CPU seconds when last sampled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mem-sampler")

    def _sample(self) -> None:
        me = self._psutil.Process()
        own = me.memory_info().rss
        kids = 0
        cpu = {me.pid: sum(me.cpu_times()[:2])}
        for child in me.children(recursive=True):
            try:
                kids += child.memory_info().rss
                cpu[child.pid] = sum(child.cpu_times()[:2])
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
        with self._lock:
            self.cpu_seen.update(cpu)
        self.peak_self = max(self.peak_self, own)
        self.peak_children = max(self.peak_children, kids)
        self.peak_tree = max(self.peak_tree, own + kids)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a sampling hiccup never stops the run
                pass
            self._stop.wait(self.every_s)

    def tree_cpu(self) -> float:
        """CPU seconds of every process seen so far (an exited child: its last sample)."""
        self._sample()
        with self._lock:
            return sum(self.cpu_seen.values())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def rusage_mib() -> dict[str, float]:
    """getrusage maxima (KiB on Linux): own peak and the largest waited-for child."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"maxrss_self_mib": round(own, 1), "maxrss_children_mib": round(kids, 1)}


# ------------------------------------------------------------------ stage wrappers


def instrument_stages() -> None:
    """Wrap the stage functions the flow's own process runs, so each reports its time.

    The training stage times itself in `training.train_family` (it may run in Dask
    worker processes, where a wrapper made here would not exist).
    """
    import flows.weekly_training as wt
    from veloready_pipeline import fsio, ingest, report, summary, tables, validation
    from veloready_pipeline.lifecycle import publish, registry
    from veloready_pipeline.timing import time_stage

    def wrap(owner: Any, attr: str, stage: str) -> None:
        fn = getattr(owner, attr)
        if getattr(fn, "_bench_stage", None):
            return

        def inner(*args: Any, **kwargs: Any) -> Any:
            with time_stage(stage):
                return fn(*args, **kwargs)

        inner._bench_stage = stage  # type: ignore[attr-defined]
        setattr(owner, attr, inner)

    wrap(ingest, "load_data", "ingest")
    wrap(validation, "validate_frame", "validate")
    wrap(validation, "write_quarantine_reports", "validate")
    wrap(ingest, "cut_as_of", "validate")
    wrap(ingest, "select_athletes", "validate")
    wrap(registry, "register_results", "register")
    wrap(publish, "export_registered", "export")
    wrap(publish, "publish_manifests", "ota")
    wrap(report, "build_report", "report")
    wrap(registry, "log_report", "report")
    wrap(ingest, "data_digest", "summary")
    wrap(summary, "summary_rows", "summary")
    wrap(tables, "gate_table_markdown", "summary")
    wrap(fsio, "atomic_write_text", "summary")
    del wt


# ------------------------------------------------------------------ analysis


def stage_table(records: list[dict[str, Any]], flow_start: float, flow_end: float,
                flow_wall: float) -> dict[str, Any]:
    """Per-stage elapsed/busy/CPU seconds and the orchestration share."""
    from veloready_pipeline.timing import union_seconds

    inside = [r for r in records if r["end"] >= flow_start and r["start"] <= flow_end]
    top = [r for r in inside if r.get("level", 0) == 0]
    rows: dict[str, dict[str, Any]] = {}
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in top:
        key = r["stage"] if r["stage"] != "train" else f"train {r.get('family', '?')}"
        by_stage[key].append(r)
    for key, recs in by_stage.items():
        rows[key] = {
            "calls": len(recs),
            "elapsed_s": union_seconds([(r["start"], r["end"]) for r in recs]),
            "busy_s": sum(r["end"] - r["start"] for r in recs),
            "cpu_s": sum(r["cpu"] for r in recs),
            "pids": len({r["pid"] for r in recs}),
        }
    subs: dict[str, dict[str, Any]] = {}
    for r in inside:
        if r.get("level", 0) != 1:
            continue
        key = f"  {r.get('family', '?')}: {r['stage']}"
        s = subs.setdefault(key, {"calls": 0, "elapsed_s": None, "busy_s": 0.0, "cpu_s": 0.0,
                                  "pids": set()})
        s["calls"] += int(r.get("count", 1))
        s["busy_s"] += r["end"] - r["start"]
        s["cpu_s"] += r["cpu"]
        s["pids"].add(r["pid"])
    for s in subs.values():
        s["pids"] = len(s["pids"])
    work = union_seconds([(max(r["start"], flow_start), min(r["end"], flow_end)) for r in top])
    train = [r for r in top if r["stage"] == "train"]
    train_window = union_seconds([(r["start"], r["end"]) for r in train])
    workers = len({r["pid"] for r in train}) or 1
    span = (max(r["end"] for r in train) - min(r["start"] for r in train)) if train else 0.0
    return {
        "stages": rows,
        "substages": subs,
        "work_union_s": work,
        "orchestration_s": flow_wall - work,
        "orchestration_share": (flow_wall - work) / flow_wall if flow_wall else 0.0,
        "train_span_s": span,
        "train_window_s": train_window,
        "train_workers": workers,
        "train_utilisation": (sum(r["end"] - r["start"] for r in train) / (workers * span)
                              if span else 0.0),
        "gaps": idle_gaps(top, flow_start, flow_end),
    }


def idle_gaps(top: list[dict[str, Any]], flow_start: float, flow_end: float,
              at_least_s: float = 0.5) -> list[dict[str, Any]]:
    """Stretches of the flow when no stage ran anywhere, with the stages around them."""
    gaps, cursor, before = [], flow_start, "flow start"
    for r in sorted(top, key=lambda r: r["start"]):
        label = r["stage"] if r["stage"] != "train" else f"train {r.get('family', '?')}"
        if r["start"] - cursor >= at_least_s:
            gaps.append({"after": before, "before": label, "seconds": r["start"] - cursor})
        if r["end"] > cursor:
            cursor, before = r["end"], label
    if flow_end - cursor >= at_least_s:
        gaps.append({"after": before, "before": "flow end", "seconds": flow_end - cursor})
    return gaps


def print_table(res: dict[str, Any]) -> None:
    """The human-readable report of one run."""
    t = res["timing"]
    wall = res["flow_wall_s"]
    print(f"\n== weekly flow: {res['n_athletes']} athletes x {res['days']} days "
          f"({res['profile']}), families {','.join(res['families'])}, "
          f"{res['trials']} trials, workers {res['workers']}, chunk {res['chunk_size']}")
    print(f"load average before {res['load_before']}, after {res['load_after']} "
          f"({os.cpu_count()} cores)")
    print(f"simulate {res['simulate_s']:.1f} s (not part of the flow); Prefect API start-up "
          f"{res['prefect_startup_s']:.1f} s (once per process; a deployed server is up)")
    print(f"flow wall time {wall:.1f} s = {wall / 60:.2f} min; per athlete "
          f"{wall / res['n_athletes']:.3f} s wall, {res['cpu_per_athlete_s']:.3f} s CPU "
          f"(process tree)")
    print(f"\n{'stage':<28}{'calls':>7}{'elapsed s':>11}{'busy s':>10}{'CPU s':>10}"
          f"{'% wall':>8}{'procs':>6}")
    order = sorted(t["stages"], key=lambda k: (STAGE_ORDER.index(k.split()[0])
                                               if k.split()[0] in STAGE_ORDER else 99, k))
    for key in order:
        r = t["stages"][key]
        print(f"{key:<28}{r['calls']:>7}{r['elapsed_s']:>11.1f}{r['busy_s']:>10.1f}"
              f"{r['cpu_s']:>10.1f}{100 * r['elapsed_s'] / wall:>8.1f}{r['pids']:>6}")
        fam = key.split()[1] if key.startswith("train ") else None
        for sk, s in sorted(t["substages"].items()):
            if fam and sk.strip().startswith(f"{fam}:"):
                print(f"{sk:<28}{s['calls']:>7}{'':>11}{s['busy_s']:>10.1f}{s['cpu_s']:>10.1f}"
                      f"{'':>8}{s['pids']:>6}")
    print(f"{'orchestration (no stage ran)':<28}{'':>7}{t['orchestration_s']:>11.1f}"
          f"{'':>10}{'':>10}{100 * t['orchestration_share']:>8.1f}")
    gaps = sorted(t["gaps"], key=lambda g: -g["seconds"])[:5]
    if gaps:
        print("largest idle stretches: " + "; ".join(
            f"{g['after']} -> {g['before']} {g['seconds']:.1f} s" for g in gaps))
    print(f"\ntraining: {t['train_workers']} worker process(es), span {t['train_span_s']:.1f} s, "
          f"worker utilisation {100 * t['train_utilisation']:.0f} %")
    mem = res["memory"]
    print(f"peak memory: process tree {mem['peak_tree_mib']:.0f} MiB (this process "
          f"{mem['peak_self_mib']:.0f} MiB, children {mem['peak_children_mib']:.0f} MiB); "
          f"getrusage maxrss self {mem['maxrss_self_mib']:.0f} MiB, largest child "
          f"{mem['maxrss_children_mib']:.0f} MiB")
    print(f"outcomes: {json.dumps(res['counts'])}")


def print_naive(res: dict[str, Any]) -> None:
    """The naive loop's table and the per-athlete ratios."""
    t, wall = res["timing"], res["flow_wall_s"]
    naive = res.get("naive") or {}
    for fam, err in naive.get("errors", {}).items():
        print(f"naive loop for {fam} failed: {err}")
    if naive.get("families"):
        print(f"\nnaive per-athlete loop ({naive['sample']} athletes sampled, one at a time, "
              f"{res['trials']} trials, 1 thread):")
        print(f"{'family':<10}{'athletes':>9}{'naive s/ath':>12}{'naive CPU':>10}"
              f"{'flow s/ath':>11}{'flow CPU':>9}{'wall ratio':>11}{'CPU ratio':>10}")
        n = res["n_athletes"]
        for fam, r in naive["families"].items():
            # the flow's training wall time for this family, spread over its workers
            stage = t["stages"].get(f"train {fam}", {})
            per = stage.get("busy_s", float("nan")) / t["train_workers"] / n
            cpu = stage.get("cpu_s", float("nan")) / n
            print(f"{fam:<10}{r['n']:>9}{r['wall_per_athlete_s']:>12.3f}"
                  f"{r['cpu_per_athlete_s']:>10.3f}{per:>11.3f}{cpu:>9.3f}"
                  f"{r['wall_per_athlete_s'] / per:>11.1f}{r['cpu_per_athlete_s'] / cpu:>10.1f}")
        total, total_cpu = naive["wall_per_athlete_s"], naive["cpu_per_athlete_s"]
        flow_per, flow_cpu = wall / n, res["cpu_per_athlete_s"]
        print(f"all families: naive {total:.2f} s ({total_cpu:.2f} s CPU) per athlete vs the "
              f"whole flow {flow_per:.3f} s ({flow_cpu:.3f} s CPU, registry, export, OTA, "
              f"report, Prefect and Dask included) -> {total / flow_per:.1f}x faster per "
              f"athlete in wall time, {total_cpu / flow_cpu:.1f}x in CPU time")
        print("(wall figures depend on the machine's load at each moment; CPU figures "
              "compare the work itself)")


def print_textbook(res: dict[str, Any]) -> None:
    """The issue's naive run (`bench/naive_textbook.py`) against the flow, per athlete."""
    tb, wall, n = res["textbook"], res["flow_wall_s"], res["n_athletes"]
    print(f"\nnaive run as the issue describes it ({tb['sample']} athletes, one at a time: "
          f"a Prefect task per step, a study per athlete without pruning, MLflow log_model "
          f"with inference, Core ML for every model, 1 thread):")
    print(f"{'family':<10}{'athletes':>9}{'naive s/ath':>12}{'in-proc CPU':>12}"
          f"{'statuses':>30}")
    for fam, r in tb["families"].items():
        print(f"{fam:<10}{r['n']:>9}{r['wall_per_athlete_s']:>12.2f}"
              f"{r['cpu_per_athlete_s']:>12.2f}{','.join(r['statuses']):>30}")
    total = tb["run_wall_s"] / max(tb["sample"], 1)  # flow-run creation included
    tree_cpu = tb["tree_cpu_s"] / max(tb["sample"], 1)
    flow_per, flow_cpu = wall / n, res["cpu_per_athlete_s"]
    print(f"all families: naive {total:.2f} s per athlete ({tree_cpu:.2f} s CPU of the process "
          f"tree: Prefect server and MLflow's inference subprocesses included) vs the whole "
          f"flow {flow_per:.3f} s ({flow_cpu:.3f} s CPU) -> {total / flow_per:.1f}x faster per "
          f"athlete in wall time, {tree_cpu / flow_cpu:.1f}x in CPU time")


# ------------------------------------------------------------------ naive loop


def naive_sample(frame: Any, sample: int, seed: int) -> list[str]:
    """The athletes both naive references run on (seeded, the same for both)."""
    import numpy as np

    ids = sorted(frame["athlete_id"].astype(str).unique())
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(sample, len(ids)), replace=False).tolist())


def run_naive(frame: Any, families: list[str], settings: Any,
              picked: list[str]) -> dict[str, Any]:
    """One athlete at a time, plain Python, same trial budget: the reference cost.

    The naive per-athlete loop the flow replaces: for each sampled athlete and family,
    the athlete's own Optuna study with the flow's search space, sampler and trial
    budget. Recovery: `train_recovery_model` (the flow's own per-athlete XGBoost code,
    so no gain is claimed there). Networks: `bench/naive_reference.tune_single` - every trial
    a plain ``nn.Module`` fitted alone from scratch (no batching, no population prior).
    """
    import numpy as np

    groups = {aid: frame[frame["athlete_id"] == aid] for aid in picked}
    out: dict[str, Any] = {"sample": len(picked), "athletes": picked, "families": {},
                           "errors": {}}
    for fam in families:
        walls, cpus = [], []
        try:
            for aid in picked:
                t, c = time.perf_counter(), time.process_time()
                if naive_one(fam, groups[aid], settings):
                    walls.append(time.perf_counter() - t)
                    cpus.append(time.process_time() - c)
        except Exception as exc:  # noqa: BLE001 - the flow's figures stand without it
            out["errors"][fam] = f"{type(exc).__name__}: {exc}"
            continue
        if walls:
            out["families"][fam] = {"n": len(walls),
                                    "wall_per_athlete_s": float(np.mean(walls)),
                                    "cpu_per_athlete_s": float(np.mean(cpus))}
    out["wall_per_athlete_s"] = sum(r["wall_per_athlete_s"] for r in out["families"].values())
    out["cpu_per_athlete_s"] = sum(r["cpu_per_athlete_s"] for r in out["families"].values())
    return out


def naive_one(family: str, rows: Any, settings: Any) -> bool:
    """Train and test-score one athlete's model of ``family`` alone; False if skipped."""
    from veloready_pipeline.config import TrainingConfig

    config = TrainingConfig.from_settings(settings, family)
    if family == "recovery":
        from veloready_pipeline.models.recovery import train_recovery_model

        return train_recovery_model(rows, config).status == "trained"
    import torch

    from bench.naive_reference import tune_single
    from veloready_pipeline.features_nets import make_injury_dataset, make_zone_dataset
    from veloready_pipeline.models.injury import INJURY_FAMILY, evaluate_injury_model
    from veloready_pipeline.models.net_tuning import train_data
    from veloready_pipeline.models.zones import ZONE_FAMILY, evaluate_zone_model

    torch.set_num_threads(settings.execution.torch_threads)
    spec, make, evaluate = ((ZONE_FAMILY, make_zone_dataset, evaluate_zone_model)
                            if family == "zones"
                            else (INJURY_FAMILY, make_injury_dataset, evaluate_injury_model))
    ds = make(rows)
    if ds.skip_reason:
        return False
    evaluate(ds, tune_single(spec, train_data(ds), config).model)
    return True


# ------------------------------------------------------------------ one run


def warm_up_prefect() -> float:
    """Start Prefect's local API (ephemeral server) with a trivial flow; seconds taken."""
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    t = time.perf_counter()
    warm_up()
    return time.perf_counter() - t


def bench_environment(home: Path, timing_path: Path) -> None:
    """Point the run at its own temporary home, timing file and quiet, offline tools."""
    os.environ["VELOREADY_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ["VELOREADY_TIMING_FILE"] = str(timing_path)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline machine


def settings_overrides(args: argparse.Namespace, families: list[str]) -> dict[str, Any]:
    """The settings the command line sets (seed, families, trials, execution)."""
    overrides: dict[str, Any] = {
        "seed": args.seed,
        "families": families,
        "tuning": {"n_trials": args.trials},
        "execution": {"local_workers": args.workers, "chunk_size": args.chunk_size},
    }
    if args.dask_address:
        overrides["execution"]["dask_address"] = args.dask_address
    return overrides


def run_flow(args: argparse.Namespace, n_athletes: int, home: Path, families: list[str],
             settings: Any) -> tuple[Any, dict[str, Any]]:
    """Simulate, start Prefect, run the real weekly flow under the memory sampler.

    Returns the simulated frame and the measurements: ``simulate_s``, ``prefect_s``,
    ``flow_wall``, ``cpu_flow``, ``t0``/``t1`` (the flow's epoch start/end), the flow's
    ``summary`` and the sampler ``mem``.
    """
    from veloready_pipeline.simulate import simulate_athletes, write_simulation

    with MemorySampler() as mem:
        t = time.perf_counter()
        sim = simulate_athletes(n_athletes=n_athletes, days=args.days, seed=args.seed,
                                profile=args.profile)
        data_path = write_simulation(sim, home / "data" / "bench")
        simulate_s = time.perf_counter() - t
        frame = sim.frame
        del sim
        prefect_s = warm_up_prefect()
        instrument_stages()
        from flows.weekly_training import weekly_training

        cpu0 = mem.tree_cpu()
        t0 = time.time()
        t = time.perf_counter()
        summary = weekly_training(settings=settings, data=str(data_path), families=families,
                                  summary_json=str(home / "summary.json"), progress=False)
        flow_wall = time.perf_counter() - t
        t1 = time.time()
        cpu_flow = mem.tree_cpu() - cpu0
    return frame, {"simulate_s": simulate_s, "prefect_s": prefect_s, "flow_wall": flow_wall,
                   "cpu_flow": cpu_flow, "t0": t0, "t1": t1, "summary": summary, "mem": mem}


def run_naive_references(args: argparse.Namespace, result: dict[str, Any], frame: Any,
                         families: list[str], naive_settings: Any, home: Path) -> None:
    """Run the ``--naive`` references on the sampled athletes; figures into ``result``."""
    picked = naive_sample(frame, args.naive_sample, args.seed)
    if args.naive in ("both", "optimised"):
        result["naive"] = run_naive(frame, families, naive_settings, picked)
        result["load_after_naive"] = tuple(round(x, 2) for x in os.getloadavg())
        print_naive(result)
    if args.naive in ("both", "textbook"):
        from bench.naive_textbook import run_textbook

        with MemorySampler() as tb_mem:
            cpu0 = tb_mem.tree_cpu()
            t = time.perf_counter()
            result["textbook"] = run_textbook(frame, picked, families, naive_settings,
                                              home)
            result["textbook"]["run_wall_s"] = time.perf_counter() - t
            result["textbook"]["tree_cpu_s"] = tb_mem.tree_cpu() - cpu0
        result["load_after_textbook"] = tuple(round(x, 2) for x in os.getloadavg())
        print_textbook(result)


def run_one(args: argparse.Namespace, n_athletes: int) -> dict[str, Any]:
    """Simulate, run the flow, run the naive loop; returns every figure."""
    home = Path(tempfile.mkdtemp(prefix=f"veloready-bench-{n_athletes}-"))
    timing_path = home / "timing.jsonl"
    bench_environment(home, timing_path)
    from veloready_pipeline.config import load_settings

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    overrides = settings_overrides(args, families)
    settings = load_settings(args.config, **overrides)
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    frame, run = run_flow(args, n_athletes, home, families, settings)
    mem = run["mem"]
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    records = __import__("veloready_pipeline.timing", fromlist=["x"]).read_records(
        str(timing_path))
    result: dict[str, Any] = {
        "n_athletes": n_athletes, "days": args.days, "profile": args.profile,
        "families": families, "trials": args.trials, "workers": args.workers,
        "chunk_size": args.chunk_size, "seed": args.seed,
        "simulate_s": run["simulate_s"], "prefect_startup_s": run["prefect_s"],
        "flow_wall_s": run["flow_wall"], "cpu_per_athlete_s": run["cpu_flow"] / n_athletes,
        "load_before": load_before, "load_after": load_after,
        "timing": stage_table(records, run["t0"], run["t1"], run["flow_wall"]),
        "memory": {"peak_tree_mib": mem.peak_tree / 2**20,
                   "peak_self_mib": mem.peak_self / 2**20,
                   "peak_children_mib": mem.peak_children / 2**20, **rusage_mib()},
        "counts": run["summary"]["counts"],
        "home": str(home),
    }
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    if args.naive_sample > 0:
        os.environ.pop("VELOREADY_TIMING_FILE", None)
        naive_settings = load_settings(args.config, **overrides)
        run_naive_references(args, result, frame, families, naive_settings, home)
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    return result


# ------------------------------------------------------------------ entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--athletes", default="100",
                   help="athletes to simulate; several (200,1000) compare memory vs N")
    p.add_argument("--families", default="recovery,zones,injury")
    p.add_argument("--trials", type=int, default=20, help="Optuna trials per family")
    p.add_argument("--naive-sample", type=int, default=3,
                   help="athletes for the naive loop (0 = skip it)")
    p.add_argument("--naive", default="both", choices=["both", "textbook", "optimised"],
                   help="naive references: the issue's textbook run (bench/naive_textbook.py), "
                        "the flow's own per-athlete code in a loop, or both")
    p.add_argument("--workers", type=int, default=2,
                   help="local Dask worker processes (1 = a thread in the flow's process)")
    p.add_argument("--chunk-size", type=int, default=50, help="athletes per task")
    p.add_argument("--dask-address", default=None, help="an existing Dask scheduler")
    p.add_argument("--profile", default="realistic", choices=["realistic", "easy"])
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", default=None, help="YAML settings file (e.g. configs/...)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary VELOREADY_HOME")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in str(args.athletes).split(",") if x.strip()]
    if len(sizes) == 1:
        res = run_one(args, sizes[0])
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return 0
    # Several sizes: one subprocess each, so each peak-memory figure starts clean.
    results = []
    raw = list(sys.argv[1:] if argv is None else argv)
    for n in sizes:
        out = Path(tempfile.mkstemp(prefix=f"bench-{n}-", suffix=".json")[1])
        cmd = [sys.executable, __file__, *_replace_arg(raw, "--athletes", str(n)),
               "--json", str(out)]
        cmd = _drop_arg(cmd, "--json", keep_last=True)
        subprocess.run(cmd, check=True)
        results.append(json.loads(out.read_text()))
        out.unlink()
    print("\n== memory and cost against N")
    print(f"{'athletes':>9}{'wall s':>9}{'s/athlete':>11}{'orch %':>8}{'peak tree MiB':>15}"
          f"{'peak self MiB':>15}{'load (1 min)':>14}")
    for r in results:
        print(f"{r['n_athletes']:>9}{r['flow_wall_s']:>9.1f}"
              f"{r['flow_wall_s'] / r['n_athletes']:>11.3f}"
              f"{100 * r['timing']['orchestration_share']:>8.1f}"
              f"{r['memory']['peak_tree_mib']:>15.0f}{r['memory']['peak_self_mib']:>15.0f}"
              f"{r['load_after'][0]:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def _replace_arg(argv: list[str], name: str, value: str) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == name:
            out += [name, value]
            skip = i + 1 < len(argv)
        elif a.startswith(name + "="):
            out += [name, value]
        else:
            out.append(a)
    return out


def _drop_arg(argv: list[str], name: str, keep_last: bool) -> list[str]:
    idx = [i for i, a in enumerate(argv) if a == name]
    drop = idx[:-1] if keep_last else idx
    out = []
    skip = set()
    for i in drop:
        skip |= {i, i + 1}
    for i, a in enumerate(argv):
        if i not in skip:
            out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
