"""Run several `diet bench` configurations × seeds as parallel processes and compare them.

    python benchmarks/sweep.py SPEC.json --data DIR --out OUT [--jobs 16] [--seeds 3] [--first-seed 0]

SPEC.json maps a name to `{"methods": "a,b", "config": {...bench --config overrides...}}`; with
`"groups": ["full,cold", "diet"]` instead of "methods", each group of methods runs as its own process
and `"with": "OTHER"` merges in OTHER's cells of the methods this one does not run (full data and cold
start do not depend on the reference, so several configurations can share them);
(one GPU takes many such processes at once: each is bound by its own kernel launches). Each
(name, group, seed) runs as its own single-threaded process; results are merged per name into the
bench's summary (means over seeds, Kendall τ, gap recovered), printed as one table of mean AUC per
method and written to OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diet_engine.evaluate.bench import mean_known, summarise  # noqa: E402
from diet_engine.models import MODELS  # noqa: E402


TIMEOUT_S = float(os.environ.get("SWEEP_JOB_TIMEOUT_S", "3600"))


def run_one(name: str, spec: dict, group: int, seed: int, data: Path, out: Path, models: str) -> tuple[str, int, Path, float, int]:
    run_dir = out / f"{name}-g{group}-s{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "config.json"
    cfg_file.write_text(json.dumps(spec.get("config", {})))
    cmd = [sys.executable, "-m", "diet_engine", "bench", "--data", str(data), "--out", str(run_dir),
           "--methods", groups_of(spec)[group], "--models", models, "--seed", str(seed), "--seeds", "1",
           "--ratio", str(spec.get("ratio", 0.02)), "--config", str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DIET_TORCH_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        try:
            rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = -9
    return name, seed, run_dir, time.perf_counter() - t0, rc


def groups_of(spec: dict) -> list[str]:
    return spec.get("groups") or [spec["methods"]]


def merge(runs: list[tuple[int, dict]], models: list[str]) -> dict:
    """One summary of runs (seed, results.json), each holding some methods of one seed."""
    methods = list(dict.fromkeys(m for _, res in runs for m in res["results"]))
    cells = {m: {k: [] for k in models} for m in methods}
    for _, res in sorted(runs, key=lambda r: r[0]):
        for m in res["results"]:
            for k in models:
                c = res["results"][m][k]
                cells[m][k].append({"auc": c["auc"], "logloss": c["logloss"], "train_seconds": c["train_seconds"],
                                    "history_rows": c["history_rows"],
                                    "auc_repeats": c.get("auc_repeats", [[c["auc"]]])[0],  # one seed a run
                                    "distilled_valid_auc": [c.get("distilled_valid_auc")]})
    return summarise(cells, methods, models)


def set_valid(row: dict, models: list[str]) -> str:
    """Mean over models of the best validation AUC the set alone gave (methods with a set only)."""
    mean = mean_known(row[m].get("distilled_valid_auc") for m in models)
    return "-" if mean is None else f"{mean:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed+seeds-1 (fresh seeds check a choice out of sample)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--merge-only", action="store_true",
                    help="run nothing: merge the runs already under OUT (a sweep stopped before its end)")
    args = ap.parse_args()
    specs = json.loads(args.spec.read_text())
    models = args.models.split(",")
    jobs = [(n, s, g, seed) for n, s in specs.items() for g in range(len(groups_of(s)))
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    if args.merge_only:  # each run dir that holds a results.json counts as done, the others as failed
        done = [(n, seed, d, float("nan"), 0 if (d / "results.json").is_file() else -1)
                for n, s, g, seed in jobs for d in [args.out / f"{n}-g{g}-s{seed}"]]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda j: run_one(*j, args.data, args.out, args.models), jobs))
    merged, failures, loaded = {}, [], {}
    for n, seed, run_dir, seconds, rc in done:
        if rc != 0:
            failures.append(f"{n} seed {seed}: exit {rc}, see {run_dir / 'log.txt'}")
            continue
        res = json.loads((run_dir / "results.json").read_text())
        res["wall_seconds"] = seconds
        loaded.setdefault(n, []).append((seed, res))
    for name, spec in specs.items():
        runs = list(loaded.get(name, []))
        if spec.get("with") in loaded:  # the methods this configuration does not run, from another one's runs
            own = {m for g in groups_of(spec) for m in g.split(",")}
            for seed, res in loaded[spec["with"]]:
                borrowed = {m: r for m, r in res["results"].items() if m not in own}
                if borrowed:
                    runs.append((seed, {**res, "results": borrowed}))
        if runs:
            merged[name] = {**merge(runs, models), "wall_seconds": [r["wall_seconds"] for _, r in runs],
                            "phases": [r["phases"] for _, r in runs], "spec": specs[name]}
    (args.out / "sweep.json").write_text(json.dumps(merged, indent=2))
    print(f"{'config':<18} {'method':<8} " + " ".join(f"{m:>9}" for m in models) + "   mean±std(seeds)   tau    gap  set-valid")
    for name, res in merged.items():
        for method, row in res["results"].items():
            per_seed = [sum(row[m]["auc_seeds"][i] for m in models) / len(models) for i in range(len(row[models[0]]["auc_seeds"]))]
            mean = sum(per_seed) / len(per_seed)
            std = (sum((x - mean) ** 2 for x in per_seed) / len(per_seed)) ** 0.5
            tau = res["kendall_tau"].get(method, float("nan"))
            gap = res["gap_recovered"].get(method, float("nan"))
            print(f"{name:<18} {method:<8} " + " ".join(f"{row[m]['auc']:9.4f}" for m in models)
                  + f"   {mean:.4f}±{std:.4f}   {tau:+.2f}  {gap:+.2f}  {set_valid(row, models)}")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
