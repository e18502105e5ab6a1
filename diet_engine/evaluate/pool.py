"""The candidate pools fidelity is measured on (DESIGN §8).

* P5: the paper's five architectures at their default sizes (`dcn`, `dcnv2`, `finalmlp`, `finalnet`,
  `wukong`) — the bench's candidates before pools existed, built exactly as then.
* P15: each of the five at three dense capacities, small (`-s`), default and large (`-l`).

Only the dense part changes: every candidate inherits the reference's embedding tables, so the embedding
width stays the base config's, and so does the shared MMoE head. What a size changes, per architecture
(widths marked ×½ / ×2 scale the base `ModelConfig.hidden`, rounded to even numbers; the others are the
backbone's own arguments; defaults at `ModelConfig()` in brackets):

| architecture | small (-s)                     | default                       | large (-l)                      |
|--------------|--------------------------------|-------------------------------|---------------------------------|
| dcn          | hidden ×½, 1 cross layer       | hidden [256, 128], 3 cross    | hidden ×2, 6 cross layers       |
| dcnv2        | hidden ×½, 1 full-rank cross   | hidden [256, 128], 2 cross    | hidden ×2, 3 cross layers       |
| finalmlp     | hidden ×½ (both streams),      | hidden [256, 128], fs [64],   | hidden ×2, fs_hidden [128],     |
|              | fs_hidden [32], out_dim 32     | out_dim 64, 16 heads          | out_dim 128                     |
| finalnet     | hidden ×½ (both FINAL blocks), | hidden [256, 128], 2 blocks   | hidden ×2, 2 blocks             |
|              | one block (1B)                 |                               |                                 |
| wukong       | 2 layers, n_fm = n_lcb = 4,    | 3 layers, n_fm = n_lcb = 8,   | 4 layers, n_fm = n_lcb = 16,    |
|              | rank 4, fmb_hidden [64]        | rank 8, fmb_hidden [128]      | rank 16, fmb_hidden [256]       |

Wukong does not read `hidden`, so its config is the base one at every size. FinalMLP's bilinear fusion
needs its stream widths divisible by the head count: a size whose last width is not divisible by 16 uses
gcd(16, width) heads.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from diet_engine.data.schema import StreamSchema
from diet_engine.models import MODELS, build_model
from diet_engine.models.base import CTRModel, ModelConfig

Pool = Literal["p5", "p15"]
POOLS: tuple[str, ...] = ("p5", "p15")
Size = Literal["s", "default", "l"]
SIZES: tuple[Size, ...] = ("s", "default", "l")
SUFFIX: dict[str, str] = {"s": "-s", "default": "", "l": "-l"}
WIDTH: dict[str, float] = {"s": 0.5, "default": 1.0, "l": 2.0}  # factor on ModelConfig.hidden
POOL_SIZES: dict[str, tuple[Size, ...]] = {"p5": ("default",), "p15": SIZES}


class Capacity(BaseModel):
    """How one architecture's dense part changes with size: whether `hidden` scales, and the backbone's
    arguments each size sets (the default size sets none)."""

    model_config = ConfigDict(frozen=True)

    scales_hidden: bool
    backbone: dict[str, dict[str, Any]]  # size -> keyword arguments of the backbone


CAPACITY: dict[str, Capacity] = {
    # cross layers hold O(F·D) weights each: depth, not width, is the cross network's capacity
    "dcn": Capacity(scales_hidden=True, backbone={"s": {"num_cross_layers": 1}, "l": {"num_cross_layers": 6}}),
    # each full-rank cross layer holds (F·D)² weights, as many as the DNN: one fewer / one more
    "dcnv2": Capacity(scales_hidden=True, backbone={"s": {"num_cross_layers": 1}, "l": {"num_cross_layers": 3}}),
    "finalmlp": Capacity(scales_hidden=True, backbone={"s": {"fs_hidden": [32], "out_dim": 32},
                                                       "l": {"fs_hidden": [128], "out_dim": 128}}),
    "finalnet": Capacity(scales_hidden=True, backbone={"s": {"block_type": "1B"}}),
    # the Wukong paper scales layers, embeddings per layer, the FM rank and the FMB's MLP together
    "wukong": Capacity(scales_hidden=False, backbone={
        "s": {"num_layers": 2, "n_fm": 4, "n_lcb": 4, "rank": 4, "fmb_hidden": [64]},
        "l": {"num_layers": 4, "n_fm": 16, "n_lcb": 16, "rank": 16, "fmb_hidden": [256]},
    }),
}
FINALMLP_HEADS = 16  # FinalMLP's default head count


class Candidate(BaseModel):
    """One member of a pool: an architecture at one size."""

    model_config = ConfigDict(frozen=True)

    name: str  # "dcn", "dcn-s", "dcn-l"
    model: str  # the architecture, a key of diet_engine.models.MODELS
    size: Size
    arch: ModelConfig  # the candidate's ModelConfig (the base one with its hidden widths scaled)
    backbone: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the backbone

    def build(self, schema: StreamSchema) -> CTRModel:
        return build_model(self.model, schema, self.arch, **self.backbone)


def scaled(widths: list[int], factor: float) -> list[int]:
    """Widths times `factor`, rounded to even numbers of at least 2 (FINAL layers split theirs in halves)."""
    return [max(2, 2 * round(w * factor / 2)) for w in widths]


def candidate(model: str, size: Size, base: ModelConfig) -> Candidate:
    """`model` at `size`, around the base config (the default size is the base config itself)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(MODELS)}")
    capacity = CAPACITY[model]
    arch = base
    if capacity.scales_hidden and size != "default":
        arch = base.model_copy(update={"hidden": scaled(base.hidden, WIDTH[size])})
    backbone = dict(capacity.backbone.get(size, {}))
    if model == "finalmlp" and arch.hidden and arch.hidden[-1] % FINALMLP_HEADS:
        backbone["num_heads"] = math.gcd(FINALMLP_HEADS, arch.hidden[-1])
    return Candidate(name=model + SUFFIX[size], model=model, size=size, arch=arch, backbone=backbone)


def candidate_pool(pool: str, models: list[str], base: ModelConfig) -> list[Candidate]:
    """The pool's candidates over the given architectures: P5 one each at the default size, P15 three each
    (small, default, large), architecture by architecture."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
    return [candidate(m, s, base) for m in models for s in POOL_SIZES[pool]]
