"""The CTR model zoo: the shared contract, functional use, and each paper's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from diet_engine.models import MODELS, CTRModel, ModelConfig, build_model
from diet_engine.models.dcn import CrossNet
from diet_engine.models.dcnv2 import CrossNetMix, CrossNetV2, DCNv2
from diet_engine.models.finalmlp import InteractionAggregation
from diet_engine.models.finalnet import FieldGate, FinalLinear, FinalNet
from diet_engine.models.wukong import Wukong, WukongLayer
from diet_engine.data.schema import CategoricalField, NumericField, StreamSchema

NAMES = sorted(MODELS)
B = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tensors here are tiny: extra intra-op threads only add sync cost on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def schema() -> StreamSchema:
    return StreamSchema(
        name="t",
        fields=[CategoricalField(name=n, buckets=50) for n in ("a", "b", "c")],
        numeric=[NumericField(name="n")],
        labels=["y1", "y2"],
        timestamp="ts",
    )


def _batch(schema: StreamSchema, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.randint(0, 50, (B, len(schema.fields)), generator=g)
    num = torch.rand(B, len(schema.numeric), generator=g)
    y = torch.randint(0, 2, (B, schema.num_tasks), generator=g).float()
    return cat, num, y


def _model(name: str, schema: StreamSchema, **kw) -> CTRModel:
    torch.manual_seed(0)
    return build_model(name, schema, **kw)


def _nonzero_finite(t: torch.Tensor) -> bool:
    t = t.to_dense() if t.is_sparse else t  # the embedding table's gradient is sparse
    return bool(torch.isfinite(t).all()) and bool(t.abs().sum() > 0)


# --- the contract every model meets ---------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_parameter_split(name: str, schema: StreamSchema) -> None:
    model = _model(name, schema)
    cat, num, y = _batch(schema)
    out = model(cat, num)
    assert out.shape == (B, schema.num_tasks)
    assert torch.equal(model.dense(model.embedding(cat, num)), out)

    F.binary_cross_entropy_with_logits(out, y).backward()
    for p in model.embedding_parameters():
        assert p.grad is not None and _nonzero_finite(p.grad)
    # Every dense parameter learns: catches dead branches (e.g. a gate with no gradient).
    for n, p in model.dense.named_parameters():
        assert p.grad is not None and _nonzero_finite(p.grad), n

    emb_ids = {id(p) for p in model.embedding_parameters()}
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert not emb_ids & dense_ids
    assert emb_ids | dense_ids == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_matches_module(name: str, schema: StreamSchema) -> None:
    model = _model(name, schema)
    cat, num, _ = _batch(schema)
    emb = model.embedding(cat, num).detach()
    params = {k: v.detach().clone() for k, v in model.dense.named_parameters()}
    torch.testing.assert_close(functional_call(model.dense, params, (emb,)), model.dense(emb))


@pytest.mark.parametrize("name", NAMES)
def test_second_order_through_inner_sgd_step(name: str, schema: StreamSchema) -> None:
    """Dataset-distillation meta-gradient: d(real loss after one step on synthetic data)/d(synthetic)."""
    model = _model(name, schema)
    cat, num, y = _batch(schema, seed=1)
    real = model.embedding(cat, num).detach()
    syn = (torch.randn(B, schema.num_fields, model.embedding.dim) * 0.1).requires_grad_()
    y_syn = torch.rand(B, schema.num_tasks)
    params = {k: v.detach().requires_grad_() for k, v in model.dense.named_parameters()}

    inner = F.binary_cross_entropy_with_logits(functional_call(model.dense, params, (syn,)), y_syn)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    stepped = {k: p - 0.5 * g for (k, p), g in zip(params.items(), grads)}
    outer = F.binary_cross_entropy_with_logits(functional_call(model.dense, stepped, (real,)), y)
    (g_syn,) = torch.autograd.grad(outer, syn)
    assert _nonzero_finite(g_syn)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's own jvp decomps
@pytest.mark.parametrize("name", NAMES)
def test_torch_func_grad_and_jvp(name: str, schema: StreamSchema) -> None:
    model = _model(name, schema).double()
    cat, num, y = _batch(schema, seed=2)
    emb = model.embedding(cat, num).detach()
    params = {k: v.detach() for k, v in model.dense.named_parameters()}

    def loss(p: dict[str, torch.Tensor], e: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(functional_call(model.dense, p, (e,)), y.double())

    g_params, g_emb = torch.func.grad(loss, argnums=(0, 1))(params, emb)
    assert set(g_params) == set(params) and _nonzero_finite(g_emb)

    tangent = torch.randn_like(emb)
    f = lambda e: functional_call(model.dense, params, (e,))  # noqa: E731
    _, jvp_out = torch.func.jvp(f, (emb,), (tangent,))
    # Forward-mode must agree with reverse-mode's double-backward JVP (finite differences
    # are no referee here: tiny embeddings sit next to ReLU kinks).
    _, want = torch.autograd.functional.jvp(f, emb, tangent)
    assert _nonzero_finite(jvp_out)
    torch.testing.assert_close(jvp_out, want)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_parameters(name: str, schema: StreamSchema) -> None:
    a, b = _model(name, schema), _model(name, schema)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    torch.manual_seed(1)
    c = build_model(name, schema)
    assert any(not torch.equal(va, vc) for va, vc in zip(a.parameters(), c.parameters()))


def test_registry(schema: StreamSchema) -> None:
    assert set(MODELS) == {"dcn", "dcnv2", "finalmlp", "finalnet", "wukong"}
    with pytest.raises(ValueError, match="dcn, dcnv2, finalmlp, finalnet, wukong"):
        build_model("deepfm", schema)
    with pytest.raises(TypeError):
        build_model("dcn", schema, no_such_knob=1)
    cfg = ModelConfig(embedding_dim=8, hidden=[16])
    model = build_model("dcn", schema, cfg, num_cross_layers=1)
    assert model.name == "dcn" and model.embedding.dim == 8
    assert len(model.dense.backbone.cross.w) == 1
    assert model.dense.backbone.out_dim == schema.num_fields * 8 + 16


# --- each paper's structure -------------------------------------------------


def test_dcn_cross_layer_formula() -> None:
    cross = CrossNet(3, 2)
    with torch.no_grad():
        cross.w[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        cross.b[0].copy_(torch.tensor([0.1, 0.2, 0.3]))
        cross.w[1].weight.copy_(torch.tensor([[0.0, 0.0, 1.0]]))
        cross.b[1].zero_()
    x0 = torch.tensor([[1.0, 1.0, 1.0]])
    # layer 1: x0 * (x0·w) + b + x0 = 6 + b + 1;  layer 2: x0 * x1[2] + x1
    x1 = torch.tensor([[7.1, 7.2, 7.3]])
    torch.testing.assert_close(cross(x0), x1 * 1 + 7.3)


def test_dcnv2_full_rank_formula() -> None:
    torch.manual_seed(0)
    cross = CrossNetV2(5, 1)
    x0 = torch.randn(4, 5)
    lin = cross.layers[0]
    torch.testing.assert_close(cross(x0), x0 * (x0 @ lin.weight.T + lin.bias) + x0)


def test_dcnv2_low_rank_mixture() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=[16])
    net = DCNv2(4, 8, cfg, low_rank=3, num_experts=4, num_cross_layers=2)
    assert isinstance(net.cross, CrossNetMix) and net.cross.U.shape == (2, 4, 32, 3)
    assert net(torch.randn(6, 4, 8)).shape == (6, 32 + 16)
    # One expert is the plain low-rank layer x0 ⊙ (U tanh(C tanh(Vᵀx)) + b) + x.
    one = CrossNetMix(5, 1, 2, 1)
    with torch.no_grad():
        one.bias.normal_()
    x0 = torch.randn(3, 5)
    U, V, C = one.U[0, 0], one.V[0, 0], one.C[0, 0]
    want = x0 * (torch.tanh(torch.tanh(x0 @ V) @ C) @ U.T + one.bias[0]) + x0
    torch.testing.assert_close(one(x0), want)


def test_dcnv2_stacked() -> None:
    net = DCNv2(4, 8, ModelConfig(hidden=[16, 12]), structure="stacked")
    assert net.out_dim == 12 and net(torch.randn(2, 4, 8)).shape == (2, 12)
    with pytest.raises(ValueError):
        DCNv2(4, 8, ModelConfig(), structure="sideways")


def test_finalmlp_multi_head_bilinear_fusion() -> None:
    torch.manual_seed(0)
    fuse = InteractionAggregation(6, 4, out_dim=3, num_heads=2)
    x1, x2 = torch.randn(5, 6), torch.randn(5, 4)
    w3 = fuse.w3.reshape(2, 3, 2, 3)  # [head, d1/h, d2/h, out]
    bilinear = sum(
        torch.einsum("bi,ijo,bj->bo", x1[:, 3 * h : 3 * h + 3], w3[h], x2[:, 2 * h : 2 * h + 2]) for h in range(2)
    )
    torch.testing.assert_close(fuse(x1, x2), fuse.w1(x1) + fuse.w2(x2) + bilinear)
    with pytest.raises(ValueError):
        InteractionAggregation(6, 5, out_dim=3, num_heads=2)


def test_finalmlp_feature_selection_gate_range(schema: StreamSchema) -> None:
    model = _model("finalmlp", schema)
    fs = model.dense.backbone.fs1
    gate = 2 * torch.sigmoid(fs.gate(fs.context))
    assert gate.shape == (schema.num_fields * model.embedding.dim,)
    assert bool(((gate > 0) & (gate < 2)).all())
    assert model.dense.backbone.out_dim == 64


def test_finalnet_layer_and_gate() -> None:
    torch.manual_seed(0)
    layer = FinalLinear(6, 4, "concat")
    x = torch.randn(3, 6)
    a, c = (x @ layer.linear.weight.T + layer.linear.bias).chunk(2, dim=-1)
    torch.testing.assert_close(layer(x), torch.cat([a, a * c], dim=-1))
    summed = FinalLinear(6, 4, "sum")
    a, c = summed.linear(x).chunk(2, dim=-1)
    torch.testing.assert_close(summed(x), a + a * c)
    # The field gate starts as identity: output is [E, E].
    emb = torch.randn(2, 3, 5)
    torch.testing.assert_close(FieldGate(3)(emb), torch.cat([emb, emb], dim=1))


def test_finalnet_block_variants() -> None:
    cfg = ModelConfig(hidden=[16, 8])
    two, one = FinalNet(4, 8, cfg), FinalNet(4, 8, cfg, block_type="1B", use_field_gate=False)
    assert two.out_dim == 16 and one.out_dim == 8
    assert two(torch.randn(2, 4, 8)).shape == (2, 16) and one(torch.randn(2, 4, 8)).shape == (2, 8)
    with pytest.raises(ValueError):
        FinalNet(4, 8, ModelConfig(hidden=[15]))


def test_wukong_layer_embedding_counts() -> None:
    torch.manual_seed(0)
    layer = WukongLayer(n_in=4, dim=8, n_fm=3, n_lcb=5, rank=2, fmb_hidden=[16], dropout=0.0)
    x = torch.randn(6, 4, 8)
    assert layer(x).shape == (6, 3 + 5, 8) and layer.res is not None
    # LN(concat(FMB(X), W_L X) + R X), FMB(X) = MLP(LN(flatten(X Xᵀ Y))) as n_F embeddings.
    fm = (x @ x.transpose(1, 2) @ layer.proj).flatten(1)
    fmb = layer.fm_mlp(layer.fm_norm(fm)).reshape(6, 3, 8)
    lcb = torch.einsum("ln,bnd->bld", layer.lcb.weight, x)
    res = torch.einsum("mn,bnd->bmd", layer.res.weight, x)
    torch.testing.assert_close(layer(x), layer.norm(torch.cat([fmb, lcb], dim=1) + res))
    same = WukongLayer(n_in=8, dim=8, n_fm=3, n_lcb=5, rank=2, fmb_hidden=[16], dropout=0.0)
    assert same.res is None  # identity residual when the count is unchanged
    net = Wukong(4, 8, ModelConfig(), num_layers=2, n_fm=3, n_lcb=5)
    assert net.out_dim == 8 * 8 and net(x[:, :4]).shape == (6, 64)
