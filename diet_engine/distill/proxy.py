"""Where each inner loop starts (paper §4.2.2): θ_{t-1}, or a pool of fresh proxies training on the set.

The paper starts every unroll from the previous reference checkpoint θ_{t-1}: the set then learns to
correct a network that is already trained, while a candidate trains a freshly initialised dense part
on it. With `proxy_init="pool"` the unroll starts instead from one of `pool_size` proxies, each a fresh
Glorot init of an architecture from `proxy_models` (the reference's own when empty) that trains on the
set as a candidate would (Adam at `pool_lr`, batches of `pool_batch` rows, soft labels): after every
outer iteration the proxy used takes `pool_advance` such steps, and once it has taken `pool_horizon`
it starts again from a new init. The meta-gradient is thus taken along the trajectories candidates
follow (the model pool of FRePo, Zhou et al. 2022), at the cost of a few plain steps per iteration.

Each slot keeps its architecture for the whole stage, so its tensors keep their shapes: the stage
checkpoint saves and restores them in place like an optimiser's state (`state_tensors`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diet_engine.config import DistillConfig
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.distill.influence import Params
from diet_engine.models import MODELS
from diet_engine.models.base import DenseNet, ModelConfig, xavier_
from diet_engine.train.loops import bce, soft_targets


def architecture_of(dense: nn.Module) -> str:
    """The zoo name of a dense network's backbone."""
    kind = type(getattr(dense, "backbone", dense))
    for name, cls in MODELS.items():
        if cls is kind:
            return name
    raise ValueError(f"{kind.__name__} is not a backbone of the zoo")


class ProxySlot:
    """One proxy: its architecture's module (only read through functional_call), parameters, Adam moments."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        self.params: Params = {k: v.detach().clone() for k, v in module.named_parameters()}
        self.m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.steps = torch.zeros((), dtype=torch.long)


class ProxyPool:
    """`pool_size` proxies at staggered points of their training on the set."""

    def __init__(self, syn: SyntheticSet, reference_dense: nn.Module, cfg: DistillConfig, gen: torch.Generator) -> None:
        self.cfg, self.gen = cfg, gen
        self.device = syn.emb.device
        self.fields, self.dim, self.tasks = syn.emb.shape[1], syn.emb.shape[2], syn.logits.shape[1]
        self.arch = ModelConfig(embedding_dim=self.dim)
        names = cfg.proxy_models or [architecture_of(reference_dense)]
        self.slots = [ProxySlot(names[i % len(names)], self._fresh(names[i % len(names)])) for i in range(cfg.pool_size)]

    def _fresh(self, name: str) -> nn.Module:
        """A dense network of the zoo's `name`, initialised as `build_model` does (its own inits, then Glorot),
        from the loop's generator, leaving the global RNG as it was."""
        seed = int(torch.randint(2**62, (1,), generator=self.gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dense = DenseNet(MODELS[name](self.fields, self.dim, self.arch), self.tasks, self.arch)
            xavier_(dense)
        return dense.to(self.device).eval()

    def _reinit(self, slot: ProxySlot) -> None:
        """The slot restarted from a fresh init: new weights, zero moments and steps."""
        with torch.no_grad():
            fresh = dict(self._fresh(slot.name).named_parameters())
            for k in slot.params:
                slot.params[k].copy_(fresh[k])
                slot.m[k].zero_()
                slot.v[k].zero_()
            slot.steps.zero_()

    def stagger(self, syn: SyntheticSet, rows: Tensor) -> None:
        """Spread the slots over the horizon before the loop: slot i starts i/P of the way along."""
        for i, slot in enumerate(self.slots):
            self.advance(slot, syn, rows, i * self.cfg.pool_horizon // len(self.slots))

    def pick(self) -> ProxySlot:
        return self.slots[int(torch.randint(len(self.slots), (1,), generator=self.gen))]

    def advance(self, slot: ProxySlot, syn: SyntheticSet, rows: Tensor, steps: int | None = None) -> None:
        """`steps` (default `pool_advance`) Adam steps of the slot on batches of `rows` of the set."""
        cfg = self.cfg
        b1, b2, eps = 0.9, 0.999, 1e-8
        for _ in range(cfg.pool_advance if steps is None else steps):
            if int(slot.steps) >= cfg.pool_horizon:
                self._reinit(slot)
            pick = rows[torch.randint(len(rows), (min(cfg.pool_batch, len(rows)),), generator=self.gen).to(rows.device)]
            params = {k: v.detach().requires_grad_(True) for k, v in slot.params.items()}
            logits = torch.func.functional_call(slot.module, params, (syn.emb[pick].detach(),))
            loss = bce(logits, soft_targets(syn.logits[pick].detach(), cfg.temperature))
            grads = torch.autograd.grad(loss, list(params.values()))
            slot.steps += 1
            t = float(slot.steps)
            with torch.no_grad():
                for (k, p), g in zip(slot.params.items(), grads):
                    slot.m[k].mul_(b1).add_(g, alpha=1 - b1)
                    slot.v[k].mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (slot.v[k] / (1 - b2**t)).sqrt_().add_(eps)
                    p.addcdiv_(slot.m[k], denom, value=-cfg.pool_lr / (1 - b1**t))

    def state_tensors(self) -> dict[str, Tensor]:
        """Every slot's tensors by name, for the stage checkpoint (restored in place)."""
        out: dict[str, Tensor] = {}
        for i, slot in enumerate(self.slots):
            out[f"pool{i}.steps"] = slot.steps
            for k in slot.params:
                out[f"pool{i}.p.{k}"], out[f"pool{i}.m.{k}"], out[f"pool{i}.v.{k}"] = slot.params[k], slot.m[k], slot.v[k]
        return out
