"""The two artifacts of a dataset version, written and read back bit for bit.

* `synthetic.parquet`: one row per distilled row — `stage` (int32), `embedding`
  (fixed-size list of F×D float32, row-major [field, dim]) and one float32
  column `logit_<task>` per task; for rows that started from a real row, that
  row's hashed ids `src_cat` (fixed-size list of int64) and numeric features
  `src_num` (float32), which the next stage re-anchors the row by. The file's
  metadata says F, D and the tasks.
* `reference.safetensors`: the reference checkpoint (embedding tables and dense
  weights, plus Adam's moments under `optimizer.*` that the next stage continues) with
  its model name, architecture, schema, stage and the number of historical rows seen in
  the metadata. No pickles. Written with its header in a fixed order, so the same
  checkpoint always gives the same bytes (and sha256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes

from diet_engine.models import build_model
from diet_engine.models.base import CTRModel, ModelConfig
from diet_engine.data.schema import StreamSchema
from diet_engine.data.synthetic import SyntheticSet

SYNTHETIC = "synthetic.parquet"
REFERENCE = "reference.safetensors"


def save_synthetic(path: Path, syn: SyntheticSet, tasks: list[str]) -> None:
    n, f, d = syn.emb.shape
    flat = pa.array(syn.emb.detach().cpu().contiguous().reshape(-1).numpy().astype(np.float32))
    columns = {
        "stage": pa.array(syn.stage.cpu().numpy().astype(np.int32)),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, f * d),
    }
    logits = syn.logits.detach().cpu().numpy().astype(np.float32)
    for j, task in enumerate(tasks):
        columns[f"logit_{task}"] = pa.array(logits[:, j])
    meta = {"diet.fields": str(f), "diet.dim": str(d), "diet.tasks": json.dumps(tasks)}
    if syn.anchored:
        columns["src_cat"] = _fixed_list(syn.src_cat.cpu().numpy().astype(np.int64))
        meta["diet.numeric"] = str(syn.src_num.shape[1])
        if syn.src_num.shape[1]:
            columns["src_num"] = _fixed_list(syn.src_num.cpu().numpy().astype(np.float32))
    table = pa.table(columns).replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _column_matrix(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    column = table.column(name).combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(table.num_rows, width)


def load_synthetic(path: Path | IO[bytes]) -> tuple[SyntheticSet, list[str]]:
    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    f, d, tasks = int(meta["diet.fields"]), int(meta["diet.dim"]), json.loads(meta["diet.tasks"])
    n = table.num_rows
    emb = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    logits = np.stack([table.column(f"logit_{t}").to_numpy() for t in tasks], axis=1) if n else np.empty((0, len(tasks)))
    syn = SyntheticSet(
        torch.from_numpy(emb.astype(np.float32).reshape(n, f, d)),
        torch.from_numpy(logits.astype(np.float32)),
        torch.from_numpy(table.column("stage").to_numpy().astype(np.int64)),
    )
    if "src_cat" in table.column_names:
        syn.src_cat = torch.from_numpy(_column_matrix(table, "src_cat", np.int64))
        numeric = int(meta.get("diet.numeric", "0"))
        syn.src_num = (
            torch.from_numpy(_column_matrix(table, "src_num", np.float32)) if numeric else torch.zeros(n, 0)
        )
    return syn, tasks


@dataclass
class ReferenceInfo:
    model: str
    arch: ModelConfig
    schema: StreamSchema
    stage: int
    history_rows: int


OPTIMIZER_PREFIX = "optimizer."


def save_reference(path: Path, model: CTRModel, arch: ModelConfig, stage: int, history_rows: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state.update({OPTIMIZER_PREFIX + k: v.contiguous() for k, v in model.optimizer_state.items()})
    meta = {
        "diet.model": model.name,
        "diet.arch": arch.model_dump_json(),
        "diet.schema": model.schema.model_dump_json(),
        "diet.stage": str(stage),
        "diet.history_rows": str(history_rows),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(canonical_safetensors(safetensors_bytes(state, metadata=meta)))
    tmp.replace(path)


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its metadata keys sorted.

    safetensors writes the metadata map in hash order, which changes from process to process, so
    equal checkpoints would otherwise differ in bytes. The header is JSON after an 8-byte
    little-endian length, padded with spaces to a multiple of 8; the tensor entries keep their order.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def reference_info(path: Path) -> ReferenceInfo:
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    return ReferenceInfo(
        model=meta["diet.model"],
        arch=ModelConfig.model_validate_json(meta["diet.arch"]),
        schema=StreamSchema.model_validate_json(meta["diet.schema"]),
        stage=int(meta["diet.stage"]),
        history_rows=int(meta["diet.history_rows"]),
    )


def load_reference(path: Path) -> tuple[CTRModel, ReferenceInfo]:
    info = reference_info(path)
    model = build_model(info.model, info.schema, info.arch)
    tensors = load_file(str(path))
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)})
    model.optimizer_state = {k.removeprefix(OPTIMIZER_PREFIX): v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return model, info


def load_embedding_tables(path: Path) -> dict[str, torch.Tensor]:
    """Only the sparse part of a reference checkpoint (what a candidate inherits)."""
    return {k.removeprefix("embedding."): v for k, v in load_file(str(path)).items() if k.startswith("embedding.")}
