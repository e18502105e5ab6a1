"""The training side of a pulled dataset version: a torch `Dataset`, and a candidate trained on it.

    ds = load_dataset("ml_100k-v3")                       # what `diet datasets pull` wrote
    run = train_candidate("dcnv2", "ml_100k-v3", "subsequent.parquet", "valid.parquet")

`train_candidate` is the paper's protocol (diet_engine.train.candidate): inherit the reference
embedding tables, train the dense part on the distilled rows (soft labels, best epoch on
validation), then fine-tune the whole model on the subsequent block.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from diet_engine.train import candidate
from diet_engine.dataset.artifacts import REFERENCE, SYNTHETIC, load_embedding_tables, load_synthetic, reference_info
from diet_engine.config import CandidateConfig
from diet_engine.data.blocks import Block, ParquetBlock, TensorBlock
from diet_engine.models.base import CTRModel
from diet_engine.data.schema import StreamSchema

MANIFEST = "manifest.json"
PULLED = "pulled.json"  # what `diet datasets pull` was asked for and what it resolved to


class DistilledDataset(Dataset[dict[str, torch.Tensor]]):
    """The synthetic rows of one version, as (embedding, soft labels, stage) items, plus what a candidate inherits.

    Item i: `embedding` [F, D] float32, `logits` [T] (the soft labels' source), `soft_labels` [T]
    = sigmoid(logits / temperature), `stage` (the stage the row was distilled at). `temperature`
    is the one the version was distilled with (manifest.json), else the candidate default.
    `embeddings` are the reference embedding tables; `schema`, `tasks`, `reference` and
    `manifest` describe the version.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.synthetic, self.tasks = load_synthetic(self.directory / SYNTHETIC)
        self.reference = reference_info(self.directory / REFERENCE)
        self.embeddings: dict[str, torch.Tensor] = load_embedding_tables(self.directory / REFERENCE)
        manifest_path = self.directory / MANIFEST
        self.manifest: dict[str, Any] | None = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        distilled_with = (self.manifest or {}).get("config", {}).get("distill", {}).get("temperature")
        self.temperature = float(distilled_with or CandidateConfig().temperature)

    @property
    def schema(self) -> StreamSchema:
        return self.reference.schema

    @property
    def version(self) -> str | None:
        """The concrete STREAM@vN (also when it was pulled by alias, `latest` or digest)."""
        return self.manifest["version"] if self.manifest else None

    def __len__(self) -> int:
        return len(self.synthetic)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        logits = self.synthetic.logits[i]
        return {
            "embedding": self.synthetic.emb[i],
            "logits": logits,
            "soft_labels": torch.sigmoid(logits / self.temperature),
            "stage": self.synthetic.stage[i],
        }


def load_dataset(directory: str | Path, *, verify: bool = True, version: str | None = None) -> DistilledDataset:
    """A pulled version (synthetic.parquet, reference.safetensors, manifest.json) as a torch Dataset.

    With `verify`, each data file is checked against the sha256 that manifest.json gives it
    (when manifest.json is there): a torn or edited file is refused rather than trained on.
    `version`, when given, is the version the caller means to load, named as the service names
    versions: `STREAM@vN`, `STREAM@sha256:DIGEST` (of manifest.json), or the alias or `latest`
    it was pulled as (`STREAM@prod`, recorded by the pull in pulled.json); another one is refused.
    """
    directory = Path(directory)
    missing = [name for name in (SYNTHETIC, REFERENCE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: is it what `diet datasets pull` wrote?")
    if verify and (directory / MANIFEST).is_file():
        _verify(directory, json.loads((directory / MANIFEST).read_text()))
    if version is not None:
        _check_version(directory, version)
    return DistilledDataset(directory)


def _check_version(directory: Path, wanted: str) -> None:
    if not (directory / MANIFEST).is_file():
        raise ValueError(f"{directory} has no manifest.json, so it cannot be checked to be {wanted}")
    concrete = json.loads((directory / MANIFEST).read_text())["version"]
    names = {concrete, f"{concrete.split('@')[0]}@sha256:{_sha256(directory / MANIFEST)}"}
    if (directory / PULLED).is_file():
        pulled = json.loads((directory / PULLED).read_text())
        if pulled.get("version") == concrete:
            names.add(pulled.get("requested"))
    if wanted not in names:
        raise ValueError(
            f"{directory} holds {concrete}, not {wanted}: pull {wanted} again (aliases move; `latest` does)"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(directory: Path, manifest: dict[str, Any]) -> None:
    for artifact in manifest.get("artifacts", []):
        path = directory / artifact["name"]
        if not path.is_file():
            continue
        if _sha256(path) != artifact["sha256"]:
            raise ValueError(f"{path} does not match the sha256 in manifest.json; pull the version again")


def train_candidate(
    model: str | CTRModel,
    dataset: str | Path | DistilledDataset,
    subsequent_block: str | Path | Block,
    valid_block: str | Path | TensorBlock,
    *,
    cfg: CandidateConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> candidate.CandidateRun:
    """Train a candidate architecture on a distilled version, then fine-tune it on the subsequent block.

    `model` is a zoo name (dcn, dcnv2, finalmlp, finalnet, wukong) or a module built for the
    version's schema with the reference embedding size. Blocks are Parquet paths of the same
    stream (the subsequent one is streamed, never loaded whole) or loaded blocks. With no `cfg`,
    the candidate takes the reference's sizes, so the inherited embedding tables fit, and reads
    the soft labels at the temperature the version was distilled with.
    Returns the trained model, its validation AUC per distilled epoch and the best epoch.
    """
    ds = dataset if isinstance(dataset, DistilledDataset) else load_dataset(dataset)
    cfg = cfg or CandidateConfig(arch=ds.reference.arch, temperature=ds.temperature)
    dim = model.embedding.dim if isinstance(model, CTRModel) else cfg.arch.embedding_dim
    if dim != ds.reference.arch.embedding_dim:
        raise ValueError(
            f"the candidate's embedding_dim is {dim}, the version's embedding tables have "
            f"{ds.reference.arch.embedding_dim}: build it with that size"
        )
    subsequent = ParquetBlock(subsequent_block, ds.schema) if isinstance(subsequent_block, str | Path) else subsequent_block
    valid = TensorBlock.load(valid_block, ds.schema) if isinstance(valid_block, str | Path) else valid_block
    return candidate.train_candidate(
        model, ds.schema, finetune=[subsequent], valid=valid, cfg=cfg, seed=seed,
        embeddings=ds.embeddings, distilled=ds.synthetic, device=device,
    )  # fmt: skip
