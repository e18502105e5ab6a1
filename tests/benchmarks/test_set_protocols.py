"""benchmarks/set_protocols.py: sets x protocols on one shared reference, each cell as `diet bench` trains it."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "set_protocols.py"
ARCH = {"embedding_dim": 4, "hidden": [8], "n_experts": 2, "expert_dim": 4, "tower_hidden": [4]}


def test_each_set_and_protocol_is_a_cell_and_the_reference_is_trained_once(tiny_stream, tmp_path):
    _, root = tiny_stream
    small = {"outer_iters": 2, "inner_steps": 2, "window": 1, "inner_batch": 8, "target_pool_rows": 100}
    spec = {"reference": {"arch": ARCH}, "models": ["dcn"], "ratio": 0.05,
            "sets": {"warmup": {"method": "warmup"}, "random": {"method": "random"}, "diet": {"distill": small}},
            "protocols": {"one": {"arch": ARCH, "distilled_epochs": 1, "finetune_lrs": [1e-3]},
                          "grid": {"arch": ARCH, "distilled_epochs": 1, "finetune_lrs": [1e-3, 1e-4]}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "rows.json"

    def run():
        done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "spec.json"), "--data", str(root), "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(out.read_text())["rows"]

    rows = run()
    assert [(r["set"], r["protocol"]) for r in rows] == [(s, p) for s in spec["sets"] for p in ("one", "grid")]
    assert all(0 < r["auc"] < 1 for r in rows)
    assert [r["set_alone"] is None for r in rows] == [True, True, False, False, False, False]
    assert {r["finetune_lr"] for r in rows if r["protocol"] == "one"} == {1e-3}
    cache = list((tmp_path / "reference-cache").glob("*/t*.safetensors"))
    assert len(cache) == 3  # checkpoints 0..2 of the tiny stream, kept by the bench's reference cache
    # a second run reads the cached reference and repeats every cell (timings aside)
    untimed = lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs]  # noqa: E731
    assert untimed(run()) == untimed(rows)
