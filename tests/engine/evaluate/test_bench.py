"""The benchmark end to end on a small generated stream: its JSON contract and its determinism."""

import json

import pytest
import torch

from diet_engine.evaluate.bench import BenchConfig, agreement, gap, run_bench
from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig
from diet_engine.models import ModelConfig

ARCH = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])


def small_config(data, out, **kw) -> BenchConfig:
    return BenchConfig(
        data=data, out=out, models=["dcn", "finalnet"], ratio=0.05,
        reference=ReferenceConfig(arch=ARCH), candidate=CandidateConfig(arch=ARCH, distilled_epochs=2),
        distill=DistillConfig(outer_iters=3, inner_steps=3, window=2, inner_batch=8, target_pool_rows=300), **kw,
    )


def test_bench_writes_the_documented_results_and_repeats_itself(tiny_stream, tmp_path):
    _, root = tiny_stream
    methods = ["full", "cold", "warmup", "random", "el2n", "kmeans", "diet", "diet_no_ts"]
    first = run_bench(small_config(root, tmp_path / "a", methods=methods, seeds=2))
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["dataset"] == "tiny" and saved["ratio"] == 0.05
    assert set(saved["results"]) == set(methods)
    for method in methods:
        for model in ("dcn", "finalnet"):
            cell = saved["results"][method][model]
            assert {"auc", "logloss", "train_seconds", "history_rows"} <= set(cell)
            assert len(cell["auc_seeds"]) == 2 and cell["auc"] == pytest.approx(sum(cell["auc_seeds"]) / 2)
    rows = {m: saved["results"][m]["dcn"]["history_rows"] for m in methods}
    assert rows["full"] == 1200 and rows["cold"] == rows["warmup"] == 0
    assert all(rows[m] <= 0.05 * 1200 + 2 for m in ("random", "el2n", "kmeans", "diet"))
    assert saved["kendall_tau"]["full"] == pytest.approx(1.0) and saved["gap_recovered"]["full"] == pytest.approx(1.0)
    assert len(saved["kendall_tau_seeds"]) == 2
    lo, hi = saved["kendall_tau_interval"]["diet"]
    assert -1.0 <= lo <= hi <= 1.0 and saved["kendall_tau_interval"]["full"] == [1.0, 1.0]
    # what a set alone teaches: only methods that hand the candidate a set have it
    for method in methods:
        alone, valid = saved["results"][method]["dcn"]["set_only_auc"], saved["results"][method]["dcn"]["distilled_valid_auc"]
        if method in ("full", "cold", "warmup"):
            assert alone is None and valid is None
        else:
            assert 0.0 <= alone <= 1.0 and 0.0 <= valid <= 1.0
    assert set(saved["set_alone"]) == {"random", "el2n", "kmeans", "diet", "diet_no_ts"}
    assert saved["set_alone"]["diet"] == pytest.approx(sum(saved["results"]["diet"][k]["set_only_auc"] for k in ("dcn", "finalnet")) / 2)
    assert saved["best_reduced"] in ("warmup", "random", "el2n", "kmeans", "diet", "diet_no_ts")
    again = run_bench(small_config(root, tmp_path / "b", methods=methods, seeds=2))
    for method in methods:
        for model in ("dcn", "finalnet"):
            assert again["results"][method][model]["auc_seeds"] == first["results"][method][model]["auc_seeds"]


def test_unknown_methods_are_refused(tiny_stream, tmp_path):
    _, root = tiny_stream
    with pytest.raises(ValueError, match="unknown"):
        run_bench(small_config(root, tmp_path, methods=["full", "magic"]))


def test_rank_agreement_and_gap():
    auc = {"full": {"a": 0.7, "b": 0.6, "c": 0.65}, "cold": {"a": 0.6, "b": 0.5, "c": 0.55},
           "x": {"a": 0.65, "b": 0.55, "c": 0.6}, "y": {"a": 0.55, "b": 0.65, "c": 0.6}}
    tau = agreement(auc, ["a", "b", "c"])
    assert tau["x"] == pytest.approx(1.0) and tau["y"] == pytest.approx(-1.0)
    assert gap(auc, ["a", "b", "c"])["x"] == pytest.approx(0.5)


