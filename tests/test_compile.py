"""torch.compile: compiled models match eager (1e-4) forward and backward, deformable attention compiles as one
graph, the training engine's compile switch, and the CPU compiler check.

The default run uses the aot_eager backend (graph capture + AOT autograd, no code generation: seconds); every
test checks that dynamo really captured a graph. Inductor on each family takes minutes on a small CPU: slow."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch.utils.data import TensorDataset

import vistra
from vistra.backbones.vit import VisionTransformer, ViTConfig
from vistra.engine import TrainConfig, Trainer
from vistra.export import compile as compile_module
from vistra.export import compile_model
from vistra.layers.deform_attn import MSDeformAttn

TOL = 1e-4
TINY_PVT = {"backbone": "pvt_v2_b0", "backbone_kwargs": {"depths": [1, 1, 1, 1]}}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and counts only its own graphs."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _captured() -> tuple[int, int]:
    """(graphs captured, graph breaks) since the test started."""
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5))


def _outputs(out) -> list[torch.Tensor]:
    """A model's output (tensor or dict) as a list of its final tensors (no aux outputs)."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [v for k, v in sorted(out.items()) if isinstance(v, torch.Tensor)]


def _assert_close(model: nn.Module, compiled: nn.Module, *inputs: torch.Tensor) -> None:
    with torch.no_grad():
        want, got = _outputs(model(*inputs)), _outputs(compiled(*inputs))
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert (a - b).abs().max().item() < TOL


def test_compiled_classifier_matches_eager_forward_and_backward():
    model = _tiny_vit()
    compiled = compile_model(model, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled(x).square().mean().backward()  # the compiled module shares the parameters
    assert _captured() == (1, 0)
    for name, p in model.named_parameters():
        assert p.grad is not None and (p.grad - eager_grads[name]).abs().max().item() < TOL, name
    _assert_close(model.eval(), compiled, torch.randn(1, 3, 48, 32))  # another size recompiles, still right


def test_deformable_attention_compiles_into_one_graph():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)  # impl "auto": reference while compiling
    nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    shapes = ((6, 8), (3, 4))
    value = torch.randn(2, 6 * 8 + 3 * 4, 16)
    query, refs = torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2)
    compiled = compile_model(attn, backend="aot_eager", fullgraph=True)  # fullgraph: any break would raise
    with torch.no_grad():
        got = compiled(query, refs, value, shapes)
        want = attn(query, refs, value, shapes)  # eager: the native or fast path
    assert _captured() == (1, 0)
    assert (got - want).abs().max().item() < TOL


class _Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x)


def test_trainer_runs_the_training_steps_compiled(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0, compile=True, compile_backend="aot_eager",
                      progress=False, out_dir=str(tmp_path))
    model = _Regressor()

    def step(m, batch):
        x, y = batch
        return (m(x) - y).square().mean()

    trainer = Trainer(model, cfg, data, step)
    assert isinstance(trainer.train_model, torch._dynamo.eval_frame.OptimizedModule)
    before = model.fc.weight.detach().clone()
    history = trainer.fit()
    assert _captured()[0] >= 1 and history[0]["train_loss"] > 0
    assert not torch.equal(before, model.fc.weight), "the compiled steps trained the model's own parameters"
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert set(saved) == {"fc.weight", "fc.bias"}  # checkpoints hold the module's names, no _orig_mod.


def test_compile_switches_and_checks(monkeypatch):
    from vistra.cli import build_parser

    args = build_parser().parse_args(["train", "classify", "--data", "d", "--compile"])
    assert args.set == ["train.compile=true"]
    with pytest.raises(ValueError, match="compile_backend"):
        TrainConfig(compile_backend="tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        compile_model(nn.Linear(2, 2), backend="tensorrt")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*aot_eager"):
        compile_model(nn.Linear(2, 2))
    compile_model(nn.Linear(2, 2), backend="aot_eager")  # needs none


# --------------------------------------------------------------------------- slow: inductor, every family
def _family(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 96)
    if name == "vit":
        return _tiny_vit(), (torch.randn(2, 3, 32, 32),)
    if name == "detr":
        return vistra.create_model("detr", backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
                                   dim_feedforward=64, num_queries=8, num_classes=4), (images,)
    if name == "deformable_detr":
        return vistra.create_model("deformable_detr", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
                                   dim_feedforward=64, num_queries=8, num_classes=4, enc_n_points=2, dec_n_points=2,
                                   **TINY_PVT), (images,)
    return vistra.create_model("transcenter_pvt_v2_b0", d_model=32, n_heads=4, n_points=2, dec_layers=1,
                               dim_feedforward=64, head_channels=16,
                               backbone_kwargs={"depths": [1, 1, 1, 1]}), (images, torch.randn(2, 3, 64, 96))


@pytest.mark.slow
@pytest.mark.skipif(compile_module.cxx_compiler() is None, reason="inductor on the CPU needs a C++ compiler")
@pytest.mark.parametrize("family", ["vit", "detr", "deformable_detr", "transcenter"])
def test_inductor_matches_eager(family):
    model, inputs = _family(family)
    model.eval()
    compiled = compile_model(model)
    _assert_close(model, compiled, *inputs)
    graphs, breaks = _captured()
    assert graphs >= 1 and breaks == 0


@pytest.mark.slow
@pytest.mark.skipif(compile_module.cxx_compiler() is None, reason="inductor on the CPU needs a C++ compiler")
def test_inductor_backward_matches_eager():
    model = _tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).mean().backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compile_model(model)(x).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert (p.grad - want[name]).abs().max().item() < TOL, name
