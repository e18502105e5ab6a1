"""Many history sets x candidate protocols on one shared reference: which set teaches, which fine-tune keeps it.

    python benchmarks/set_protocols.py SPEC.json --data DIR --out rows.json [--seed 0] [--device cpu]

SPEC.json: {"sets": {NAME: {"method": "random"|"kmeans"|...|"diet"|"warmup", "distill": {...}}},
            "protocols": {NAME: {...CandidateConfig fields...}}, "models": ["dcn", "wukong"],
            "reference": {...ReferenceConfig fields...}}
The reference is trained once (kept in `reference-cache/` beside `--out`, as bench.reference_checkpoints keeps it); each set is built from its checkpoints as
`diet bench` builds it (bench.history_sets) and each (set, protocol, model) cell is trained and tested by
bench.run_cell. One seed, one candidate a cell: a screen for the levers a multi-seed sweep then measures.
Prints one line per cell (test AUC, the set-alone AUC, the fine-tune rate chosen) and writes them all to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig  # noqa: E402
from diet_engine.evaluate.bench import BenchConfig, Splits, history_sets, prepare_data, reference_checkpoints, run_cell  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    spec = json.loads(args.spec.read_text())
    schema, root = prepare_data(args.data, args.out.parent)
    splits = Splits(schema, root, args.device)
    ref_cfg = ReferenceConfig(**{**spec.get("reference", {}), "seed": args.seed})
    t0 = time.perf_counter()
    # the bench's own cache (safetensors per checkpoint, keyed by data, settings and seed) beside --out
    refs, cached = reference_checkpoints(splits, root, ref_cfg, args.device, args.out.parent / "reference-cache")
    print(f"reference {ref_cfg.model}: {time.perf_counter() - t0:.0f} s{' (cached)' if cached else ''}", flush=True)
    rows = []
    for set_name, set_spec in spec["sets"].items():
        method, distill = set_spec.get("method", "diet"), DistillConfig(**set_spec.get("distill", {}))
        t0 = time.perf_counter()
        sets = history_sets([method], splits, refs, spec.get("ratio", 0.02), distill, args.seed, {}, args.device)
        print(f"set {set_name}: {time.perf_counter() - t0:.0f} s, {len(sets[method]) if sets else 0} rows", flush=True)
        for prot_name, prot in spec["protocols"].items():
            for model in spec.get("models", ["dcn", "wukong"]):
                cfg = BenchConfig(data=args.data, out=args.out.parent, device=args.device, candidate_repeats=1,
                                  candidate=CandidateConfig(**prot), distill=distill)
                cell = run_cell(method, model, splits, refs, sets, cfg, args.seed)
                row = {"set": set_name, "protocol": prot_name, "model": model, "auc": cell["auc"],
                       "set_alone": cell["set_only_auc"], "finetune_lr": cell["finetune_lr"][0],
                       "train_seconds": cell["train_seconds"]}
                rows.append(row)
                alone = "-" if row["set_alone"] is None else f"{row['set_alone']:.4f}"
                print(f"  {set_name:<22} {prot_name:<10} {model:<9} auc {row['auc']:.4f}  set alone {alone}  "
                      f"fine-tune lr {row['finetune_lr']}", flush=True)
    args.out.write_text(json.dumps({"seed": args.seed, "spec": spec, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
