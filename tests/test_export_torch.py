"""PyTorch -> Core ML (float32, linear8, palette4) + ONNX, and the read-back weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from veloready_pipeline.export import ExportedArtifact
from veloready_pipeline.export.coreml import export_torch
from veloready_pipeline.export.onnx_export import run_onnx
from veloready_pipeline.export.quantize import (
    dequantized_state_dict,
    quantized_copy,
    read_back_state_dict,
)

SEED = 5


class MLP(nn.Module):
    """13 -> 64 -> 64 -> 64 -> 4, the zone net's shape at its largest tuned width."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSTMNet(nn.Module):
    """14 days x 10 features -> risk 0-100, the injury net's shape (hidden 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(10, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return torch.sigmoid(self.head(out[:, -1, :])).squeeze(-1) * 100.0


class NormMLP(nn.Module):
    """Standardised in/out like the pipeline's nets; the trailing ``+ y_mean`` gets fused
    into the last linear op by coremltools, which renames that weight."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.register_buffer("x_mean", torch.linspace(-1, 1, 6))
        self.register_buffer("x_std", torch.linspace(0.5, 2, 6))
        self.register_buffer("y_mean", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std) + self.y_mean


def _weights(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.dim() >= 2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[nn.Module, torch.Tensor,
                                                  dict[str, ExportedArtifact],
                                                  dict[str, nn.Module]]]:
    """Both nets exported once for the whole module (conversion is the slow part)."""
    torch.manual_seed(SEED)
    out = tmp_path_factory.mktemp("torch_export")
    result = {}
    for key, module, shape in (("mlp", MLP(), (13,)), ("lstm", LSTMNet(), (14, 10))):
        module.eval()
        example = torch.randn(1, *shape)
        sample = torch.randn(16, *shape)
        back: dict[str, nn.Module] = {}
        arts = export_torch(module, example, out, key, "x", ["y"], sample=sample,
                            read_back=back)
        result[key] = (module, sample, arts, back)
    return result


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_every_variant_and_onnx_is_written(exported, key) -> None:
    module, sample, arts, _ = exported[key]
    assert set(arts) == {"float32", "linear8", "palette4", "onnx"}
    for variant in ("float32", "linear8", "palette4"):
        art = arts[variant]
        assert art.kind == "coreml" and art.variant == variant
        assert art.path.name == f"{key}_{variant}.mlpackage" and art.path.is_dir()
        assert (art.path / "Manifest.json").is_file()
        assert art.size_bytes == sum(p.stat().st_size for p in art.path.rglob("*")
                                     if p.is_file())
        assert art.input_names == ["x"] and art.output_names == ["y"]
        assert art.input_shapes == [[1, *sample.shape[1:]]]
        assert art.extra["minimum_ios"] == "17.0"
    assert arts["onnx"].path.is_file() and arts["onnx"].input_shapes[0][0] == -1


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_onnx_matches_pytorch(exported, key) -> None:
    module, sample, arts, _ = exported[key]
    got = run_onnx(arts["onnx"].path, {"x": sample.numpy()})[0]
    with torch.no_grad():
        expected = module(sample).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4
    assert arts["onnx"].extra["parity_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_quantized_packages_are_at_most_half_the_float_one(exported, key) -> None:
    arts = exported[key][2]
    full = arts["float32"]
    for variant in ("linear8", "palette4"):
        size = arts[variant].size_bytes
        assert size <= 0.5 * full.size_bytes, (variant, size, full.size_bytes)
        assert arts[variant].extra["weights_bytes"] < 0.5 * full.extra["weights_bytes"]
    assert arts["palette4"].size_bytes < arts["linear8"].size_bytes


@pytest.mark.parametrize("key", ["mlp", "lstm"])
@pytest.mark.parametrize("variant", ["linear8", "palette4"])
def test_every_weight_tensor_is_quantized(exported, key, variant) -> None:
    module, _, arts, _ = exported[key]
    _, report = read_back_state_dict(module, arts[variant].path)
    assert sorted(report.quantized) == sorted(_weights(module))
    # Rank-1 tensors (biases) stay float32: coremltools never compresses them.
    assert all(dict(module.named_parameters())[n].dim() == 1 for n in report.unquantized)
    assert arts[variant].extra["quantized_params"] == report.quantized


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_float_package_holds_exactly_the_module_weights(exported, key) -> None:
    module, _, arts, _ = exported[key]
    state, report = read_back_state_dict(module, arts["float32"].path)
    assert report.quantized == []
    for name, value in module.state_dict().items():
        assert torch.equal(state[name], value), name


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_linear8_weights_are_within_half_a_step(exported, key) -> None:
    module, _, arts, _ = exported[key]
    state, report = read_back_state_dict(module, arts["linear8"].path)
    params = dict(module.named_parameters())
    for name in _weights(module):
        w = params[name].detach().numpy()
        deq = state[name].numpy()
        scale = report.details[name]["scale"].reshape(-1, 1)  # per output row, torch order
        err = np.abs(deq - w)
        assert err.max() > 0, f"{name} was not changed by quantization"
        assert np.all(err <= scale / 2 + 1e-7), name
        # coremltools' symmetric int8 math, reproduced: scale = max|row| / 127.
        np.testing.assert_allclose(scale.ravel(), np.abs(w).max(axis=1) / 127, rtol=1e-6)
        q = np.clip(np.round(w / scale.astype(np.float32)), -127, 127)
        np.testing.assert_array_equal(report.details[name]["quantized_data"], q)


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_palette4_weights_come_from_a_16_entry_table(exported, key) -> None:
    module, _, arts, _ = exported[key]
    state, report = read_back_state_dict(module, arts["palette4"].path)
    params = dict(module.named_parameters())
    for name in _weights(module):
        deq = state[name].numpy()
        lut = report.details[name]["lut"].ravel()
        assert lut.size == 16 and np.isin(deq, lut).all(), name
        w = params[name].detach().numpy()
        assert 0 < np.abs(deq - w).max() <= (w.max() - w.min()) / 2, name


@pytest.mark.parametrize("key", ["mlp", "lstm"])
def test_quantized_copy_runs_the_package_weights(exported, key) -> None:
    """If the LSTM gate order were mapped back wrongly the outputs would be far off."""
    module, sample, arts, back = exported[key]
    with torch.no_grad():
        ref = module(sample)
        outs = {v: quantized_copy(module, v, arts[v].path)(sample) for v in
                ("float32", "linear8", "palette4")}
        # The copies export_torch hands back (what families.nets_common.export_torch_net
        # gates) are the same package weights as reading each package again.
        for v, copy in back.items():
            assert not copy.training
            assert torch.equal(copy(sample), outs[v]), v
    assert set(back) == {"float32", "linear8", "palette4"}
    assert torch.equal(outs["float32"], ref)
    scale = float(ref.abs().max())
    assert 0 < float((outs["linear8"] - ref).abs().max()) < 0.02 * scale
    assert 0 < float((outs["palette4"] - ref).abs().max()) < 0.2 * scale
    assert module.training is False  # left as it came


def test_without_a_package_the_same_weights_are_produced(exported) -> None:
    module, _, arts, _ = exported["mlp"]
    from_package = dequantized_state_dict(module, "linear8", arts["linear8"].path)
    fresh = dequantized_state_dict(module, "linear8")
    for name in from_package:
        assert torch.equal(from_package[name], fresh[name]), name


def test_a_package_of_another_variant_is_refused(exported) -> None:
    module, _, arts, _ = exported["mlp"]
    with pytest.raises(ValueError, match="palette4"):
        dequantized_state_dict(module, "linear8", arts["palette4"].path)


def test_renamed_weight_is_matched_by_value(tmp_path: Path) -> None:
    torch.manual_seed(SEED)
    module = NormMLP().eval()
    arts = export_torch(module, torch.randn(1, 6), tmp_path, "norm", "x", ["y"],
                        variants=("float32", "linear8"))
    _, report = read_back_state_dict(module, arts["linear8"].path)
    assert sorted(report.quantized) == ["net.0.weight", "net.2.weight"]
    with torch.no_grad():
        x = torch.randn(8, 6)
        diff = (quantized_copy(module, "linear8", arts["linear8"].path)(x) - module(x)).abs()
    assert 0 < float(diff.max()) < 0.05


def test_a_quantized_constant_that_is_no_parameter_is_an_error(tmp_path: Path) -> None:
    """Gates must not silently run on weights other than the package's."""

    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.fixed = torch.linspace(-1, 1, 16).reshape(4, 4)  # not a param or buffer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) @ self.fixed

    with pytest.raises(ValueError, match="map to no parameter"):
        dequantized_state_dict(Hidden().eval(), "linear8", example=torch.randn(1, 4))


def test_export_is_deterministic_and_restores_training_mode(tmp_path: Path) -> None:
    torch.manual_seed(SEED)
    module = NormMLP().train()
    example = torch.randn(1, 6)
    a = export_torch(module, example, tmp_path / "a", "n", "x", ["y"], variants=("palette4",))
    b = export_torch(module, example, tmp_path / "b", "n", "x", ["y"], variants=("palette4",))
    assert module.training
    assert a["palette4"].sha256 == b["palette4"].sha256
    assert a["onnx"].sha256 == b["onnx"].sha256


def test_unknown_variant_or_unsafe_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int2"):
        export_torch(MLP(), torch.randn(1, 13), tmp_path, "m", "x", ["y"], variants=("int2",))
    with pytest.raises(ValueError, match="plain file stem"):
        export_torch(MLP(), torch.randn(1, 13), tmp_path, "../m", "x", ["y"])


def test_exported_packages_publish_and_verify(exported, tmp_path: Path) -> None:
    """Real packages through OTA: verify passes, one flipped byte in the zip fails."""
    from veloready_pipeline.export.ota import OTAVerificationError, verify_path, write_manifest

    arts = exported["lstm"][2]
    entries = [{"family": "injury", "registry_name": "veloready-injury-a1",
                "registry_version": 1, "artifact": arts[v]} for v in ("palette4", "onnx")]
    manifest = write_manifest(tmp_path, "a1", entries, tmp_path / "key.pem",
                              minimum_ios=arts["palette4"].extra["minimum_ios"])
    assert verify_path(manifest)[0].n_files == 2
    shipped = tmp_path / "a1" / "injury" / "1" / "lstm_palette4.mlpackage.zip"
    data = bytearray(shipped.read_bytes())
    data[-100] ^= 0xFF
    shipped.write_bytes(bytes(data))
    with pytest.raises(OTAVerificationError, match="lstm_palette4.mlpackage.zip: sha256"):
        verify_path(tmp_path)


def test_a_package_of_another_model_is_refused(exported) -> None:
    _, _, arts, _ = exported["mlp"]
    torch.manual_seed(SEED + 1)
    with pytest.raises(ValueError, match="does not hold this weight"):
        read_back_state_dict(MLP(), arts["linear8"].path)


def _trained_like(module: nn.Module, seed: int) -> nn.Module:
    """Random weights and non-trivial normalisation buffers (a net as training leaves it:
    with the default zero means and unit scales some ops would be no-ops)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.8 + 0.1)
    return module.eval()


def _spec_bytes(mlmodel) -> bytes:
    spec = mlmodel.get_spec()
    spec.description.metadata.ClearField("userDefined")  # coremltools' build info only
    return spec.SerializeToString()


def _search_space_nets():
    from veloready_pipeline.config import load_settings
    from veloready_pipeline.features_nets import FEATURE_NAMES_INJURY, FEATURE_NAMES_ZONES
    from veloready_pipeline.models.injury import InjuryLSTM
    from veloready_pipeline.models.zones import ZoneMLP

    spaces = load_settings().tuning.spaces
    for hidden in spaces["zones"].params["hidden"]:
        yield f"zones-{hidden}", ZoneMLP(hidden=hidden), torch.rand(1, len(FEATURE_NAMES_ZONES))
    for hidden in spaces["injury"].params["hidden"]:
        yield (f"injury-{hidden}", InjuryLSTM(hidden=hidden),
               torch.rand(1, 14, len(FEATURE_NAMES_INJURY)))


def test_trimmed_pass_pipelines_give_the_packages_of_the_full_ones() -> None:
    """Every architecture of the configured search spaces converts and compresses to the
    same ML program with only the passes our nets need as with coremltools' defaults."""
    from veloready_pipeline.export.mlprogram import compress_mlmodel, convert_torch_mlmodel

    nets = list(_search_space_nets())
    assert {n.split("-")[0] for n, _, _ in nets} == {"zones", "injury"}
    for i, (name, module, example) in enumerate(nets):
        module = _trained_like(module, SEED + i)
        trimmed = convert_torch_mlmodel(module, example, "features", ["out"])
        full = convert_torch_mlmodel(module, example, "features", ["out"], full_pipeline=True)
        assert _spec_bytes(trimmed) == _spec_bytes(full), name
        for variant in ("linear8", "palette4"):
            a = compress_mlmodel(trimmed, variant)
            b = compress_mlmodel(full, variant, full_pipeline=True)
            assert _spec_bytes(a) == _spec_bytes(b), f"{name} {variant}"
