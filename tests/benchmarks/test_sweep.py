"""benchmarks/sweep.py: configurations x method groups x seeds as processes, merged into the statistics one
multi-seed bench run computes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diet_engine.evaluate.bench import summarise

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep.py"
METHODS = ["full", "cold", "warmup", "random"]
CANDIDATES = ["dcn-s", "dcn", "dcn-l", "wukong-s", "wukong", "wukong-l"]
ARCH = {"embedding_dim": 4, "hidden": [8], "n_experts": 2, "expert_dim": 4, "tower_hidden": [4]}
SMALL = {
    "candidate_repeats": 1,
    "reference": {"arch": ARCH},
    "candidate": {"arch": ARCH, "distilled_epochs": 1},
    "distill": {"outer_iters": 2, "inner_steps": 2, "window": 1, "inner_batch": 8, "target_pool_rows": 100},
}


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(rng: np.random.Generator, method: str) -> dict:
    """What bench.run_cell returns for one seed, with made-up numbers."""
    repeats = (0.7 + rng.normal(0, 0.01, 3)).tolist()
    has_set = method == "random"
    return {"auc": float(np.mean(repeats)), "logloss": float(rng.uniform(0.4, 0.6)), "train_seconds": 1.0,
            "history_rows": 24, "auc_repeats": repeats, "best_epoch": [1], "best_lr": [1e-3],
            "distilled_valid_auc": [float(rng.uniform(0.6, 0.7))] if has_set else [None],
            "set_only_auc": float(rng.uniform(0.6, 0.7)) if has_set else None}  # fmt: skip


def one_seed_results(cells: dict, seed: int, methods: list[str]) -> dict:
    """A bench results.json of one seed and some methods (a method group), as run_bench writes it."""
    one = {m: {k: [runs[seed]] for k, runs in cells[m].items()} for m in methods}
    return {"dataset": "tiny", "ratio": 0.05, "pool": "p15", "seeds": [seed], **summarise(one, methods, CANDIDATES),
            "config": {"models": ["dcn", "wukong"]}, "phases": []}


def test_merged_one_seed_runs_give_the_statistics_of_one_multi_seed_run(sweep, capsys):
    rng = np.random.default_rng(0)
    cells = {m: {k: [cell(rng, m) for _ in range(3)] for k in CANDIDATES} for m in METHODS}
    expected = summarise(cells, METHODS, CANDIDATES)
    groups = [["full", "cold"], ["warmup", "random"]]  # each seed's methods in two processes, through JSON, any order
    runs = [(s, json.loads(json.dumps(one_seed_results(cells, s, g)))) for s in (2, 0, 1) for g in groups]
    merged = sweep.merge(runs)
    assert merged["seeds"] == [0, 1, 2] and merged["incomplete_seeds"] == []
    assert merged["pool"] == "p15" and merged["candidates"] == CANDIDATES and list(merged["results"]) == METHODS
    for key in ("mean_auc", "kendall_tau", "kendall_tau_interval", "spearman_rho", "spearman_rho_interval",
                "interval_widened", "top1", "top1_regret", "gap_recovered", "warmup_gap_recovered", "noise_ceiling",
                "kendall_tau_seeds", "set_alone", "best_reduced"):
        assert merged[key] == pytest.approx(expected[key]) if isinstance(expected[key], float) else merged[key] == expected[key], key
    for m in METHODS:
        for k in CANDIDATES:
            ours, theirs = merged["results"][m][k], expected["results"][m][k]
            for field in ("auc_seeds", "auc_repeats", "set_only_auc_seeds", "history_rows"):
                assert ours[field] == theirs[field], field
            for field in ("auc", "auc_std", "logloss", "set_only_auc", "distilled_valid_auc"):
                assert (ours[field] is None and theirs[field] is None) or ours[field] == pytest.approx(theirs[field]), field
    assert merged["noise_ceiling"]["splits"] == 3 and merged["set_alone"]["random"] is not None
    # a P15 sweep also states the statistics of its P5 members (the default sizes) on their own
    p5 = {m: {k: cells[m][k] for k in ("dcn", "wukong")} for m in METHODS}
    assert merged["p5"]["candidates"] == ["dcn", "wukong"]
    assert merged["p5"]["kendall_tau"] == summarise(p5, METHODS, ["dcn", "wukong"])["kendall_tau"]
    # a group that failed on seed 1: the statistics keep to the seeds every method has
    partial = sweep.merge([r for r in runs if not (r[0] == 1 and "warmup" in r[1]["results"])])
    assert partial["seeds"] == [0, 2] and partial["incomplete_seeds"] == [1]
    assert partial["results"]["full"]["dcn"]["auc_seeds"] == expected["results"]["full"]["dcn"]["auc_seeds"][::2]
    sweep.print_summary("cfg", merged)
    out = capsys.readouterr().out
    assert "cfg (pool P15, seeds [0, 1, 2])" in out and "noise ceiling" in out and "dcn-l" in out


def test_a_method_whose_candidates_ran_in_several_processes_merges_per_candidate(sweep):
    rng = np.random.default_rng(1)
    cells = {m: {k: [cell(rng, m) for _ in range(2)] for k in CANDIDATES} for m in METHODS}
    expected = summarise(cells, METHODS, CANDIDATES)

    def part(seed: int, methods: list[str], candidates: list[str]) -> dict:
        one = {m: {k: [cells[m][k][seed]] for k in candidates} for m in methods}
        return {"dataset": "tiny", "ratio": 0.05, "pool": "p15", "seeds": [seed], "candidates": candidates,
                "results": summarise(one, methods, candidates)["results"], "config": {"models": []}, "phases": []}

    # full@wukong first and full@dcn second: the merged candidates keep the pool's order
    runs = [(s, part(s, ["full"], CANDIDATES[3:])) for s in (0, 1)] + [(s, part(s, ["full"], CANDIDATES[:3])) for s in (0, 1)]
    runs += [(s, part(s, ["cold", "warmup", "random"], CANDIDATES)) for s in (0, 1)]
    merged = sweep.merge(runs)
    assert merged["candidates"] == CANDIDATES and merged["seeds"] == [0, 1]
    assert merged["kendall_tau"] == pytest.approx(expected["kendall_tau"])
    assert merged["results"]["full"]["dcn-l"]["auc_seeds"] == expected["results"]["full"]["dcn-l"]["auc_seeds"]
    # seed 1 of full@dcn missing: that seed is incomplete for every method, not a seed with half a pool
    partial = sweep.merge([r for r in runs if not (r[0] == 1 and r[1]["candidates"] == CANDIDATES[:3])])
    assert partial["seeds"] == [0] and partial["incomplete_seeds"] == [1]


def test_sweep_runs_its_seeds_as_bench_processes_with_the_pool(sweep, tiny_stream, tmp_path, monkeypatch):
    _, root = tiny_stream
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"small": {"methods": "full,cold", "ratio": 0.05, "config": SMALL}}))
    monkeypatch.setattr(sys, "argv", ["sweep.py", str(spec), "--data", str(root), "--out", str(tmp_path / "out"),
                                      "--jobs", "2", "--seeds", "2", "--models", "dcn", "--pool", "p15"])
    assert sweep.main() == 0
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())["small"]
    assert saved["candidates"] == ["dcn-s", "dcn", "dcn-l"] and saved["seeds"] == [0, 1]
    assert saved["kendall_tau"]["full"] == 1.0 and saved["noise_ceiling"]["splits"] == 1
    per_seed = [json.loads((tmp_path / "out" / f"small-g0-s{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["results"]["cold"]["dcn-l"]["auc"] for r in per_seed] == saved["results"]["cold"]["dcn-l"]["auc_seeds"]


def test_method_groups_of_one_configuration_merge_into_one_summary_per_seed(tiny_stream, tmp_path):
    _, root = tiny_stream
    spec = {"small": {"groups": ["full,cold", "warmup,random"], "ratio": 0.05, "config": SMALL},
            "other": {"methods": "random", "ratio": 0.05, "with": "small",
                      "config": {**SMALL, "distill": {**SMALL["distill"], "seed": 1}, "candidate": {**SMALL["candidate"], "temperature": 1.0}}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SWEEP), str(tmp_path / "spec.json"), "--data", str(root), "--out", str(out),
                           "--seeds", "2", "--jobs", "2", "--models", "dcn,wukong"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    merged = json.loads((out / "sweep.json").read_text())["small"]
    assert set(merged["results"]) == {"full", "cold", "warmup", "random"}
    for method, row in merged["results"].items():
        for model in ("dcn", "wukong"):
            assert len(row[model]["auc_seeds"]) == 2, (method, model)
    # each seed's cells came from that seed's processes: the full cells are those of the full group's runs
    for seed in (0, 1):
        res = json.loads((out / f"small-g0-s{seed}" / "results.json").read_text())
        assert merged["results"]["full"]["dcn"]["auc_seeds"][seed] == res["results"]["full"]["dcn"]["auc"]
    assert merged["kendall_tau"]["full"] == 1.0 and "random" in merged["kendall_tau"]
    assert "warmup" in done.stdout and "cold" in done.stdout
    # "with": the other configuration's own random cells, small's full/cold/warmup cells
    other = json.loads((out / "sweep.json").read_text())["other"]
    assert set(other["results"]) == {"full", "cold", "warmup", "random"}
    assert other["results"]["full"] == merged["results"]["full"]
    assert other["results"]["random"]["dcn"]["auc_seeds"] != merged["results"]["random"]["dcn"]["auc_seeds"]

    # a sweep stopped before its end is merged from the runs it left: the same summary again
    (out / "sweep.json").unlink()
    again = subprocess.run([sys.executable, str(SWEEP), str(tmp_path / "spec.json"), "--data", str(root), "--out", str(out),
                            "--seeds", "2", "--models", "dcn,wukong", "--merge-only"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    remerged = json.loads((out / "sweep.json").read_text())
    assert remerged["small"]["results"] == merged["results"] and remerged["other"]["results"] == other["results"]

    # the same sweep again runs nothing that already has its results (a stopped sweep is finished so); a group
    # naming its own architectures ("full@wukong") trains only those candidates
    before = {d.name: (d / "results.json").stat().st_mtime_ns for d in out.iterdir() if d.is_dir()}
    spec["small"]["groups"].append("full@wukong")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    third = subprocess.run([sys.executable, str(SWEEP), str(tmp_path / "spec.json"), "--data", str(root), "--out", str(out),
                            "--seeds", "2", "--jobs", "2", "--models", "dcn,wukong"], capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    assert {d: (out / d / "results.json").stat().st_mtime_ns for d in before} == before
    only = json.loads((out / "small-g2-s0" / "results.json").read_text())
    assert list(only["results"]) == ["full"] and only["candidates"] == ["wukong"]



def test_a_p5_configuration_borrows_the_default_size_cells_of_a_p15_one(tiny_stream, tmp_path):
    _, root = tiny_stream
    spec = {"big": {"groups": ["full,random"], "ratio": 0.05, "config": SMALL},
            "small": {"pool": "p5", "with": "big", "groups": ["warmup"], "ratio": 0.05, "config": SMALL}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SWEEP), str(tmp_path / "spec.json"), "--data", str(root), "--out", str(out),
                           "--seeds", "1", "--jobs", "2", "--models", "dcn,wukong", "--pool", "p15"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    merged = json.loads((out / "sweep.json").read_text())
    assert merged["big"]["candidates"] == CANDIDATES and merged["small"]["candidates"] == ["dcn", "wukong"]
    assert merged["small"]["pool"] == "p5" and set(merged["small"]["results"]) == {"full", "random", "warmup"}
    for method in ("full", "random"):
        for model in ("dcn", "wukong"):
            assert merged["small"]["results"][method][model] == merged["big"]["results"][method][model]
    assert json.loads((out / "small-g0-s0" / "results.json").read_text())["candidates"] == ["dcn", "wukong"]
