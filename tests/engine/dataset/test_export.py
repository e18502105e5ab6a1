"""Exports of a distilled version: the `hf` folder loads with the Hugging Face `datasets` library as it is,
row by row equal to the version; the `parquet` export is the same table in one file."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.dataset.export import export_version
from diet_engine.dataset.loader import load_dataset as load_version
from diet_engine.distill.stage import distill_stage


@pytest.fixture(scope="module")
def version_dir(tiny_stream, tmp_path_factory):
    schema, root = tiny_stream
    out = tmp_path_factory.mktemp("v1")
    cfg = DistillConfig(ratio=0.05, outer_iters=2, inner_steps=2, window=2, inner_batch=8, target_pool_rows=200)
    distill_stage(schema, root / "h1.parquet", 1, out, previous=None, reference=ReferenceConfig(), config=cfg)
    # what a pull writes beside the two artifacts
    manifest = {
        "version": "tiny@v1", "stream": "tiny", "number": 1, "stage": 1, "parent": None, "history_rows": 600,
        "blocks": [{"id": 1, "stage": 1, "sha256": "ab" * 32, "rows": 600}],
        "config": {"distill": cfg.model_dump(mode="json")},
        "artifacts": [{"name": n, "sha256": hashlib.sha256((out / n).read_bytes()).hexdigest()}
                      for n in ("synthetic.parquet", "reference.safetensors")],
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _expected(version_dir):
    ds = load_version(version_dir)
    emb = ds.synthetic.emb.numpy()
    soft = 1 / (1 + np.exp(-ds.synthetic.logits.numpy() / ds.temperature))
    return ds, emb, soft


def test_hf_export_loads_with_datasets_row_by_row(version_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    exported = export_version(version_dir, tmp_path / "hf", "hf", licence="CC-BY-4.0", shard_rows=7)
    ds, emb, soft = _expected(version_dir)
    assert exported.rows == len(ds) > 7  # more than one shard
    fields = [f.name for f in ds.schema.fields] + [f.name for f in ds.schema.numeric]

    for loaded in (
        datasets.load_dataset("parquet", data_dir=str(tmp_path / "hf"), split="train"),
        datasets.load_dataset(str(tmp_path / "hf"), split="train"),  # through the card's own configs
    ):
        assert len(loaded) == len(ds)
        for i, row in enumerate(loaded):
            assert row["stage"] == int(ds.synthetic.stage[i])
            for f, name in enumerate(fields):
                np.testing.assert_array_equal(np.asarray(row[f"emb_{name}"], dtype=np.float32), emb[i, f])
            for t, task in enumerate(ds.tasks):
                assert row[f"soft_{task}"] == pytest.approx(float(soft[i, t]), rel=1e-6)
                assert row[f"logit_{task}"] == float(ds.synthetic.logits[i, t])

    card = (tmp_path / "hf" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "CC-BY-4.0"
    assert meta["dataset_info"]["splits"] == [
        {"name": "train", "num_bytes": meta["dataset_info"]["splits"][0]["num_bytes"], "num_examples": len(ds)}
    ]
    # the card's features are the ones `datasets` reads from the files
    described = datasets.Features._from_yaml_list(meta["dataset_info"]["features"])
    assert described == loaded.features
    lineage = meta["diet"]["lineage"]
    assert lineage["version"] == "tiny@v1" and lineage["blocks"][0]["stage"] == 1
    assert set(lineage["source_files"]) == {"synthetic.parquet", "reference.safetensors"}
    for entry in meta["diet"]["files"]:
        path = tmp_path / "hf" / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
    assert len(meta["diet"]["files"]) == exported.rows // 7 + 1


def test_parquet_export_is_one_flat_file(version_dir, tmp_path):
    exported = export_version(version_dir, tmp_path / "flat", "parquet")
    assert [f.path.name for f in exported.files] == ["tiny-v1.parquet"]
    table = pq.read_table(exported.files[0].path)
    ds, emb, soft = _expected(version_dir)
    assert table.num_rows == len(ds)
    assert table.column_names == ["stage", "emb_user", "emb_item", "emb_ctx", "emb_price",
                                  "soft_click", "logit_click", "soft_buy", "logit_buy"]  # fmt: skip
    got = np.stack(table.column("emb_item").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, emb[:, 1])
    np.testing.assert_allclose(table.column("soft_buy").to_numpy(), soft[:, 1], rtol=1e-6)


def test_unknown_format_is_refused(version_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown export format"):
        export_version(version_dir, tmp_path / "x", "csv")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
