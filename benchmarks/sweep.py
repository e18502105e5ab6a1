"""Run several `diet bench` configurations × seeds as parallel processes and compare them.

    python benchmarks/sweep.py SPEC.json --data DIR --out OUT [--jobs 16] [--seeds 3] [--first-seed 0] [--pool p15]

SPEC.json maps a name to `{"methods": "a,b", "config": {...bench --config overrides...}}`; with
`"groups": ["full,cold", "diet"]` instead of "methods", each group of methods runs as its own process
(a group written "full@dcn,wukong" trains only those architectures' candidates: full data's cells, the
dearest, can so be spread over several processes and merged back per candidate); `"pool": "p5"` gives a
configuration its own pool (a P5 one that borrows from a P15 one takes the default-size cells)
and `"with": "OTHER"` merges in OTHER's cells of the methods this one does not run (full data and cold
start do not depend on the reference, so several configurations can share them);
(one GPU takes many such processes at once: each is bound by its own kernel launches). Each
(name, group, seed) runs as its own single-threaded process; results are merged per name into the
bench's summary (bench.summarise: means over seeds and the fidelity statistics of evaluate/fidelity.py,
exactly as one multi-seed `diet bench` computes them), printed as one table per configuration and
written to OUT/sweep.json. A run whose folder already holds a results.json is not run again (`--rerun` runs
it anyway): a sweep stopped part-way is finished by the same command.
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
from diet_engine.evaluate.report import interval_text, share_text, signed_text  # noqa: E402
from diet_engine.evaluate.pool import candidate_pool  # noqa: E402
from diet_engine.models import MODELS, ModelConfig  # noqa: E402


TIMEOUT_S = float(os.environ.get("SWEEP_JOB_TIMEOUT_S", "3600"))


def run_one(
    name: str, spec: dict, group: int, seed: int, data: Path, out: Path, models: str, pool: str, rerun: bool = False
) -> tuple[str, int, Path, float, int]:
    run_dir = out / f"{name}-g{group}-s{seed}"
    if (run_dir / "results.json").is_file() and not rerun:
        return name, seed, run_dir, float("nan"), 0
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "config.json"
    cfg_file.write_text(json.dumps(spec.get("config", {})))
    methods, _, own_models = groups_of(spec)[group].partition("@")
    cmd = [sys.executable, "-m", "diet_engine", "bench", "--data", str(data), "--out", str(run_dir),
           "--methods", methods, "--models", own_models or models, "--pool", pool, "--seed", str(seed), "--seeds", "1",
           "--ratio", str(spec.get("ratio", 0.02)), "--config", str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DIET_TORCH_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        try:
            rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = -9
    return name, seed, run_dir, time.perf_counter() - t0, rc


def pool_of(spec: dict, default: str) -> str:
    """A configuration's own pool (`"pool": "p5"` in the spec) or the sweep's."""
    return spec.get("pool", default)


def groups_of(spec: dict) -> list[str]:
    return spec.get("groups") or [spec["methods"]]


def merge(runs: list[tuple[int, dict]]) -> dict:
    """Runs (seed, results.json), each holding some methods of some seeds (a method group, or cells borrowed
    from another configuration), merged as one multi-seed bench run would summarise them: every method's
    cells seed by seed, then bench.summarise. Only seeds that every method has count (a failed group's
    seed is listed under `incomplete_seeds`): the statistics compare methods on the same seeds."""
    methods = list(dict.fromkeys(m for _, res in runs for m in res["results"]))
    first = runs[0][1]
    ran = {k for _, res in runs for k in res.get("candidates") or res["config"]["models"]}
    # the pool's own order (architectures, then sizes), whichever process trained which candidate
    order = [c.name for c in candidate_pool(first.get("pool", "p5"), list(MODELS), ModelConfig())]
    candidates = [k for k in order if k in ran]
    by_seed: dict[str, dict[int, dict[str, dict]]] = {m: {} for m in methods}  # method -> seed -> candidate -> cell
    for _, res in runs:
        for m, row in res["results"].items():
            for i, seed in enumerate(res["seeds"]):
                by_seed[m].setdefault(seed, {}).update({k: seed_cell(cell, i) for k, cell in row.items()})
    for per in by_seed.values():  # a seed counts for a method only once every candidate has its cell
        for seed in [s for s, cells in per.items() if set(cells) != set(candidates)]:
            del per[seed]
    every = set.intersection(*(set(per) for per in by_seed.values()))
    seeds = sorted(every)
    cells = {m: {k: [by_seed[m][s][k] for s in seeds] for k in candidates} for m in methods}
    incomplete = sorted(set().union(*(set(per) for per in by_seed.values())) - every)
    out = {"dataset": first["dataset"], "ratio": first["ratio"], "pool": first.get("pool", "p5"), "seeds": seeds,
           "incomplete_seeds": incomplete, **summarise(cells, methods, candidates)}
    defaults = [k for k in candidates if k in MODELS]
    if out["pool"] == "p15" and len(defaults) > 1:  # P15 holds P5 (the default sizes): its statistics too
        out["p5"] = {"pool": "p5", "seeds": seeds, **summarise({m: {k: cells[m][k] for k in defaults} for m in methods},
                                                               methods, defaults)}
    return out


def seed_cell(cell: dict, i: int) -> dict:
    """Seed number i of a results.json cell, as bench.run_cell returned it (what bench.summarise reads)."""
    return {"auc": cell["auc_seeds"][i], "logloss": cell["logloss_seeds"][i], "train_seconds": cell["train_seconds"],
            "history_rows": cell["history_rows"], "auc_repeats": cell.get("auc_repeats", [[cell["auc"]]])[i],
            "distilled_valid_auc": [cell.get("distilled_valid_auc")],
            "set_only_auc": cell.get("set_only_auc_seeds", [cell.get("set_only_auc")])[i]}  # fmt: skip


def set_valid(row: dict, models: list[str]) -> str:
    """Mean over models of the best validation AUC the set alone gave (methods with a set only)."""
    mean = mean_known(row[m].get("distilled_valid_auc") for m in models)
    return "-" if mean is None else f"{mean:.4f}"


def print_summary(name: str, res: dict) -> None:
    """One line per method: the pool's AUCs, their mean ± std over seeds and the fidelity statistics."""
    candidates = res["candidates"]
    print(f"{name} (pool {res['pool'].upper()}, seeds {res['seeds']})")
    print(f"  {'method':<11}" + " ".join(f"{c:>10}" for c in candidates) + "   mean±std(seeds)   τ [90 %]            "
          "ρ [90 %]            regret  cold→  warm→  set alone  set valid")
    for method, row in res["results"].items():
        n = len(row[candidates[0]]["auc_seeds"])
        per_seed = [sum(row[c]["auc_seeds"][i] for c in candidates) / len(candidates) for i in range(n)]
        mean = sum(per_seed) / n
        std = (sum((x - mean) ** 2 for x in per_seed) / n) ** 0.5
        alone = res["set_alone"].get(method)
        print(f"  {method:<11}" + " ".join(f"{row[c]['auc']:10.4f}" for c in candidates)
              + f"   {mean:.4f}±{std:.4f}   "
              + f"{interval_text(res['kendall_tau'].get(method), res['kendall_tau_interval'].get(method)):<19} "
              + f"{interval_text(res['spearman_rho'].get(method), res['spearman_rho_interval'].get(method)):<19} "
              + f"{res['top1_regret'].get(method, float('nan')):.4f}  "
              + f"{share_text(res['gap_recovered'].get(method)):>5}  {share_text(res['warmup_gap_recovered'].get(method)):>5}  "
              + f"{'-' if alone is None else f'{alone:.4f}':>9}  {set_valid(row, candidates):>9}")
    ceiling = res.get("noise_ceiling")
    if ceiling:
        print(f"  noise ceiling (full's own, disjoint halves of the seeds): τ {signed_text(ceiling['kendall_tau'])}, "
              f"ρ {signed_text(ceiling['spearman_rho'])}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed … first-seed+seeds-1 (fresh seeds check a choice out of sample)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--pool", default="p5", choices=["p5", "p15"], help="candidate pool (diet bench --pool)")
    ap.add_argument("--rerun", action="store_true", help="run again the runs that already have a results.json")
    ap.add_argument("--merge-only", action="store_true",
                    help="run nothing: merge the runs already under OUT (a sweep stopped before its end)")
    args = ap.parse_args()
    specs = json.loads(args.spec.read_text())
    jobs = [(n, s, g, seed) for n, s in specs.items() for g in range(len(groups_of(s)))
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    if args.merge_only:  # each run dir that holds a results.json counts as done, the others as failed
        done = [(n, seed, d, float("nan"), 0 if (d / "results.json").is_file() else -1)
                for n, s, g, seed in jobs for d in [args.out / f"{n}-g{g}-s{seed}"]]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda j: run_one(*j, args.data, args.out, args.models, pool_of(j[1], args.pool), args.rerun),
                                 jobs))
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
            own = {m for g in groups_of(spec) for m in g.partition("@")[0].split(",")}
            # a P5 configuration may borrow from a P15 one: its default-size cells, which are P5's
            pool = pool_of(spec, args.pool)
            mine = {c.name for c in candidate_pool(pool, list(MODELS), ModelConfig())}
            for seed, res in loaded[spec["with"]]:
                borrowed = {m: {k: c for k, c in r.items() if k in mine} for m, r in res["results"].items() if m not in own}
                if borrowed:
                    kept = [k for k in res.get("candidates") or res["config"]["models"] if k in mine]
                    runs.append((seed, {**res, "pool": pool, "candidates": kept, "results": borrowed}))
        if runs:
            merged[name] = {**merge(runs), "wall_seconds": [r["wall_seconds"] for _, r in runs],
                            "phases": [r["phases"] for _, r in runs], "spec": specs[name]}
    (args.out / "sweep.json").write_text(json.dumps(merged, indent=2))
    for name, res in merged.items():
        print_summary(name, res)
        if "p5" in res:
            print_summary(f"{name} (its P5 members)", res["p5"])
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
