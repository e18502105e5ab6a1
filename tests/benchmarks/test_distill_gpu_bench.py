"""benchmarks/distill_gpu.py in quick mode on the CPU: it runs the engine's phases and writes the documented JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_phases_candidates_and_ratios(bench, tmp_path):
    bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--models", "wukong",
                "--block-rows", "4000", "--eval-rows", "1000", "--outer-iters", "3", "--distilled-epochs", "2"])
    saved = json.loads((tmp_path / "distill_gpu.json").read_text())
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
    assert set(saved["candidates"]) == {"wukong"}
    for cell in saved["candidates"].values():
        assert set(cell["phases"]) == {"full_history", "full_subsequent", "distilled", "distilled_subsequent"}
        assert cell["history_rows"] == 8_000 and cell["distilled_rows"] == 160 and cell["distilled_epochs"] == 2
        assert 0 < cell["full_auc"] < 1 and 0 < cell["distilled_auc"] < 1 and cell["ratio_history"] > 0
    assert set(saved["ratios"]) == {"ratio_history", "ratio_per_epoch", "ratio_end_to_end"}
    assert 0 < saved["reference_variants"][0]["test_auc"] < 1
    assert saved["floors"]["reference_step"]["flops_per_row"] > 0
    # one outer iteration costs at least a forward and backward of the outer batch through the dense part
    assert saved["floors"]["bilevel_flops_per_outer_iter"] > 0
