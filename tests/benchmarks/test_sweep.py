"""benchmarks/sweep.py: configurations x method groups x seeds as processes, merged into one summary."""

import json
import subprocess
import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep.py"
ARCH = {"embedding_dim": 4, "hidden": [8], "n_experts": 2, "expert_dim": 4, "tower_hidden": [4]}
SMALL = {
    "candidate_repeats": 1,
    "reference": {"arch": ARCH},
    "candidate": {"arch": ARCH, "distilled_epochs": 1},
    "distill": {"outer_iters": 2, "inner_steps": 2, "window": 1, "inner_batch": 8, "target_pool_rows": 100},
}


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

