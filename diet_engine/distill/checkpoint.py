"""Resumable stages: a stage's progress on disk, so that a retried job resumes instead of restarting.

Two files in a folder, each one safetensors file whose JSON metadata says what it holds (no pickle):

* `reference.safetensors`: checkpoint t once the reference phase is done, with the global RNG state
  at that point;
* `loop.safetensors`: every `every` outer iterations of the bi-level loop, the state at the top of
  the next iteration: the synthetic rows, each optimiser's tensors, the addressing plan, the loop's
  generator state, its log and the iteration number.

Each file is written under a temporary name, flushed to disk and renamed, so a file that exists is
whole; `on_save(path)` is then called (the service's worker copies it to shared storage, so that
another worker can resume). Every file carries a fingerprint of everything the stage's numbers
depend on (its inputs, configs, torch version, device and thread count): `bind` drops files made
under another fingerprint, since resuming those could not reproduce an undisturbed run bit for bit.
Resumed with the same fingerprint, the stage's artifacts are byte-identical to an undisturbed run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors
from torch import Tensor, nn

from diet_engine.distill.addressing import Addressing
from diet_engine.data.synthetic import SyntheticSet

REFERENCE_CHECKPOINT = "reference.safetensors"
LOOP_CHECKPOINT = "loop.safetensors"
FILES = (REFERENCE_CHECKPOINT, LOOP_CHECKPOINT)
FORMAT = 1
_META = "diet.checkpoint"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(inputs: Iterable[Path], *, device: str, **settings: Any) -> str:
    """A digest of the input files' bytes, the settings (JSON-able) and the numerics of this process."""
    doc = {
        "format": FORMAT,
        "inputs": [file_sha256(p) for p in inputs],
        "settings": settings,
        "torch": torch.__version__,
        "device": device,
        "threads": torch.get_num_threads(),  # CPU kernels split work by thread: same count, same bits
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _rng_states(device: str) -> dict[str, Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if device.startswith("cuda") and torch.cuda.is_available():
        states["rng.cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return states


def _set_rng_states(tensors: dict[str, Tensor], device: str) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"], torch.device(device))


class StageCheckpoint:
    """The checkpoints of one stage in `directory` (see the module's docstring)."""

    def __init__(self, directory: Path, every: int = 25, on_save: Callable[[Path], None] | None = None) -> None:
        if every < 1:
            raise ValueError("checkpoint every >= 1 outer iterations")
        self.directory = Path(directory)
        self.every = every
        self.on_save = on_save
        self.fingerprint: str | None = None
        self.device = "cpu"
        self.resumed: dict[str, int] = {}  # what was resumed: {"reference": 1} and/or {"loop": next iteration}
        self._first = 0

    # ------------------------------------------------------------------ files

    def bind(self, fingerprint: str, device: str = "cpu") -> None:
        """Use files of this fingerprint only; any other is deleted."""
        self.fingerprint, self.device = fingerprint, device
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            path = self.directory / name
            if path.exists() and self._read(name) is None:
                path.unlink()

    def _write(self, name: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if self.fingerprint is None:
            raise RuntimeError("bind() the checkpoint to the stage's fingerprint first")
        doc = {"format": FORMAT, "fingerprint": self.fingerprint, **meta}
        data = dump_tensors(
            {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata={_META: json.dumps(doc)}
        )
        path = self.directory / name
        tmp = path.with_name(f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if self.on_save is not None:
            self.on_save(path)

    def _read(self, name: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        path = self.directory / name
        if self.fingerprint is None or not path.exists():
            return None
        try:
            data = path.read_bytes()
            tensors = load_tensors(data)
            header_len = int.from_bytes(data[:8], "little")
            doc = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"][_META])
        except (OSError, ValueError, KeyError, RuntimeError):
            return None  # unreadable: as if absent
        if doc.get("format") != FORMAT or doc.get("fingerprint") != self.fingerprint:
            return None
        return tensors, doc

    # ------------------------------------------------------------------ reference phase

    def save_reference(self, model: nn.Module) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"optim.{k}": v for k, v in getattr(model, "optimizer_state", {}).items()})
        self._write(REFERENCE_CHECKPOINT, {**tensors, **_rng_states(self.device)}, {})

    def load_reference(self, template: nn.Module) -> nn.Module | None:
        """`template` (same architecture, changed in place) with checkpoint t's weights, or None if none saved."""
        found = self._read(REFERENCE_CHECKPOINT)
        if found is None:
            return None
        tensors, _ = found
        state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        template.load_state_dict(state)
        # Adam's moments at the end of the stage, which the artifact carries to stage t+1
        template.optimizer_state = {k.removeprefix("optim."): v for k, v in tensors.items() if k.startswith("optim.")}
        _set_rng_states(tensors, self.device)
        self.resumed["reference"] = 1
        return template

    # ------------------------------------------------------------------ the bi-level loop

    def resume_loop(
        self, syn: SyntheticSet, optimisers: Sequence[Any], gen: torch.Generator, log: Any
    ) -> tuple[int, Addressing | None]:
        """Restore the loop's state in place: (the iteration to go on from, the addressing plan); (0, None) if none."""
        self._first = 0
        found = self._read(LOOP_CHECKPOINT)
        if found is None:
            return 0, None
        tensors, doc = found
        with torch.no_grad():
            syn.emb.copy_(tensors["syn.emb"])
            syn.logits.copy_(tensors["syn.logits"])
            for i, opt in enumerate(optimisers):
                for key, value in _optimiser_tensors(opt).items():
                    value.copy_(tensors[f"opt{i}.{key}"])
        gen.set_state(tensors["gen"])
        for key, value in doc["log"].items():
            setattr(log, key, value)
        plan = None
        if doc["plan"]:
            plan = Addressing(**{f.name: tensors[f"plan.{f.name}"].to(syn.emb.device) for f in dataclasses.fields(Addressing)})
        self._first = int(doc["next_iter"])
        self.resumed["loop"] = self._first
        return self._first, plan

    def reached(
        self,
        it: int,
        syn: SyntheticSet,
        optimisers: Sequence[Any],
        gen: torch.Generator,
        log: Any,
        plan: Addressing | None,
    ) -> None:
        """Called at the top of outer iteration `it`: saves the state every `every` iterations."""
        if it == self._first or it % self.every:
            return
        tensors: dict[str, Tensor] = {"syn.emb": syn.emb, "syn.logits": syn.logits, "gen": gen.get_state()}
        for i, opt in enumerate(optimisers):
            tensors.update({f"opt{i}.{key}": value for key, value in _optimiser_tensors(opt).items()})
        if plan is not None:
            tensors.update({f"plan.{f.name}": getattr(plan, f.name) for f in dataclasses.fields(plan)})
        meta = {"next_iter": it, "plan": plan is not None, "log": dataclasses.asdict(log)}
        self._write(LOOP_CHECKPOINT, tensors, meta)


def _optimiser_tensors(opt: Any) -> dict[str, Tensor]:
    """An optimiser's own state tensors (not `value`, the tensor it updates, which is saved as the rows)."""
    return {k: v for k, v in sorted(vars(opt).items()) if isinstance(v, Tensor) and k != "value"}
