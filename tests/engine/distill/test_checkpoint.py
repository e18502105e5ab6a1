"""Resumable stages: a stage stopped mid-loop and run again from its checkpoint gives the same bytes."""

import subprocess
import sys

import pytest

from diet_engine.dataset.artifacts import REFERENCE, SYNTHETIC, reference_info
from diet_engine.distill.checkpoint import LOOP_CHECKPOINT, REFERENCE_CHECKPOINT, StageCheckpoint
from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.distill.stage import StageProgress, distill_stage
from diet_engine.models import ModelConfig

SMALL = ModelConfig(embedding_dim=4, hidden=[8], n_experts=2, expert_dim=4, tower_hidden=[4])
REF = ReferenceConfig(arch=SMALL, train={"batch_size": 64})
CFG = DistillConfig(ratio=0.05, outer_iters=12, address_every=5, inner_steps=3, window=2, inner_batch=8, target_pool_rows=200)


class Killed(Exception):
    """Stands in for the process dying: the stage stops where it is."""


def run(stream, stage, out, previous=None, checkpoint=None, stop_at=None, config=CFG):
    schema, root = stream

    def progress(update: StageProgress) -> None:
        if stop_at is not None and (update.phase, update.step) == stop_at:
            raise Killed

    return distill_stage(
        schema, root / f"h{stage}.parquet", stage, out, previous=previous,
        reference=REF, config=config, progress=progress, checkpoint=checkpoint,
    )  # fmt: skip


def same_bytes(a, b):
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in (SYNTHETIC, REFERENCE))


# the pool of fresh proxies (distill/proxy.py) is loop state too: its weights and moments must resume
POOLED = CFG.model_copy(update={"proxy_init": "pool", "proxy_models": ["dcn", "wukong"], "pool_size": 2,
                                "pool_horizon": 7, "pool_advance": 2})


@pytest.mark.parametrize(("stage", "config"), [(1, CFG), (2, CFG), (2, POOLED)], ids=["s1", "s2", "s2-pool"])
def test_a_stage_resumed_from_its_checkpoint_equals_an_undisturbed_one(tiny_stream, tmp_path, stage, config):
    previous = None
    if stage == 2:
        previous = tmp_path / "v1"
        run(tiny_stream, 1, previous, config=config)
    run(tiny_stream, stage, tmp_path / "undisturbed", previous, config=config)

    saved = []
    first = StageCheckpoint(tmp_path / "ck", every=4, on_save=lambda p: saved.append(p.name))
    with pytest.raises(Killed):
        run(tiny_stream, stage, tmp_path / "resumed", previous, first, stop_at=("optimise", 10), config=config)
    # saved at the top of iterations 4 and 8; 8 is not a multiple of address_every, so the plan goes along
    assert saved == [REFERENCE_CHECKPOINT, LOOP_CHECKPOINT, LOOP_CHECKPOINT]
    assert not list((tmp_path / "ck").glob(".*tmp"))

    again = StageCheckpoint(tmp_path / "ck", every=4)
    result = run(tiny_stream, stage, tmp_path / "resumed", previous, again, config=config)
    assert again.resumed == result.metrics["resumed"] == {"reference": 1, "loop": 8}
    assert same_bytes(tmp_path / "undisturbed", tmp_path / "resumed")
    assert len(result.metrics["outer_loss"]) + result.metrics["skipped_steps"] == CFG.outer_iters


def test_a_checkpoint_of_other_inputs_is_not_resumed(tiny_stream, tmp_path):
    first = StageCheckpoint(tmp_path / "ck", every=4)
    with pytest.raises(Killed):
        run(tiny_stream, 1, tmp_path / "a", checkpoint=first, stop_at=("optimise", 6))
    assert (tmp_path / "ck" / LOOP_CHECKPOINT).exists()

    schema, root = tiny_stream
    other = StageCheckpoint(tmp_path / "ck", every=4)
    distill_stage(
        schema, root / "h1.parquet", 1, tmp_path / "b", previous=None, reference=REF,
        config=CFG.model_copy(update={"seed": 1}), checkpoint=other,
    )  # fmt: skip
    assert other.resumed == {}  # another seed: started afresh, the old files were dropped


def test_reference_artifacts_have_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes its metadata in hash order, which differs per process; ours is sorted."""
    script = (
        "import sys, torch; from diet_engine.dataset.artifacts import save_reference; "
        "from diet_engine.models import build_model, ModelConfig; sys.path.insert(0, 'tests'); "
        "from engine_support import tiny_schema; torch.manual_seed(0); arch = ModelConfig(embedding_dim=4, hidden=[8]); "
        "save_reference(__import__('pathlib').Path(sys.argv[1]), build_model('dcn', tiny_schema(), arch), arch, 2, 99)"
    )
    for name in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()
    assert reference_info(tmp_path / "a").history_rows == 99
