import torch

from diet_engine.dataset.artifacts import load_embedding_tables, load_reference, load_synthetic, save_reference, save_synthetic
from diet_engine.models import ModelConfig, build_model
from diet_engine.data.synthetic import SyntheticSet

from engine_support import tiny_schema


def test_synthetic_parquet_round_trips_bit_for_bit(tmp_path):
    g = torch.Generator().manual_seed(0)
    syn = SyntheticSet(torch.randn(33, 4, 8, generator=g), torch.randn(33, 2, generator=g) * 5, torch.randint(1, 4, (33,), generator=g))
    save_synthetic(tmp_path / "s.parquet", syn, ["click", "buy"])
    back, tasks = load_synthetic(tmp_path / "s.parquet")
    assert tasks == ["click", "buy"]
    assert torch.equal(back.emb, syn.emb) and torch.equal(back.logits, syn.logits) and torch.equal(back.stage, syn.stage)


def test_synthetic_anchors_round_trip(tmp_path):
    g = torch.Generator().manual_seed(1)
    for numeric in (0, 2):
        syn = SyntheticSet(torch.randn(5, 3, 4, generator=g), torch.randn(5, 1, generator=g), torch.ones(5, dtype=torch.long),
                           torch.randint(0, 10**12, (5, 3), generator=g), torch.randn(5, numeric, generator=g))
        save_synthetic(tmp_path / "a.parquet", syn, ["click"])
        back, _ = load_synthetic(tmp_path / "a.parquet")
        assert back.anchored and torch.equal(back.src_cat, syn.src_cat) and torch.equal(back.src_num, syn.src_num)
        assert back.src_num.shape == (5, numeric)


def test_reference_round_trips_with_its_metadata(tmp_path):
    arch = ModelConfig(embedding_dim=8, hidden=[16])
    torch.manual_seed(0)
    model = build_model("finalnet", tiny_schema(), arch)
    save_reference(tmp_path / "r.safetensors", model, arch, stage=3, history_rows=1234)
    back, info = load_reference(tmp_path / "r.safetensors")
    assert (info.model, info.stage, info.history_rows, info.arch) == ("finalnet", 3, 1234, arch)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    tables = load_embedding_tables(tmp_path / "r.safetensors")
    assert torch.equal(tables["table.weight"], model.embedding.table.weight)
    assert (tmp_path / "r.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
