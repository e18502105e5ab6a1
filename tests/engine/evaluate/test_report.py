"""The HTML reports: soft label rates, a dataset version's page, the bench's report.html, and Chromium rendering them."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from browser_support import keep_copy, plot_pixels, screenshot

from diet_engine.dataset.artifacts import save_synthetic
from diet_engine.evaluate.bench import BenchConfig, run_bench
from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig
from diet_engine.models import ModelConfig
from diet_engine.evaluate.report import dataset_report, render, soft_label_rates, synthetic_label_rates
from diet_engine.data.synthetic import SyntheticSet


def test_soft_label_rates_are_mean_sigmoids_per_stage_of_origin():
    stage = np.array([1, 1, 2, 2, 2])
    logits = np.array([[0.0, 50.0], [0.0, -50.0], [math.log(3), 0.0], [math.log(3), 0.0], [-math.log(3), 0.0]])
    rates = soft_label_rates(stage, logits, ["a", "b"])
    assert rates.rows == {1: 2, 2: 3}
    assert rates.rates[1] == pytest.approx({"a": 0.5, "b": 0.5})
    assert rates.rates[2] == pytest.approx({"a": (0.75 + 0.75 + 0.25) / 3, "b": 0.5})
    huge = soft_label_rates(np.array([1]), np.array([[-1e4]]), ["a"])  # no overflow warning, no NaN
    assert huge.rates[1]["a"] == pytest.approx(0.0)
    warm = soft_label_rates(np.array([1]), np.array([[2 * math.log(3)]]), ["a"], temperature=2.0)
    assert warm.rates[1]["a"] == pytest.approx(0.75) and warm.temperature == 2.0


def test_synthetic_label_rates_read_only_what_they_need(tmp_path):
    syn = SyntheticSet(torch.randn(6, 3, 4), torch.tensor([[2.0, -1.0]] * 3 + [[-2.0, 1.0]] * 3), torch.tensor([1, 1, 1, 2, 2, 3]))
    save_synthetic(tmp_path / "synthetic.parquet", syn, ["click", "buy"])
    with open(tmp_path / "synthetic.parquet", "rb") as fh:  # the service passes an open storage file
        rates = synthetic_label_rates(fh)
    assert rates.tasks == ["click", "buy"] and rates.rows == {1: 3, 2: 2, 3: 1}
    assert rates.rates[1]["click"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    assert rates.rates[3]["buy"] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())


def manifest(number: int, **extra) -> dict:
    stage = number
    return {
        "version": f"s@v{number}", "stream": "s", "number": number, "stage": stage,
        "parent": f"s@v{number - 1}" if number > 1 else None,
        "blocks": [{"id": i, "stage": i, "sha256": "0" * 64, "rows": 1000 * i} for i in range(1, stage + 1)],
        "rows": 20 * stage, "new_rows": 20, "kept_rows": 20 * (stage - 1), "history_rows": 1000 * stage,
        "ratio": 0.02, "config": {"reference": {"model": "dcn", "arch": {"embedding_dim": 8}}, "distill": {"address_every": 2}},
        "metrics": {"outer_loss": [0.7 - 0.01 * i for i in range(10)], "hard_loss_start": [0.72, 0.7, 0.69, 0.68, 0.66],
                    "timings": {"total_s": 3.5}},
        "artifacts": [{"name": "synthetic.parquet", "bytes": 2048, "sha256": "1" * 64, "url": "/x"}],
        "job": number, "created_at": "2026-01-0%dT10:00:00Z" % number, **extra,
    }  # fmt: skip


def version_page(tmp_path) -> str:
    lineage = [manifest(1), manifest(2, stream="s<script>")]
    distilled = soft_label_rates(np.array([1] * 20 + [2] * 20), np.zeros((40, 2)), ["like", "love"])
    report = dataset_report(lineage, {1: {"like": 0.57, "love": 0.21}, 2: {"like": 0.56, "love": 0.22}}, distilled)
    return render(report)


def test_a_version_page_holds_every_section_and_nothing_external(tmp_path):
    page = version_page(tmp_path)
    for section in ("summary", "lineage", "balance", "losses", "config"):
        assert f'<section id="{section}">' in page
    assert 'id="evaluation"' not in page  # no evaluation was run for a service version
    assert page.count("<svg") == 3  # sizes, label balance, loss curves
    assert "s@v1" in page and "s@v2" in page and "2.00%" in page and "0.570" in page and "0.500" in page
    assert "<script" not in page and "&lt;script&gt;" in page  # names are escaped, nothing runs
    external = re.findall(r'(?:src|href)\s*=\s*"(?!#|data:)[^"]+"', page) + re.findall(r"url\(\s*['\"]?http", page)
    assert external == []


def test_a_version_page_shows_its_diff_against_the_parent():
    from diet_engine.dataset.diff import DiffSide, diff_versions

    g = torch.Generator().manual_seed(0)
    parent = SyntheticSet(torch.randn(4, 3, 2, generator=g), torch.randn(4, 2, generator=g), torch.ones(4, dtype=torch.long),
                          torch.arange(12).reshape(4, 3), torch.zeros(4, 0))  # fmt: skip
    child = parent.take(torch.tensor([0, 2]))
    child.emb = child.emb + 1.0
    diff = diff_versions(DiffSide("s@v1", parent, ["like", "love"], {"distill": {"temperature": 1.0}}),
                         DiffSide("s@v2", child, ["like", "love"], {"distill": {"temperature": 2.0}}))  # fmt: skip
    distilled = soft_label_rates(np.array([1] * 2), np.zeros((2, 2)), ["like", "love"])
    page = render(dataset_report([manifest(1), manifest(2)], {}, distilled, diff=diff))
    assert '<section id="diff">' in page and "From s@v1 to s@v2" in page
    assert f"2 kept rows moved by {diff.drift.mean:.4f} on average" in page and "distill.temperature" in page
    purged = render(dataset_report([manifest(1), manifest(2)], {}, distilled, diff_note="s@v1 was purged"))
    assert '<section id="diff">' in purged and "s@v1 was purged" in purged
    assert 'id="diff"' not in render(dataset_report([manifest(1)], {}, distilled))


def test_bench_writes_report_html_that_chromium_renders(tiny_stream, tmp_path):
    _, root = tiny_stream
    methods = ["full", "cold", "random", "diet"]
    arch = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])
    cfg = BenchConfig(
        data=root, out=tmp_path / "bench", methods=methods, models=["dcn", "finalnet"], ratio=0.05,
        reference=ReferenceConfig(arch=arch), candidate=CandidateConfig(arch=arch, distilled_epochs=2),
        distill=DistillConfig(outer_iters=6, inner_steps=3, window=2, inner_batch=8, target_pool_rows=300, address_every=2),
    )  # fmt: skip
    result = run_bench(cfg)
    page = (tmp_path / "bench" / "report.html").read_text()
    assert 'id="evaluation"' in page and 'id="balance"' in page and 'id="losses"' in page
    for method in methods:
        assert f"<td>{method}" in page
    dcn = result["results"]["full"]["dcn"]
    assert f"{dcn['auc']:.4f}" in page and f"{dcn['logloss']:.4f}" in page
    assert "set alone" in page and f"<td>{result['set_alone']['diet']:.4f}</td></tr>" in page
    # the fidelity table and the paper's Figure 1: each candidate's AUC under a method against full data's
    assert 'id="fidelity"' in page and "ρ vs full [90 %]" in page and "top-1 regret" in page
    assert "warmup→full recovered" in page and "noise ceiling" in page.lower() and "y = x" in page
    assert f"<td>{result['top1_regret']['diet']:.4f}</td>" in page

    image = screenshot((tmp_path / "bench" / "report.html").as_uri(), tmp_path / "bench.png", tmp_path / "chromium")
    keep_copy(tmp_path / "bench.png", "bench-report.png")
    assert image.shape[0] >= 2000 and image.shape[1] >= 1200
    assert plot_pixels(image) > 2000, "the inline SVG plots did not render"


def test_a_version_page_plots_tau_over_the_audited_versions_and_flags_the_low_ones():
    from diet_engine.evaluate.report import AuditRow

    distilled = soft_label_rates(np.array([1] * 20), np.zeros((20, 2)), ["like", "love"])
    audits = [
        AuditRow(version="s@v1", kendall_tau=0.8, top1_regret=0.0, mean_auc=0.71, full_mean_auc=0.72, alarm=False),
        AuditRow(version="s@v2", kendall_tau=0.2, top1_regret=0.0125, mean_auc=0.69, full_mean_auc=0.72, alarm=True),
    ]
    page = render(dataset_report([manifest(1)], {1: {"like": 0.5, "love": 0.2}}, distilled, audits=audits, audit_threshold=0.6))
    assert '<section id="audits">' in page and "threshold is τ = 0.6" in page
    assert page.count("<svg") == 4  # τ over the audited versions beside the others
    assert page.count("τ below threshold") == 1 and "+0.20" in page and "0.0125" in page
    assert 'id="audits"' not in render(dataset_report([manifest(1)], {1: {"like": 0.5, "love": 0.2}}, distilled))
