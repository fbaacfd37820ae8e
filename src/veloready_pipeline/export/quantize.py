"""The weights a (quantized) Core ML package really holds, mapped back onto PyTorch.

Gates must be computed from the weights the phone will run, not from the float
weights the quantized file was made from. Core ML cannot run on Linux, so instead of
re-implementing coremltools' quantizers the saved package itself is read: its ML
program is loaded (``ct.models.MLModel(path, skip_model_load=True)`` -> MIL program),
every ``constexpr_affine_dequantize`` / ``constexpr_lut_to_dense`` op is materialised
(dequantized) and the result is written into a copy of the module's ``state_dict``.
A copy of the module loaded with it computes what the package computes.

Mapping package tensors back to parameter names:

* Linear (and other directly used) weights keep their PyTorch name in the program:
  ``net.0.weight`` becomes const ``net_0_weight`` (``net_0_weight_quantized`` /
  ``_palettized`` once compressed). A weight that a graph pass re-created under a new
  name is matched by shape and value instead (`_match_by_value`).
* ``nn.LSTM`` weights are re-laid out by the converter (gate order i, f, g, o -> i, f,
  o, g; the two biases summed) into anonymous consts that feed an ``lstm`` op. They
  are matched to the module's LSTM layers by shape and value (the nearest candidate,
  which must be unique) and the gate order is swapped back. The summed bias is never
  quantized (coremltools does not compress rank-1 tensors); it is checked to equal
  ``b_ih + b_hh`` so a wrong match cannot go unnoticed.

Any compressed tensor that cannot be mapped raises: evaluating gates on weights that
are not the package's would be dishonest.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.export.mlprogram import (
    COREML_VARIANTS,
    compress_mlmodel,
    convert_torch_mlmodel,
    ct_call,
    ct_module,
)

# torch and coremltools are imported inside the functions that use them: heavy optional
# libraries (seconds to import) that only the export stage needs.
if TYPE_CHECKING:
    import torch

__all__ = [
    "PackageWeight",
    "QuantReport",
    "dequantized_state_dict",
    "module_with_state",
    "quantized_copy",
    "read_back_state_dict",
    "read_package_weights",
]

_SUFFIXES = ("_quantized", "_palettized", "_sparsified", "_dequantized")
_LSTM_WEIGHT_KEYS = {"weight_ih": "ih", "weight_hh": "hh", "weight_ih_back": "ih",
                     "weight_hh_back": "hh"}
_LSTM_BIAS_KEYS = ("bias", "bias_back")
_LSTM_STATE_KEYS = ("initial_h", "initial_c")
# Float32 tolerance for "the summed LSTM bias equals b_ih + b_hh" and float round trips.
_BIAS_ATOL = 1e-6


@dataclass
class PackageWeight:
    """One constant tensor of a Core ML ML program, as the runtime will see it.

    Attributes:
        name: MIL op name (e.g. ``net_0_weight_quantized``).
        value: the tensor's values (dequantized for compressed tensors), float32.
        compression: ``"none"``, ``"linear"`` (affine int8) or ``"palette"`` (LUT).
        consumers: ``(op_type, op_name, input_key)`` of every op that reads it.
        details: for ``linear``: ``scale``, ``zero_point``, ``axis``,
            ``quantized_data``; for ``palette``: ``lut``.
    """

    name: str
    value: np.ndarray
    compression: str
    consumers: list[tuple[str, str, str]]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantReport:
    """Which module parameters a package holds compressed and which in float."""

    quantized: list[str]
    unquantized: list[str]
    compression: dict[str, str]
    details: dict[str, dict[str, Any]]


def _load_program(path: Path) -> Any:
    ct = ct_module()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    with ct_call():
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{path}: not an ML program package (type "
                             f"{spec.WhichOneof('Type')}); only networks are quantized")
        return milproto_load(model_spec=spec, specification_version=spec.specificationVersion,
                             file_weights_dir=mlmodel.weights_dir)


def _walk_ops(block: Any) -> list[Any]:
    ops = []
    for op in block.operations:
        ops.append(op)
        for inner in op.blocks:
            ops.extend(_walk_ops(inner))
    return ops


def _consumers(op: Any) -> list[tuple[str, str, str]]:
    out = []
    var = op.outputs[0]
    for child in var.child_ops:
        for key, value in child.inputs.items():
            values = value if isinstance(value, list | tuple) else [value]
            if any(v is var for v in values):
                out.append((child.op_type, child.name, key))
    return out


def read_package_weights(path: Path) -> list[PackageWeight]:
    """Every float tensor constant of a saved ML program, dequantized where compressed.

    Constants that only feed a ``constexpr_*`` op (the int8 data, scales, LUTs) are not
    listed on their own; they appear in the ``details`` of the tensor they encode.
    """
    prog = _load_program(Path(path))
    weights = []
    for func in prog.functions.values():
        for op in _walk_ops(func):
            consumers = _consumers(op)
            if op.op_type == "const":
                if consumers and all(c[0].startswith("constexpr_") for c in consumers):
                    continue
                val = op.outputs[0].val
                if not isinstance(val, np.ndarray) or val.ndim == 0:
                    continue
                if not np.issubdtype(val.dtype, np.floating):
                    continue
                weights.append(PackageWeight(op.name, val.astype(np.float32), "none",
                                             consumers))
            elif op.op_type.startswith("constexpr_"):
                value = np.asarray(op.materialized_val_inference(), dtype=np.float32)
                details: dict[str, Any] = {}
                if op.op_type == "constexpr_affine_dequantize":
                    kind = "linear"
                    details = {"scale": np.asarray(op.scale.val, dtype=np.float32),
                               "zero_point": np.asarray(op.zero_point.val),
                               "axis": int(op.axis.val),
                               "quantized_data": np.asarray(op.quantized_data.val)}
                elif op.op_type == "constexpr_lut_to_dense":
                    kind = "palette"
                    details = {"lut": np.asarray(op.lut.val, dtype=np.float32)}
                else:
                    kind = op.op_type.removeprefix("constexpr_")
                weights.append(PackageWeight(op.name, value, kind, consumers, details))
    return weights


def _strip_suffixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


def _swap_last_two_gates(x: np.ndarray, axis_size: int) -> np.ndarray:
    """PyTorch LSTM gate blocks i, f, g, o <-> Core ML i, f, o, g (its own inverse)."""
    h = axis_size // 4
    return np.concatenate([x[: 2 * h], x[3 * h: 4 * h], x[2 * h: 3 * h]], axis=0)


def _lstm_candidates(module: torch.nn.Module) -> list[dict[str, Any]]:
    """Every (LSTM layer, direction) of the module with its weights in Core ML layout."""
    import torch

    out = []
    for mod_name, mod in module.named_modules():
        if not isinstance(mod, torch.nn.LSTM):
            continue
        if getattr(mod, "proj_size", 0):
            raise ValueError(f"{mod_name}: LSTM with proj_size is not supported")
        prefix = f"{mod_name}." if mod_name else ""
        for layer in range(mod.num_layers):
            for sfx in ("", "_reverse") if mod.bidirectional else ("",):
                cand: dict[str, Any] = {"used": set()}
                for kind in ("ih", "hh"):
                    key = f"{prefix}weight_{kind}_l{layer}{sfx}"
                    w = getattr(mod, f"weight_{kind}_l{layer}{sfx}").detach().cpu().numpy()
                    cand[kind] = (key, _swap_last_two_gates(w, w.shape[0]))
                if mod.bias:
                    b = (getattr(mod, f"bias_ih_l{layer}{sfx}")
                         + getattr(mod, f"bias_hh_l{layer}{sfx}")).detach().cpu().numpy()
                    cand["bias"] = _swap_last_two_gates(b, b.shape[0])
                out.append(cand)
    return out


def _orient_details(details: dict[str, Any], rows: int) -> dict[str, Any]:
    """Swap per-row quantization parameters back to PyTorch gate order."""
    out = dict(details)
    for key in ("scale", "zero_point"):
        val = out.get(key)
        if isinstance(val, np.ndarray) and val.ndim == 1 and val.size == rows:
            out[key] = _swap_last_two_gates(val, rows)
    if "quantized_data" in out and out.get("axis", 0) == 0:
        out["quantized_data"] = _swap_last_two_gates(out["quantized_data"], rows)
    return out


@dataclass
class _ReadBack:
    """The state dict being rebuilt from a package, with what was mapped so far."""

    package_path: Path
    state: dict[str, torch.Tensor]
    compression: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def put(self, key: str, value: np.ndarray, w: PackageWeight,
            details: dict[str, Any]) -> None:
        """Replace parameter ``key`` with the package's ``value``."""
        import torch

        self.state[key] = torch.from_numpy(value).to(self.state[key].dtype)
        self.compression[key] = w.compression
        self.details[key] = details


