"""benchmarks/distill_gpu.py in quick mode on the CPU: it runs the engine's phases, the fidelity methods by the
bench's protocol, and writes the documented JSON and table."""

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_gpu.py"
METHODS = ["full", "cold", "warmup", "random", "el2n", "diet"]
MODELS = ["dcn", "finalnet"]  # the two cheapest on a CPU; τ needs two


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    """One quick run (two models, every cheap method), its saved JSON and its printed table."""
    out = tmp_path_factory.mktemp("distill_gpu") / "run.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.main(["--quick", "--device", "cpu", "--out", str(out), "--models", ",".join(MODELS),
                    "--methods", ",".join(METHODS), "--block-rows", "4000", "--eval-rows", "1000",
                    "--outer-iters", "3", "--distilled-epochs", "2", "--budget-s", "1e9"])
    return json.loads(out.read_text()), printed.getvalue()


def test_quick_run_writes_phases_candidates_and_ratios(quick_run):
    saved, printed = quick_run
    assert saved["quick"] and saved["device"]["device"] == "cpu"
    assert saved["stream"]["rows"] == 3 * 4000 + 2 * 1000 and saved["stream"]["history_rows"] == 8_000
    assert [s["stage"] for s in saved["stages"]] == [1, 2]
    phases = {"h2d", "reference_epoch", "el2n_scoring", "memory_fusion", "target_pool", "addressing", "bilevel"}
    for stage in saved["stages"]:
        assert set(stage["phases"]) == phases
        assert all(p["seconds"] >= 0 and "peak_gb" in p for p in stage["phases"].values())
        assert stage["total_s"] == pytest.approx(sum(p["seconds"] for p in stage["phases"].values()))
        assert stage["bilevel"]["completed"] + stage["bilevel"]["skipped"] == 3
    # stage 2 keeps part of stage 1's memory, and the set holds ratio x history rows
    assert saved["stages"][1]["kept_rows"] > 0
    assert saved["stages"][1]["synthetic_rows"] == round(0.02 * 8_000)
    assert set(saved["candidates"]) == set(MODELS)
    for cell in saved["candidates"].values():
        assert set(cell["phases"]) == {"full_history", "full_subsequent", "distilled", "distilled_subsequent"}
        assert cell["history_rows"] == 8_000 and cell["distilled_rows"] == 160 and cell["distilled_epochs"] == 2
        assert 0 < cell["full_auc"] < 1 and 0 < cell["distilled_auc"] < 1 and cell["ratio_history"] > 0
    assert set(saved["ratios"]) == {"ratio_history", "ratio_per_epoch", "ratio_end_to_end"}
    assert 0 < saved["reference_variants"][0]["test_auc"] < 1
    assert saved["floors"]["reference_step"]["flops_per_row"] > 0
    # one outer iteration costs at least a forward and backward of the outer batch through the dense part
    assert saved["floors"]["bilevel_flops_per_outer_iter"] > 0
    # the cost targets are printed against the last stage's measurements (no GPU: no peak, so no verdict there)
    assert "targets (stage 2):" in printed
    stage_line = next(line for line in printed.splitlines() if line.strip().startswith("stage ") and "<= 15 s" in line)
    assert f"{saved['stages'][1]['total_s']:.4f} s" in stage_line


def test_fidelity_methods_beside_full_and_diet(quick_run):
    saved, printed = quick_run
    fid = saved["fidelity"]
    assert fid["methods"] == METHODS and fid["summarised"] == METHODS and fid["cells_skipped"] == []
    # each selection set and diet's hold ratio x history rows (80 of each 4,000-row block)
    assert {m: s["rows"] for m, s in fid["sets"].items()} == {"random": 160, "el2n": 160, "diet": 160}
    rows = {"full": 8_000, "cold": 0, "warmup": 0, "random": 160, "el2n": 160, "diet": 160}
    for method in METHODS:
        for model in MODELS:
            cell = fid["results"][method][model]
            assert 0 < cell["auc"] < 1 and math.isfinite(cell["logloss"])
            assert cell["history_rows"] == rows[method]
        assert -1 <= fid["kendall_tau"][method] <= 1
    assert fid["kendall_tau"]["full"] == 1
    assert fid["gap_recovered"]["full"] == pytest.approx(1) and fid["gap_recovered"]["cold"] == pytest.approx(0)
    # what each history set teaches before the fine-tune; the data methods have no set
    assert set(fid["set_alone"]) == {"random", "el2n", "diet"}
    assert all(0 < v < 1 for v in fid["set_alone"].values())
    # one printed row per method: its AUCs as saved and its τ
    table = printed[printed.index("fidelity: bench.run_cell"):].splitlines()
    for method in METHODS:
        line = next(row for row in table if row.split()[:1] == [method])
        for model in MODELS:
            assert f"{fid['results'][method][model]['auc']:.4f}" in line
        assert line.split()[-3] == f"{fid['kendall_tau'][method]:.2f}"


def test_out_is_a_json_file_or_a_directory(bench, tmp_path):
    assert bench.output_paths(tmp_path / "r.json") == (tmp_path / "r.json", tmp_path / "r.profile.txt")
    assert bench.output_paths(tmp_path / "d") == (tmp_path / "d" / "distill_gpu.json", tmp_path / "d" / "profile.txt")
    assert (tmp_path / "d").is_dir()


def test_unknown_method_is_refused(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--methods", "full,diett"])
    assert "unknown --methods ['diett']" in capsys.readouterr().err
