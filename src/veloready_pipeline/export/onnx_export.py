"""ONNX export of XGBoost boosters and PyTorch modules, with ONNX Runtime parity checks.

ONNX is the portable, runnable twin of each Core ML file: Core ML cannot execute on
Linux, ONNX Runtime can, so the ONNX file is how CI proves an exported model predicts
what the trained one does.

Tree ensembles are written with **double-precision** thresholds, leaf weights and
accumulation (``ai.onnx.ml`` opset 3, input cast to double inside the graph). The
default float32 ensemble sums a few hundred leaves in float32 and drifts by up to
~1e-4 from the exact sum on 0-100 targets; in double it lands within float32 rounding
of the exact sum, like Core ML's tree ensemble, which evaluates in double.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.export import (
    ExportedArtifact,
    ExportParityError,
    digest_path,
    size_path,
)
from veloready_pipeline.fsio import atomic_write_bytes

if TYPE_CHECKING:
    import onnx
    import torch
    import xgboost

__all__ = [
    "PARITY_ATOL",
    "check_parity",
    "export_torch_onnx",
    "export_xgboost_onnx",
    "onnx_io",
    "run_onnx",
]

PARITY_ATOL = 1e-4
ONNX_OPSET = 17
_ML_OPSET = 3


def check_parity(target: str, got: np.ndarray, expected: np.ndarray,
                 atol: float = PARITY_ATOL) -> float:
    """Max abs difference between two prediction arrays; raise if above ``atol``.

    NaN anywhere in either array counts as an infinite difference: a model that emits
    NaN must never pass as equal.

    Raises:
        ExportParityError: naming ``target`` and the difference.
    """
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.size != expected.size:
        raise ExportParityError(target, float("inf"), atol,
                                f"shape {got.shape} vs expected {expected.shape}")
    diff = np.abs(got.reshape(-1) - expected.reshape(-1))
    worst = float("inf") if np.isnan(diff).any() else float(diff.max(initial=0.0))
    if not worst <= atol:
        raise ExportParityError(target, worst, atol)
    return worst


def run_onnx(path: Path | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX model on CPU with ONNX Runtime (one thread: cheap, deterministic)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def onnx_io(model: onnx.ModelProto) -> tuple[list[str], list[list[int]], list[str],
                                              list[list[int]]]:
    """Graph input/output names and shapes; a symbolic (batch) dimension is ``-1``."""

    def shape(value_info: Any) -> list[int]:
        dims = value_info.type.tensor_type.shape.dim
        return [int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims]

    init_names = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init_names]
    return ([v.name for v in inputs], [shape(v) for v in inputs],
            [v.name for v in model.graph.output], [shape(v) for v in model.graph.output])


# ----------------------------------------------------------------------------- XGBoost


def _tree_ensemble_to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite onnxmltools' float32 TreeEnsembleRegressor to double precision.

    Thresholds and leaf weights become double tensors (exact: they are float32 values),
    the float input is cast to double inside the graph, so ONNX Runtime compares and
    accumulates in double. Comparisons are unchanged because a float32 feature cast to
    double compares with a float32 threshold exactly as in float32.
    """
    import onnx
    from onnx import helper, numpy_helper

    tree_nodes = [n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor"]
    if len(tree_nodes) != 1:
        raise ValueError(f"expected one TreeEnsembleRegressor node, found {len(tree_nodes)}")
    node = tree_nodes[0]
    attrs = []
    for attr in node.attribute:
        if attr.name in ("nodes_values", "target_weights", "base_values"):
            values = np.asarray(attr.floats, dtype=np.float32).astype(np.float64)
            attrs.append(helper.make_attribute(f"{attr.name}_as_tensor",
                                               numpy_helper.from_array(values)))
        else:
            attrs.append(attr)
    del node.attribute[:]
    node.attribute.extend(attrs)
    src = node.input[0]
    node.input[0] = f"{src}_as_double"
    cast = helper.make_node("Cast", [src], [f"{src}_as_double"], to=onnx.TensorProto.DOUBLE,
                            name="cast_features_to_double")
    model.graph.node.insert(0, cast)
    kept = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", "ai.onnx.ml")]
    del model.opset_import[:]
    model.opset_import.extend(kept + [helper.make_opsetid("", ONNX_OPSET),
                                      helper.make_opsetid("ai.onnx.ml", _ML_OPSET)])
    return model


def export_xgboost_onnx(booster: xgboost.Booster, n_features: int, path: Path | str,
                        input_name: str = "features",
                        output_name: str = "prediction",
                        metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Write a booster as an ONNX tree ensemble (float input ``[batch, n_features]``).

    onnxmltools only understands feature names of the form ``f0, f1, ...``, so a copy of
    the booster without names is converted; the feature order is the column order.
    The base score XGBoost >= 2 learns is read by onnxmltools from the booster config.
    """
    import onnx
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    path = Path(path)
    anon = booster.copy()
    anon.feature_names = None
    anon.feature_types = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnxmltools.convert_xgboost(
            anon, initial_types=[(input_name, FloatTensorType([None, n_features]))]
        )
    model = _tree_ensemble_to_double(model)
    old_out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [output_name if o == old_out else o for o in node.output]
    model.graph.output[0].name = output_name
    model.graph.name = path.stem  # onnxmltools names the graph with a random UUID
    model.producer_name = "veloready-pipeline"
    for key, value in sorted((metadata or {}).items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString(), mode=0o644)
    return model


# ----------------------------------------------------------------------------- PyTorch


def export_torch_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path,
                      input_name: str, output_names: Sequence[str],
                      sample: torch.Tensor | None = None,
                      metadata: dict[str, str] | None = None,
                      atol: float = PARITY_ATOL) -> ExportedArtifact:
    """Export a module to ONNX (float32, dynamic batch) and prove parity on ``sample``.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs
    ``onnxscript``, which is not a dependency, and tracing is what the Core ML path
    uses too, so both files come from the same graph.

    Raises:
        ExportParityError: if ONNX Runtime and PyTorch differ by more than ``atol``.
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = example if sample is None else sample
    was_training = module.training
    module.eval()
    started = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        dyn = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=[input_name],
                              output_names=list(output_names), dynamic_axes=dyn,
                              opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
        model = onnx.load(str(tmp))
        model.producer_name = "veloready-pipeline"
        for key, value in sorted((metadata or {}).items()):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.checker.check_model(model)
        atomic_write_bytes(path, model.SerializeToString(), mode=0o644)
        with torch.no_grad():
            expected = module(sample)
    finally:
        module.train(was_training)
        tmp.unlink(missing_ok=True)
    expected_list = list(expected) if isinstance(expected, tuple | list) else [expected]
    got = run_onnx(path, {input_name: sample.detach().cpu().numpy().astype(np.float32)})
    worst = 0.0
    for name, g, e in zip(output_names, got, expected_list, strict=True):
        worst = max(worst, check_parity(f"onnx vs torch ({path.name}:{name})", g,
                                        e.detach().cpu().numpy(), atol))
    in_names, in_shapes, out_names, out_shapes = onnx_io(model)
    return ExportedArtifact(
        kind="onnx", variant="float32", path=path, size_bytes=size_path(path),
        sha256=digest_path(path), input_names=in_names, input_shapes=in_shapes,
        output_names=out_names, output_shapes=out_shapes,
        extra={"seconds": round(time.perf_counter() - started, 4),
               "parity_max_abs_diff": worst, "parity_rows": int(sample.shape[0]),
               "opset": ONNX_OPSET},
    )


def metadata_json(value: Any) -> str:
    """Compact JSON for a metadata value (Core ML and ONNX metadata are strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
