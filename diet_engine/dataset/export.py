"""A pulled dataset version in the formats other tools read.

* `hf`: a folder the Hugging Face `datasets` library loads as it is
  (`load_dataset("parquet", data_dir=folder)` or `load_dataset(folder)`): Parquet shards under
  `data/` and a dataset card, `README.md`, whose YAML front matter gives the features, the split,
  the licence, the version's lineage and the sha256 of every file.
* `parquet`: one flat Parquet file.

Both hold the same table, one row per distilled row: `stage` (the stage the row was distilled
at), one column `emb_<field>` per field of the stream (its D-float embedding), and per task
`soft_<task>` = sigmoid(logit / T) (the soft label a candidate trains on, at the temperature T
the version was distilled with) beside the raw `logit_<task>`. The conversion reads only the
version's own files (synthetic.parquet, reference.safetensors, manifest.json).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diet_engine.dataset.loader import load_dataset

Format = Literal["hf", "parquet"]
FORMATS: tuple[str, ...] = ("hf", "parquet")
CARD = "README.md"
SPLIT = "train"
SHARD_ROWS = 100_000


@dataclass
class ExportedFile:
    path: Path
    bytes: int
    sha256: str


@dataclass
class Export:
    version: str | None
    format: str
    rows: int
    files: list[ExportedFile] = field(default_factory=list)


def flat_table(directory: str | Path) -> pa.Table:
    """The version's rows with one embedding column per field and the soft labels per task."""
    ds = load_dataset(directory)
    syn = ds.synthetic
    n, f, d = syn.emb.shape
    names = [c.name for c in ds.schema.fields] + [c.name for c in ds.schema.numeric]
    if len(names) != f:
        raise ValueError(f"the version's embeddings have {f} fields, its schema names {len(names)}")
    emb = syn.emb.detach().cpu().numpy().astype(np.float32)
    logits = syn.logits.detach().cpu().numpy().astype(np.float32)
    soft = 1.0 / (1.0 + np.exp(-logits / ds.temperature))
    columns: dict[str, pa.Array] = {"stage": pa.array(syn.stage.cpu().numpy().astype(np.int32))}
    for i, name in enumerate(names):
        columns[f"emb_{name}"] = pa.FixedSizeListArray.from_arrays(pa.array(emb[:, i, :].reshape(-1)), d)
    for j, task in enumerate(ds.tasks):
        columns[f"soft_{task}"] = pa.array(soft[:, j].astype(np.float32))
        columns[f"logit_{task}"] = pa.array(logits[:, j])
    return pa.table(columns)


def export_version(
    directory: str | Path,
    out: str | Path,
    fmt: Format,
    *,
    licence: str | None = None,
    shard_rows: int = SHARD_ROWS,
) -> Export:
    """Write the pulled version in `directory` to the folder `out` in format `fmt` (see the module)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    directory, out = Path(directory), Path(out)
    table = flat_table(directory)
    manifest = _manifest(directory)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        name = (manifest.get("version") or directory.name).replace("@", "-") + ".parquet"
        written = [_write(table, out / name)]
        return Export(manifest.get("version"), fmt, table.num_rows, written)
    shards = max(1, -(-table.num_rows // shard_rows))
    (out / "data").mkdir(exist_ok=True)
    written = [
        _write(table.slice(i * shard_rows, shard_rows), out / "data" / f"{SPLIT}-{i:05d}-of-{shards:05d}.parquet")
        for i in range(shards)
    ]
    card = dataset_card(table.schema, table.num_rows, manifest, written, out, licence)
    (out / CARD).write_text(card, encoding="utf-8")
    return Export(manifest.get("version"), fmt, table.num_rows, [*written, _described(out / CARD)])


def _manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(table: pa.Table, path: Path) -> ExportedFile:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return _described(path)


def _described(path: Path) -> ExportedFile:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return ExportedFile(path, path.stat().st_size, digest.hexdigest())


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    """The `datasets` library's feature description of the table (its `dataset_info.features`)."""
    out = []
    for column in schema:
        if pa.types.is_fixed_size_list(column.type):
            out.append({"name": column.name, "list": _dtype(column.type.value_type), "length": column.type.list_size})
        else:
            out.append({"name": column.name, "dtype": _dtype(column.type)})
    return out


def _dtype(arrow_type: pa.DataType) -> str:
    return {"int32": "int32", "int64": "int64", "float": "float32", "double": "float64"}[str(arrow_type)]


def dataset_card(
    schema: pa.Schema,
    rows: int,
    manifest: dict[str, Any],
    files: list[ExportedFile],
    root: Path,
    licence: str | None,
) -> str:
    """README.md: YAML front matter the Hub and `datasets` read, then a short human description."""
    version = manifest.get("version", "a DIET dataset version")
    lineage = {
        "version": manifest.get("version"),
        "stage": manifest.get("stage"),
        "parent": manifest.get("parent"),
        "blocks": [{k: b[k] for k in ("stage", "sha256", "rows")} for b in manifest.get("blocks", [])],
        "history_rows": manifest.get("history_rows"),
        "source_files": {a["name"]: a["sha256"] for a in manifest.get("artifacts", [])},
    }
    meta = {
        "license": licence or "unknown",
        "pretty_name": version,
        "tags": ["recommender-systems", "dataset-distillation", "diet"],
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"data/{SPLIT}-*"}]}],
        "dataset_info": {
            "features": features(schema),
            "splits": [{"name": SPLIT, "num_bytes": sum(f.bytes for f in files), "num_examples": rows}],
        },
        "diet": {
            "lineage": lineage,
            "temperature": manifest.get("config", {}).get("distill", {}).get("temperature"),
            "files": [{"path": str(f.path.relative_to(root)), "bytes": f.bytes, "sha256": f.sha256} for f in files],
        },
    }
    tasks = [c.name.removeprefix("soft_") for c in schema if c.name.startswith("soft_")]
    body = (
        f"# {version}\n\n"
        f"{rows} distilled rows (DIET) of stream `{manifest.get('stream', '?')}` at stage {manifest.get('stage', '?')}, "
        f"standing in for {manifest.get('history_rows', '?')} historical rows.\n\n"
        "Each row is a set of field embeddings (`emb_<field>`, in the embedding space of the version's reference "
        "model, `reference.safetensors`) with soft labels (`soft_<task>`, the probabilities a candidate trains on; "
        f"tasks: {', '.join(tasks)}) and the stage it was distilled at.\n\n"
        '```python\nfrom datasets import load_dataset\nds = load_dataset("parquet", data_dir="<this folder>")\n```\n'
    )
    return f"---\n{to_yaml(meta)}---\n\n{body}"


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of plain data (dicts, lists, scalars); strings are JSON-quoted, which YAML reads."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {nested[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
    else:
        lines.append(f"{pad}{_scalar(value)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):  # empty
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(str(value), ensure_ascii=False)