def _names_by_sanitized(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Parameter names keyed by their Core ML name (dots become underscores)."""
    by_sanitized: dict[str, str] = {}
    for key in state:
        sanitized = key.replace(".", "_")
        if sanitized in by_sanitized:
            raise ValueError(f"parameters {by_sanitized[sanitized]!r} and {key!r} have the "
                             "same Core ML name; cannot map package weights back")
        by_sanitized[sanitized] = key
    return by_sanitized


def _map_named(rb: _ReadBack, w: PackageWeight, key: str) -> None:
    """A weight that kept its PyTorch name."""
    if tuple(rb.state[key].shape) != w.value.shape:
        raise ValueError(f"{rb.package_path}: {w.name} has shape {w.value.shape}, "
                         f"parameter {key} has {tuple(rb.state[key].shape)}")
    _check_plausible(rb.package_path, w, key, rb.state[key].cpu().numpy())
    rb.put(key, w.value.copy(), w, w.details)


def _map_lstm_weight(rb: _ReadBack, w: PackageWeight, kind: str,
                     candidates: list[dict[str, Any]]) -> None:
    """An anonymous LSTM weight: the nearest unused layer tensor, gate order swapped back."""
    scored = sorted(
        (float(np.abs(c[kind][1] - w.value).max()), i)
        for i, c in enumerate(candidates)
        if c[kind][1].shape == w.value.shape and kind not in c["used"]
    )
    if not scored:
        raise ValueError(f"{rb.package_path}: LSTM tensor {w.name} {w.value.shape} "
                         "matches no LSTM layer of the module")
    if len(scored) > 1 and scored[1][0] <= 2 * scored[0][0]:
        raise ValueError(f"{rb.package_path}: LSTM tensor {w.name} matches several "
                         "layers equally well; cannot map it back")
    cand = candidates[scored[0][1]]
    cand["used"].add(kind)
    key = cand[kind][0]
    value = _swap_last_two_gates(w.value, w.value.shape[0])
    rb.put(key, np.ascontiguousarray(value), w, _orient_details(w.details, w.value.shape[0]))


def _check_lstm_bias(package_path: Path, w: PackageWeight,
                     candidates: list[dict[str, Any]]) -> None:
    """A summed LSTM bias must be float and equal some layer's ``b_ih + b_hh``."""
    if w.compression != "none":
        raise ValueError(f"{package_path}: compressed LSTM bias {w.name} cannot be "
                         "split back into bias_ih and bias_hh")
    if not any("bias" in c and c["bias"].shape == w.value.shape
               and np.abs(c["bias"] - w.value).max() <= _BIAS_ATOL for c in candidates):
        raise ValueError(f"{package_path}: LSTM bias {w.name} equals no layer's "
                         "bias_ih + bias_hh")


def _lstm_role(w: PackageWeight) -> str | None:
    """'weight', 'bias' or 'state' if every LSTM use of ``w`` is of that role, else None."""
    lstm_uses = [(c[2]) for c in w.consumers if c[0] == "lstm"]
    if not lstm_uses:
        return None
    for role, keys in (("weight", _LSTM_WEIGHT_KEYS), ("bias", _LSTM_BIAS_KEYS),
                       ("state", _LSTM_STATE_KEYS)):
        if all(u in keys for u in lstm_uses):
            return role
    return None


def _map_one(rb: _ReadBack, w: PackageWeight, by_sanitized: dict[str, str],
             candidates: list[dict[str, Any]]) -> bool:
    """Map or check one package tensor; False if it is compressed and still unmapped."""
    base = _strip_suffixes(w.name)
    role = None if base in by_sanitized else _lstm_role(w)
    if base in by_sanitized:
        _map_named(rb, w, by_sanitized[base])
    elif role == "weight":
        first_use = next(c[2] for c in w.consumers if c[0] == "lstm")
        _map_lstm_weight(rb, w, _LSTM_WEIGHT_KEYS[first_use], candidates)
    elif role == "bias":
        _check_lstm_bias(rb.package_path, w, candidates)
    elif role == "state":
        if np.any(w.value != 0):
            raise ValueError(f"{rb.package_path}: non-zero LSTM initial state {w.name}")
    elif w.compression != "none":
        return False
    return True


def read_back_state_dict(module: torch.nn.Module, package_path: Path
                         ) -> tuple[dict[str, torch.Tensor], QuantReport]:
    """The module's state dict with every tensor the package holds replaced by its values.

    Returns:
        (state dict, report). Tensors the package does not hold as a mapped constant
        (e.g. LSTM biases, which it holds summed; buffers folded into other constants)
        keep the module's values; those are float32 in the package either way.

    Raises:
        ValueError: if a compressed tensor cannot be mapped to a parameter, a mapping is
            ambiguous, or a mapped tensor's shape does not match.
    """
    rb = _ReadBack(package_path, {k: v.detach().clone() for k, v in module.state_dict().items()})
    by_sanitized = _names_by_sanitized(rb.state)
    candidates = _lstm_candidates(module)
    leftovers = [w for w in read_package_weights(package_path)
                 if not _map_one(rb, w, by_sanitized, candidates)]
    unmapped: list[str] = []
    for w in leftovers:
        matched = _match_by_value(w, module, set(rb.compression))
        if matched is None:
            unmapped.append(w.name)
            continue
        rb.put(matched, w.value.copy(), w, w.details)
    if unmapped:
        raise ValueError(f"{package_path}: compressed tensors {unmapped} map to no parameter "
                         "of the module; the quantized weights cannot be evaluated in PyTorch")
    params = [name for name, _ in module.named_parameters()]
    quantized = [p for p in params if rb.compression.get(p, "none") != "none"]
    report = QuantReport(quantized=quantized,
                         unquantized=[p for p in params if p not in quantized],
                         compression=rb.compression, details=rb.details)
    return rb.state, report


def _check_plausible(package_path: Path, w: PackageWeight, key: str,
                     original: np.ndarray) -> None:
    """A tensor mapped by name must be the parameter: equal if stored in float,
    and within half the parameter's largest magnitude if compressed."""
    diff = float(np.abs(original.astype(np.float32) - w.value).max(initial=0.0))
    scale = float(np.abs(original).max(initial=0.0))
    limit = 0.5 * scale if w.compression != "none" else 1e-6 * max(1.0, scale)
    if not diff <= limit:
        raise ValueError(f"{package_path}: {w.name} differs from parameter {key} by {diff:.3g}"
                         f" (allowed {limit:.3g}); the package does not hold this weight as is")


def _match_by_value(w: PackageWeight, module: torch.nn.Module, taken: set[str]) -> str | None:
    """The parameter a renamed tensor holds, by shape and value, or None.

    Graph passes can re-create a weight const under a new name (e.g. ``fuse_linear_bias``
    folds a trailing ``add`` into the linear op and names its weight after the output).
    The weight values are unchanged, so the nearest same-shaped parameter is it, provided
    the match is unique (the runner-up at least twice as far) and close (within half
    the parameter's largest magnitude; a transformed weight, e.g. scaled, fails this).
    """
    scored = sorted(
        (float(np.abs(p.detach().cpu().numpy() - w.value).max()), name,
         float(p.detach().abs().max()))
        for name, p in module.named_parameters()
        if name not in taken and tuple(p.shape) == w.value.shape
    )
    if not scored:
        return None
    best, name, scale = scored[0]
    if len(scored) > 1 and scored[1][0] <= 2 * best:
        return None
    return name if best <= 0.5 * scale else None


def module_with_state(module: torch.nn.Module, state: dict[str, torch.Tensor]
                      ) -> torch.nn.Module:
    """A deep copy of ``module`` in eval mode, loaded with ``state`` (strict)."""
    clone = copy.deepcopy(module)
    clone.load_state_dict(state, strict=True)
    return clone.eval()


def _infer_example(module: torch.nn.Module, seq_len: int = 14) -> torch.Tensor:
    """A zero input for tracing, from the first Linear/LSTM layer (weights do not
    depend on the batch or sequence length)."""
    import torch

    for mod in module.modules():
        if isinstance(mod, torch.nn.LSTM):
            shape = (1, seq_len, mod.input_size) if mod.batch_first else (seq_len, 1,
                                                                           mod.input_size)
            return torch.zeros(shape)
        if isinstance(mod, torch.nn.Linear):
            return torch.zeros(1, mod.in_features)
    raise ValueError("cannot infer an example input (no Linear or LSTM layer); pass "
                     "package_path or example")


def dequantized_state_dict(module: torch.nn.Module, variant: str,
                           package_path: Path | None = None, *,
                           example: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The module's weights as the ``variant`` Core ML package holds them, dequantized.

    Args:
        module: the float network.
        variant: ``"float32"``, ``"linear8"`` or ``"palette4"``.
        package_path: the saved package of that variant (from `export_torch`). Without
            it the module is converted and compressed into a temporary package, which
            is read back the same way (needs ``example`` unless it can be inferred).

    Raises:
        ValueError: unknown variant, a package whose recorded variant differs, or
            weights that cannot be mapped back (see `read_back_state_dict`).
    """
    if variant not in COREML_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {COREML_VARIANTS}")
    if package_path is not None:
        recorded = _package_variant(Path(package_path))
        if recorded is not None and recorded != variant:
            raise ValueError(f"{package_path} holds {recorded!r} weights, not {variant!r}")
        return read_back_state_dict(module, Path(package_path))[0]
    if variant == "float32":
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    example = _infer_example(module) if example is None else example
    model = compress_mlmodel(convert_torch_mlmodel(module, example, "input", ["output"]),
                             variant)
    with tempfile.TemporaryDirectory(prefix="veloready-quant-") as tmp:
        path = Path(tmp) / f"model_{variant}.mlpackage"
        with ct_call():
            model.save(str(path))
        return read_back_state_dict(module, path)[0]


def _package_variant(path: Path) -> str | None:
    ct = ct_module()
    with ct_call():
        spec = ct.utils.load_spec(str(path))
    return spec.description.metadata.userDefined.get("veloready.variant")


def quantized_copy(module: torch.nn.Module, variant: str, package_path: Path | None = None,
                   *, example: torch.Tensor | None = None) -> torch.nn.Module:
    """A copy of ``module`` (eval mode) running the ``variant`` package's weights."""
    return module_with_state(
        module, dequantized_state_dict(module, variant, package_path, example=example)
    )
