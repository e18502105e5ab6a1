"""Every knob of reference training, distillation and candidate training, as pydantic models.

Every size and count has an upper bound (`le=`), so a configuration the service accepts is one a
worker can run: each bound is far above anything the benchmarks use (README.md, "Limits"), and a
value beyond it is refused at validation (a 422 from the service) instead of holding a GPU for days.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diet_engine.models.base import ModelConfig


# Upper bounds of the sizes and counts below (the benchmarks' largest values are 10-100x smaller).
MAX_BATCH = 1 << 20  # rows per batch of any kind
MAX_POOL_ROWS = 1 << 22  # real rows held on the device for addressing and the outer loss
MAX_OUTER_ITERS = 100_000
MAX_INNER_STEPS = 1_000
MAX_EPOCHS = 1_000
MAX_LR_TRIALS = 16


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(_Config):
    """Adam on a model; embeddings may take their own learning rate."""

    lr: float = Field(default=1e-3, gt=0)
    embedding_lr: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH)
    weight_decay: float = Field(default=0.0, ge=0)
    # bf16 autocast of the forward pass (GPU speed); check the AUC against fp32 before relying on it
    precision: Literal["fp32", "bf16"] = "fp32"


class ReferenceConfig(_Config):
    """The continually trained reference model that distillation follows."""

    model: str = "dcn"
    arch: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = 0
    # continue Adam's moments from the previous stage (a fresh Adam each block cost 0.005-0.01 test AUC on ML-100K)
    keep_optimizer: bool = True


class DistillConfig(_Config):
    """DIET per stage (DESIGN.md §4). Sizes are fractions of real rows unless named *_rows."""

    ratio: float = Field(default=0.02, gt=0, le=1, description="distilled rows / historical rows")
    # boundary initialisation: which real rows of the block start the new memory. "el2n": the paper's Alg. 1
    # (label-conditioned EL2N window at `el2n_percentile`); "kmeans": the rows nearest k-means centroids of
    # the block's embeddings (the k-means baseline's rule, distill/kmeans.py), rows that cover the block
    init: Literal["el2n", "kmeans"] = "el2n"
    el2n_percentile: float = Field(default=0.9, gt=0, lt=1)
    # memory fusion: share of the previous synthetic set kept, by influence
    memory_fusion: bool = True
    # ML-100K drifts fast: keeping a quarter of the previous set beat keeping three quarters (8 seeds)
    memory_keep: float = Field(default=0.25, ge=0, le=1)
    # carry kept rows into the current checkpoint's embedding space (memory.reanchor)
    reanchor: bool = True
    # addressing. Target selection off: the outer loss is taken on random rows of the block, not on the
    # hardest tenth under θ_{t-1} (on ML-1M, an i.i.d. stream, those are mostly label noise the set then learnt)
    target_selection: bool = False
    # off: every synthetic row is active in the inner loop (an outer iteration still differentiates only
    # the rows its window reads, bilevel.py). Top-responsibility active memory
    # (|A| = window x inner steps) cost 0.002-0.003 test AUC on ML-100K in every sweep (benchmarks/README.md)
    memory_selection: bool = False
    hard_ratio: float = Field(default=0.1, gt=0, le=1)
    target_pool_rows: int = Field(default=8192, ge=1, le=MAX_POOL_ROWS)
    address_every: int = Field(default=5, ge=1, le=MAX_OUTER_ITERS)
    influence_params: Literal["head", "dense"] = "dense"
    # bi-level optimisation
    outer_iters: int = Field(default=300, ge=0, le=MAX_OUTER_ITERS)
    inner_steps: int = Field(default=10, ge=1, le=MAX_INNER_STEPS)
    window: int = Field(default=5, ge=1, le=MAX_INNER_STEPS)
    inner_batch: int = Field(default=64, ge=1, le=MAX_BATCH)
    inner_lr: float = Field(default=0.05, gt=0)
    outer_batch: int = Field(default=1024, ge=1, le=MAX_BATCH)
    # outer Adam rates of the rows and of their logits. Adam moves a row about its rate per step whatever the
    # meta-gradient's size, and an unread row keeps moving on its momentum: the paper's 1e-2 / 1e-1 turned
    # ML-1M's real rows into rows that teach a fresh candidate almost nothing (set alone 0.62 against 0.80;
    # benchmarks/README.md, seventh round). Small rates keep the rows near the real ones they started from
    # (+0.006 mean AUC on ML-1M). On the drifting ML-100K the paper's rates did better (+0.009): set
    # lr_embedding=1e-2, lr_logits=1e-1, target_selection=True there (the bench variant `diet_paper`)
    lr_embedding: float = Field(default=1e-4, gt=0)
    lr_logits: float = Field(default=1e-2, gt=0)
    temperature: float = Field(default=2.0, gt=0, description="soft labels are sigmoid(logit / temperature)")
    # where each unroll starts (distill/proxy.py): "previous" = θ_{t-1} (the paper); "pool" = one of
    # `pool_size` fresh proxies of `proxy_models` (empty: the reference's architecture), each training on
    # the set with Adam at `pool_lr` on `pool_batch` rows, `pool_advance` steps per outer iteration,
    # restarting from a new init after `pool_horizon` steps
    proxy_init: Literal["previous", "pool"] = "previous"
    proxy_models: list[str] = Field(default_factory=list, max_length=16)
    pool_size: int = Field(default=4, ge=1, le=64)
    pool_lr: float = Field(default=1e-3, gt=0)
    pool_batch: int = Field(default=64, ge=1, le=MAX_BATCH)
    pool_horizon: int = Field(default=600, ge=1, le=MAX_OUTER_ITERS * MAX_INNER_STEPS)
    pool_advance: int = Field(default=5, ge=0, le=MAX_INNER_STEPS)
    seed: int = 0
    # speed only (results equal up to float rounding): rows per influence/scoring chunk, and on a GPU
    # the inner unroll and meta-gradient replayed as captured CUDA graphs (ignored on a CPU)
    score_batch: int = Field(default=4096, ge=1, le=MAX_BATCH)
    cuda_graph: bool = False

    @field_validator("proxy_models")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        from diet_engine.models import MODELS

        unknown = sorted(set(names) - set(MODELS))
        if unknown:
            raise ValueError(f"unknown proxy models {unknown}; the zoo has {sorted(MODELS)}")
        return names

    @property
    def active_rows(self) -> int:
        """|A| = truncation window x inner steps (paper, appendix A.3)."""
        return self.window * self.inner_steps


class CandidateConfig(_Config):
    """The consumer protocol (paper §4.2.2 / §5.1.4) shared by every reduced-data method."""

    arch: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distilled_epochs: int = Field(default=8, ge=1, le=MAX_EPOCHS)
    distilled_batch: int = Field(default=64, ge=1, le=MAX_BATCH)
    # learning rates tried for the distilled phase, each from the same initial weights; the (rate, epoch)
    # best on validation is kept. One rate by default: on ML-100K (8 seeds) [1e-3, 3e-3] moved no method's
    # mean test AUC by more than 0.0007, doubled the phase's cost and scrambled the models' order (τ 1.0 → 0.2)
    distilled_lrs: list[float] = Field(default_factory=lambda: [1e-3], min_length=1, max_length=MAX_LR_TRIALS)
    # flatter soft labels: on ML-100K T=2 helped every reduced-data method (3-seed sweep)
    temperature: float = Field(default=2.0, gt=0)
    # learning rates tried for the fine-tune on the subsequent block of every candidate that inherited the
    # reference's tables (warm-up start and every history set), each from the same post-set weights; the one
    # best on validation is kept. Full data and cold start build their own tables and train at `train.lr`.
    # A fresh Adam at 1e-3 moves every inherited table row a batch touches by about 1e-3 a step, whatever
    # its gradient, and undid what the set taught (ML-1M, benchmarks/README.md, seventh round). None: `train.lr`
    finetune_lrs: list[float] | None = Field(default_factory=lambda: [1e-3, 3e-4, 1e-4], min_length=1, max_length=8)
    # rates tried for the inherited tables in that fine-tune, each with each of `finetune_lrs` (the pair best
    # on validation kept). None: the fine-tune's rate for the tables too
    finetune_embedding_lrs: list[float] | None = Field(default=None, min_length=1, max_length=8)
    # the distilled phase trains the dense part on the set's embeddings ("frozen", the paper), or also the
    # embedding tables through each row's real ids ("tuned": the row is its ids' embedding plus a fixed
    # offset, train.loops.train_anchored_epoch) so each architecture adapts the inherited tables to itself
    set_embeddings: Literal["frozen", "tuned"] = "frozen"