def test_candidate_repeats_average_candidates_of_distinct_seeds(tiny_stream, tmp_path):
    _, root = tiny_stream
    one = run_bench(small_config(root, tmp_path / "one", methods=["warmup", "random"], candidate_repeats=1))
    two = run_bench(small_config(root, tmp_path / "two", methods=["warmup", "random"], candidate_repeats=2))
    for method in ("warmup", "random"):
        for model in ("dcn", "finalnet"):
            alone, pair = one["results"][method][model], two["results"][method][model]
            (first, second), = pair["auc_repeats"]  # one seed, two candidates
            assert first == alone["auc"]  # the first candidate is the one a single repeat trains
            assert second != first and pair["auc"] == pytest.approx((first + second) / 2)
    assert json.loads((tmp_path / "two" / "results.json").read_text())["config"]["candidate_repeats"] == 2


def test_bench_command_takes_repeats_from_its_config_and_prints_the_set_alone_column(tiny_stream, tmp_path):
    from typer.testing import CliRunner

    from diet_engine.cli import app

    _, root = tiny_stream
    cfg = small_config(root, tmp_path, candidate_repeats=2)
    overrides = tmp_path / "config.json"
    # the file may name the device too (sweep.py writes it there); its value wins over the option's
    overrides.write_text(json.dumps(cfg.model_dump(mode="json", include={"candidate_repeats", "reference", "candidate", "distill", "device"})))
    result = CliRunner().invoke(app, ["bench", "--data", str(root), "--out", str(tmp_path / "out"), "--methods", "warmup,el2n",
                                      "--models", "dcn", "--ratio", "0.05", "--config", str(overrides), "--device", "cuda:7"])
    assert result.exit_code == 0, result.output
    assert "set alone" in result.output and "τ vs full" in result.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["candidate_repeats"] == 2 and saved["config"]["device"] == "cpu"
    assert len(saved["results"]["el2n"]["dcn"]["auc_repeats"][0]) == 2


def test_tau_b_matches_scipy_with_and_without_ties():
    import numpy as np
    from scipy.stats import kendalltau

    from diet_engine.evaluate.bench import kendall_tau_b

    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (200, 5)).astype(float)  # small integers: many ties
    y = rng.integers(0, 4, (200, 5)).astype(float)
    ours = kendall_tau_b(x, y)
    for row in range(200):
        theirs = kendalltau(x[row], y[row]).statistic
        assert (np.isnan(ours[row]) and np.isnan(theirs)) or ours[row] == pytest.approx(theirs)


def test_tau_interval_is_a_point_for_identical_candidates_and_widens_with_their_spread():
    from diet_engine.evaluate.bench import tau_interval

    models = ["a", "b", "c", "d"]
    full = {"a": 0.70, "b": 0.69, "c": 0.68, "d": 0.67}

    def cells(spread: float) -> dict:
        # method x ranks the models as full does; its candidates scatter by ±spread around each cell
        return {
            "full": {k: [{"auc": v, "auc_repeats": [v, v, v]}] for k, v in full.items()},
            "x": {k: [{"auc": v - 0.01, "auc_repeats": [v - 0.01 - spread, v - 0.01, v - 0.01 + spread]}] for k, v in full.items()},
        }

    tight = tau_interval(cells(0.0), ["full", "x"], models)
    assert tight["full"] == [1.0, 1.0] and tight["x"] == [1.0, 1.0]
    loose = tau_interval(cells(0.03), ["full", "x"], models)
    assert loose["x"][0] < 0.0 < loose["x"][1] <= 1.0  # candidates spread 3x the cells' gaps: the order is a draw
    assert tau_interval(cells(0.03), ["full", "x"], models) == loose  # seeded: the interval repeats
    assert tau_interval(cells(0.03), ["x"], models) == {}  # nothing to agree with


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_runs_every_phase_on_the_gpu_and_repeats_itself(tiny_stream, tmp_path):
    _, root = tiny_stream
    methods = ["full", "cold", "warmup", "random", "el2n", "kmeans", "diet"]
    first = run_bench(small_config(root, tmp_path / "a", methods=methods, device="cuda", candidate_repeats=1))
    again = run_bench(small_config(root, tmp_path / "b", methods=methods, device="cuda", candidate_repeats=1))
    cpu = run_bench(small_config(root, tmp_path / "c", methods=methods, candidate_repeats=1))
    for method in methods:
        for model in ("dcn", "finalnet"):
            auc = first["results"][method][model]["auc"]
            assert 0.0 < auc < 1.0
            assert again["results"][method][model]["auc"] == pytest.approx(auc, abs=1e-6)
            # the same maths as on the CPU, up to float rounding amplified by training
            assert auc == pytest.approx(cpu["results"][method][model]["auc"], abs=0.05)
