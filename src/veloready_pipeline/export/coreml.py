"""Core ML export: XGBoost boosters as float32 tree ensembles, PyTorch nets as ML programs.

Core ML cannot run on Linux, so every Core ML file is proved against its source model
without the Core ML runtime:

* **Trees**: the saved ``.mlmodel`` is read back and its ``TreeEnsembleRegressor`` nodes
  are walked in NumPy (`evaluate_tree_spec`). Summed in float32 in tree order, exactly
  as XGBoost's CPU predictor sums, they must reproduce ``booster.predict``; summed in
  double, as Core ML does, they must match the exact sum of XGBoost's own routed leaves.
  The ONNX twin is checked against the same exact sum with ONNX Runtime.
* **Networks**: the ONNX twin is checked against PyTorch with ONNX Runtime, and the
  weights stored in every Core ML package (float or quantized) are read back from the
  package (`veloready_pipeline.export.quantize`) so that the gates can be evaluated on
  exactly those weights.

Known converter bug fixed here: coremltools' XGBoost converter hard-codes the base
prediction to 0.5, while XGBoost >= 2 *learns* ``base_score`` (e.g. ~50 for a 0-100
recovery score). Left as is, every Core ML prediction would be off by
``base_score - 0.5``. `xgboost_base_margin` reads the learned value from the booster.

Exports are deterministic: the same model gives byte-identical files (the random
UUIDs that coremltools writes into a package's ``Manifest.json`` are replaced by
UUIDs derived from the item path), so re-publishing an unchanged model is a no-op.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
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
from veloready_pipeline.export.mlprogram import (
    COREML_VARIANTS,
    compress_mlmodel,
    convert_torch_mlmodel,
    ct_call,
    ct_module,
)
from veloready_pipeline.export.onnx_export import (
    PARITY_ATOL,
    check_parity,
    export_torch_onnx,
    export_xgboost_onnx,
    metadata_json,
    onnx_io,
    run_onnx,
)
from veloready_pipeline.export.quantize import module_with_state, read_back_state_dict
from veloready_pipeline.fsio import atomic_write_bytes, replace_dir

# torch, xgboost and coremltools are imported inside the functions that use them: heavy
# optional libraries (seconds to import) that only the export stage needs.
if TYPE_CHECKING:
    import torch
    import xgboost

__all__ = [
    "ExportParityError",
    "ExportedArtifact",
    "MINIMUM_IOS",
    "evaluate_tree_spec",
    "export_torch",
    "export_xgboost",
    "raw_xgboost_spec",
    "xgboost_base_margin",
    "xgboost_exact_predictions",
]

# Every variant targets iOS 17: per-channel int8 (constexpr_affine_dequantize) and
# per-tensor 4-bit LUTs (constexpr_lut_to_dense) exist since iOS 16; only grouped-channel
# palettes or 4-bit *linear* weights would need iOS 18.
MINIMUM_IOS = {"float32": "17.0", "linear8": "17.0", "palette4": "17.0"}
# Tree ensembles are NeuralNetwork-era specs, readable by every iOS the app supports.
TREE_MINIMUM_IOS = "17.0"
_AUTHOR = "VeloReady Pipeline"
# Objectives whose prediction is the raw margin (identity link): for these the base
# score XGBoost stores is directly the Core ML base prediction value.
_IDENTITY_OBJECTIVES = frozenset({
    "reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror",
})


# ----------------------------------------------------------------------------- helpers


def _check_name(name: str) -> str:
    """A file stem must stay inside ``out_dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"export name {name!r} must be a plain file stem")
    return name


def _normalize_package(package: Path) -> None:
    """Make a saved package byte-for-byte reproducible.

    Three things vary between saves of the same model: the random UUIDs coremltools
    gives package items in ``Manifest.json`` (only keys: replaced by UUID5 of the item
    path), the order of metadata map entries in ``model.mlmodel`` (protobuf maps are
    serialised in arbitrary order: re-serialised deterministically) and the
    ``conversion_date`` metadata (dropped; the OTA manifest records ``created_at``).
    """
    from coremltools.proto import Model_pb2

    spec_path = next(package.rglob("model.mlmodel"))
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec.description.metadata.userDefined.pop("com.github.apple.coremltools.conversion_date",
                                              None)
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = manifest.get("itemInfoEntries", {})
    mapping = {
        old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"veloready-mlpackage:{info['path']}")).upper()
        for old, info in entries.items()
    }
    manifest["itemInfoEntries"] = {mapping[k]: v for k, v in entries.items()}
    root = manifest.get("rootModelIdentifier")
    if root in mapping:
        manifest["rootModelIdentifier"] = mapping[root]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n",
                             encoding="utf-8")


def _feature_shape(feature: Any) -> list[int]:
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        return [int(d) for d in feature.type.multiArrayType.shape]
    if kind in ("doubleType", "int64Type"):
        return [1]
    raise ValueError(f"unsupported Core ML feature type {kind} for {feature.name}")


def coreml_io(spec: Any) -> tuple[list[str], list[list[int]], list[str], list[list[int]]]:
    """Input/output names and shapes declared in a Core ML spec."""
    ins = list(spec.description.input)
    outs = list(spec.description.output)
    return ([f.name for f in ins], [_feature_shape(f) for f in ins],
            [f.name for f in outs], [_feature_shape(f) for f in outs])


def _set_metadata(spec: Any, short: str, metadata: dict[str, str]) -> None:
    spec.description.metadata.shortDescription = short
    spec.description.metadata.author = _AUTHOR
    for key, value in sorted(metadata.items()):
        spec.description.metadata.userDefined[key] = str(value)


# ----------------------------------------------------------------------------- XGBoost


def _booster_config(booster: xgboost.Booster) -> dict[str, Any]:
    return json.loads(booster.save_config())


def xgboost_base_margin(booster: xgboost.Booster) -> float:
    """The base margin a booster adds to its trees' leaves, as XGBoost uses it.

    XGBoost >= 2 learns ``base_score`` from the labels (``boost_from_average``) and
    stores it as ``"[5.33E1]"`` (3.x) or ``"5.33E1"`` (2.x); it is a float32 value.
    Only identity-link objectives are supported, where the margin is the base score.

    Raises:
        ValueError: for multi-output boosters or objectives with a link function.
    """
    learner = _booster_config(booster)["learner"]
    objective = learner["objective"]["name"]
    if objective not in _IDENTITY_OBJECTIVES:
        raise ValueError(
            f"XGBoost objective {objective!r} is not supported for Core ML export "
            f"(supported: {sorted(_IDENTITY_OBJECTIVES)})"
        )
    params = learner["learner_model_param"]
    if int(params.get("num_target", "1")) != 1 or int(params.get("num_class", "0")) > 1:
        raise ValueError("only single-output XGBoost regressors can be exported")
    raw = params["base_score"]
    values = json.loads(raw) if raw.strip().startswith("[") else [float(raw)]
    if len(values) != 1:
        raise ValueError(f"expected one base_score, got {raw!r}")
    return float(np.float32(values[0]))


def raw_xgboost_spec(booster: xgboost.Booster, feature_names: Sequence[str]) -> Any:
    """The coremltools XGBoost converter's spec exactly as it comes out (unfixed).

    The converter sets the booster's feature names on the object it is given, so it
    gets a copy; the caller's booster is never modified.
    """
    ct_module()
    from coremltools.converters.xgboost._tree_ensemble import convert_tree_ensemble

    with ct_call():
        return convert_tree_ensemble(booster.copy(), list(feature_names), "prediction",
                                     force_32bit_float=True)


def _apply_base_margin(spec: Any, booster: xgboost.Booster) -> None:
    """Replace the converter's hard-coded 0.5 base prediction with the learned margin."""
    ensemble = spec.treeEnsembleRegressor.treeEnsemble
    if len(ensemble.basePredictionValue) != 1:
        raise ValueError("expected a single-output tree ensemble from the converter")
    ensemble.basePredictionValue[0] = xgboost_base_margin(booster)


def _fixed_xgboost_spec(booster: xgboost.Booster, feature_names: Sequence[str],
                        input_name: str, output_name: str,
                        metadata: dict[str, str]) -> Any:
    """Converter output with the learned base margin and a single array input.

    The converter declares one scalar input per feature; the app and the ONNX twin use
    one ``[n_features]`` array instead (feature order = ``feature_names``, recorded in
    the metadata). Tree nodes index features by position, which is unchanged.
    """
    ct_module()
    from coremltools.models import datatypes
    from coremltools.models._interface_management import set_transform_interface_params

    spec = raw_xgboost_spec(booster, feature_names)
    _apply_base_margin(spec, booster)
    del spec.description.input[:]
    del spec.description.output[:]
    set_transform_interface_params(
        spec, [(input_name, datatypes.Array(len(feature_names)))],
        [(output_name, datatypes.Double())],
    )
    spec.description.predictedFeatureName = output_name
    spec.description.input[0].shortDescription = (
        "features in this order: " + ", ".join(feature_names)
    )
    spec.description.output[0].shortDescription = "predicted value"
    _set_metadata(spec, "XGBoost regressor (float32 tree ensemble)", metadata)
    return spec


def _tree_arrays(spec: Any) -> dict[str, np.ndarray]:
    """Flatten a TreeEnsembleRegressor spec into node arrays for vectorised walking."""
    regressor = spec.treeEnsembleRegressor
    ensemble = regressor.treeEnsemble
    if ensemble.numPredictionDimensions != 1:
        raise ValueError("only single-output tree ensembles can be evaluated")
    from coremltools.proto import TreeEnsemble_pb2

    transform = TreeEnsemble_pb2.TreeEnsemblePostEvaluationTransform.Name(
        regressor.postEvaluationTransform)
    if transform != "NoTransform":
        raise ValueError(f"unsupported post-evaluation transform {transform}")
    nodes = list(ensemble.nodes)
    node_type: Any = type(nodes[0]) if nodes else None
    index = {(n.treeId, n.nodeId): k for k, n in enumerate(nodes)}
    behaviours = [node_type.TreeNodeBehavior.Name(n.nodeBehavior) for n in nodes] if nodes else []
    codes = {"LeafNode": -1, "BranchOnValueLessThanEqual": 0, "BranchOnValueLessThan": 1,
             "BranchOnValueGreaterThanEqual": 2, "BranchOnValueGreaterThan": 3,
             "BranchOnValueEqual": 4, "BranchOnValueNotEqual": 5}
    n = len(nodes)
    arrays: dict[str, np.ndarray] = {
        "behaviour": np.array([codes[b] for b in behaviours], dtype=np.int8),
        "feature": np.zeros(n, dtype=np.int64),
        "threshold": np.zeros(n, dtype=np.float64),
        "true": np.zeros(n, dtype=np.int64),
        "false": np.zeros(n, dtype=np.int64),
        "missing_true": np.zeros(n, dtype=bool),
        "leaf": np.zeros(n, dtype=np.float64),
    }
    children: set[int] = set()
    for k, node in enumerate(nodes):
        if arrays["behaviour"][k] < 0:
            arrays["leaf"][k] = sum(e.evaluationValue for e in node.evaluationInfo
                                    if e.evaluationIndex == 0)
            continue
        arrays["feature"][k] = node.branchFeatureIndex
        arrays["threshold"][k] = node.branchFeatureValue
        arrays["true"][k] = index[(node.treeId, node.trueChildNodeId)]
        arrays["false"][k] = index[(node.treeId, node.falseChildNodeId)]
        arrays["missing_true"][k] = node.missingValueTracksTrueChild
        children.update((int(arrays["true"][k]), int(arrays["false"][k])))
    roots = sorted((nodes[k].treeId, k) for k in range(n) if k not in children)
    tree_ids = [t for t, _ in roots]
    if len(set(tree_ids)) != len(tree_ids):
        raise ValueError("a tree in the spec has more than one root")
    arrays["roots"] = np.array([k for _, k in roots], dtype=np.int64)
    arrays["base"] = np.array(list(ensemble.basePredictionValue), dtype=np.float64)
    return arrays


def evaluate_tree_spec(spec: Any, X: np.ndarray, accumulate: str = "float64") -> np.ndarray:
    """Predict with a Core ML TreeEnsembleRegressor spec in NumPy.

    Args:
        spec: the Core ML model spec (e.g. ``coremltools.utils.load_spec(path)``).
        X: ``[rows, features]``; cast to float32 first, the precision the features
            have in the pipeline and in XGBoost. NaN follows ``missingValueTracksTrueChild``.
        accumulate: ``"float64"`` sums base + leaves in double, as Core ML evaluates;
            ``"float32"`` starts from the base and adds leaves in tree order in float32,
            which is exactly how XGBoost's CPU predictor sums (bit-identical results).
    """
    if accumulate not in ("float64", "float32"):
        raise ValueError("accumulate must be 'float64' or 'float32'")
    a = _tree_arrays(spec)
    x = np.asarray(X, dtype=np.float32).astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"X must be 2-D [rows, features], got shape {x.shape}")
    rows = np.arange(x.shape[0])[:, None]
    cur = np.broadcast_to(a["roots"], (x.shape[0], a["roots"].size)).copy()
    for _ in range(len(a["behaviour"]) + 1):
        beh = a["behaviour"][cur]
        live = beh >= 0
        if not live.any():
            break
        value = x[rows, a["feature"][cur]]
        thr = a["threshold"][cur]
        with np.errstate(invalid="ignore"):
            go_true = np.select(
                [beh == 0, beh == 1, beh == 2, beh == 3, beh == 4, beh == 5],
                [value <= thr, value < thr, value >= thr, value > thr, value == thr,
                 value != thr], default=False)
        go_true = np.where(np.isnan(value), a["missing_true"][cur], go_true)
        nxt = np.where(go_true, a["true"][cur], a["false"][cur])
        cur = np.where(live, nxt, cur)
    else:  # pragma: no cover - a cycle in a corrupted spec
        raise ValueError("tree walk did not terminate: the spec's trees contain a cycle")
    leaves = a["leaf"][cur]
    if accumulate == "float64":
        return a["base"][0] + leaves.sum(axis=1)
    acc = np.full(x.shape[0], a["base"][0], dtype=np.float32)
    for t in range(leaves.shape[1]):
        acc = (acc + leaves[:, t].astype(np.float32)).astype(np.float32)
    return acc.astype(np.float64)


def _dmatrix(booster: xgboost.Booster, X: np.ndarray) -> xgboost.DMatrix:
    import xgboost as xgb

    return xgb.DMatrix(np.asarray(X, dtype=np.float32), missing=np.nan,
                       feature_names=booster.feature_names, feature_types=booster.feature_types)


def xgboost_exact_predictions(booster: xgboost.Booster, X: np.ndarray) -> np.ndarray:
    """XGBoost's own trees and routing, with base + leaves summed exactly (double).

    ``booster.predict`` adds each tree's float32 leaf to a float32 running total, which
    drifts from the exact sum by up to ~2e-4 for 300 trees on a 0-100 target. Double-
    precision evaluators (Core ML on device, the ONNX twin) land on the exact sum, so
    that is the reference they are held to within 1e-4. Routing comes from XGBoost
    (``pred_leaf``); leaf values are the booster's float32 leaves.
    """
    dm = _dmatrix(booster, X)
    leaf_ids = booster.predict(dm, pred_leaf=True).astype(np.int64)
    if leaf_ids.ndim == 1:
        leaf_ids = leaf_ids[:, None]
    dumps = booster.get_dump(dump_format="json")
    tables = []
    for dump in dumps:
        table: dict[int, float] = {}
        stack = [json.loads(dump)]
        while stack:
            node = stack.pop()
            if "leaf" in node:
                table[int(node["nodeid"])] = float(np.float32(node["leaf"]))
            stack.extend(node.get("children", []))
        tables.append(table)
    width = max((max(t) for t in tables if t), default=0) + 1
    lut = np.zeros((len(tables), width), dtype=np.float64)
    for i, table in enumerate(tables):
        for nid, value in table.items():
            lut[i, nid] = value
    leaves = lut[np.arange(len(tables))[None, :], leaf_ids]
    return xgboost_base_margin(booster) + leaves.sum(axis=1)


def export_xgboost(booster: xgboost.Booster, feature_names: list[str], out_dir: Path,
                   name: str, sample: np.ndarray, *, input_name: str = "features",
                   output_name: str = "prediction", metadata: dict[str, str] | None = None,
                   atol: float = PARITY_ATOL) -> dict[str, ExportedArtifact]:
    """Write ``<name>.mlmodel`` (float32 tree ensemble) and ``<name>.onnx``; prove parity.

    Checks on ``sample`` (``[rows, features]``, NaN allowed), each within ``atol``:

    1. Core ML spec (read back from disk), float32 tree-order sum vs ``booster.predict``
       - the literal parity: same routing, leaves and base as XGBoost, bit for bit.
    2. Core ML spec, double sum (what the device computes) vs `xgboost_exact_predictions`.
    3. ONNX Runtime vs `xgboost_exact_predictions`. ONNX vs ``booster.predict`` is also
       recorded (``extra["onnx_vs_predict_max_abs_diff"]``); it differs from (3) only by
       XGBoost's own float32 rounding, recorded as ``extra["xgboost_float32_rounding"]``.

    Args:
        booster: the trained booster; it is not modified.
        feature_names: column order of ``sample`` and of the model's input array.
        out_dir: folder for the two files (created).
        name: file stem, e.g. ``"recovery-ath007-v3"``.
        sample: rows the parity is checked on (e.g. the athlete's test part).
        input_name / output_name: tensor names in both files.
        metadata: extra string metadata stored in both files.

    Returns:
        ``{"coreml": ..., "onnx": ...}``.

    Raises:
        ExportParityError: with the max abs diff, if any check fails.
        ValueError: for unsupported boosters or mismatched feature names.
    """
    ct = ct_module()
    _check_name(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_features = len(feature_names)
    if booster.num_features() != n_features:
        raise ValueError(f"{name}: booster has {booster.num_features()} features but "
                         f"{n_features} feature names were given")
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim != 2 or sample.shape[1] != n_features or sample.shape[0] == 0:
        raise ValueError(f"{name}: sample must be [rows>0, {n_features}], got {sample.shape}")
    import xgboost as xgb

    meta = {"veloready.name": name, "veloready.family_kind": "xgboost",
            "veloready.feature_names": metadata_json(list(feature_names)),
            "veloready.base_margin": repr(xgboost_base_margin(booster)),
            **(metadata or {})}
    ct_meta = {"com.github.apple.coremltools.version": ct.__version__,
               "com.github.apple.coremltools.source": f"xgboost=={xgb.__version__}", **meta}

    started = time.perf_counter()
    spec = _fixed_xgboost_spec(booster, feature_names, input_name, output_name, ct_meta)
    coreml_path = out_dir / f"{name}.mlmodel"
    atomic_write_bytes(coreml_path, spec.SerializeToString(deterministic=True), mode=0o644)
    coreml_seconds = time.perf_counter() - started
    shipped = ct.utils.load_spec(str(coreml_path))

    predicted = booster.predict(_dmatrix(booster, sample)).astype(np.float64)
    exact = xgboost_exact_predictions(booster, sample)
    d_coreml32 = check_parity(f"{name}: core ml spec (float32 sum) vs booster.predict",
                              evaluate_tree_spec(shipped, sample, "float32"), predicted, atol)
    d_coreml64 = check_parity(f"{name}: core ml spec (double) vs exact xgboost sum",
                              evaluate_tree_spec(shipped, sample, "float64"), exact, atol)

    started = time.perf_counter()
    onnx_path = out_dir / f"{name}.onnx"
    onnx_model = export_xgboost_onnx(booster, n_features, onnx_path, input_name, output_name,
                                     meta)
    onnx_seconds = time.perf_counter() - started
    onnx_pred = run_onnx(onnx_path, {input_name: sample})[0].reshape(-1)
    d_onnx = check_parity(f"{name}: onnx runtime vs exact xgboost sum", onnx_pred, exact, atol)
    rounding = float(np.abs(predicted - exact).max())
    onnx_vs_predict = float(np.abs(onnx_pred.astype(np.float64) - predicted).max())

    shared = {"n_trees": len(booster.get_dump()), "base_margin": xgboost_base_margin(booster),
              "parity_rows": int(sample.shape[0]), "xgboost_float32_rounding": rounding}
    c_in, c_in_shapes, c_out, c_out_shapes = coreml_io(shipped)
    o_in, o_in_shapes, o_out, o_out_shapes = onnx_io(onnx_model)
    return {
        "coreml": ExportedArtifact(
            kind="coreml", variant="float32", path=coreml_path,
            size_bytes=size_path(coreml_path), sha256=digest_path(coreml_path),
            input_names=c_in, input_shapes=c_in_shapes, output_names=c_out,
            output_shapes=c_out_shapes,
            extra={**shared, "seconds": round(coreml_seconds, 4),
                   "parity_vs_predict_float32_sum": d_coreml32,
                   "parity_vs_exact_double_sum": d_coreml64,
                   "minimum_ios": TREE_MINIMUM_IOS, "feature_names": list(feature_names)},
        ),
        "onnx": ExportedArtifact(
            kind="onnx", variant="float32", path=onnx_path, size_bytes=size_path(onnx_path),
            sha256=digest_path(onnx_path), input_names=o_in, input_shapes=o_in_shapes,
            output_names=o_out, output_shapes=o_out_shapes,
            extra={**shared, "seconds": round(onnx_seconds, 4),
                   "parity_vs_exact_double_sum": d_onnx,
                   "onnx_vs_predict_max_abs_diff": onnx_vs_predict,
                   "feature_names": list(feature_names)},
        ),
    }


# ----------------------------------------------------------------------------- PyTorch


def _save_package(mlmodel: Any, dest: Path, short: str, metadata: dict[str, str]) -> None:
    """Save an ML program package atomically and deterministically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _set_metadata(mlmodel._spec, short, metadata)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        staged = Path(tmp) / dest.name
        with ct_call():
            mlmodel.save(str(staged))
        _normalize_package(staged)
        replace_dir(staged, dest)


def _weights_bytes(package: Path) -> int:
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    return size_path(weights) if weights.exists() else 0


def export_torch(module: torch.nn.Module, example: torch.Tensor, out_dir: Path, name: str,
                 input_name: str, output_names: list[str],
                 variants: Sequence[str] = COREML_VARIANTS, *,
                 sample: torch.Tensor | None = None, metadata: dict[str, str] | None = None,
                 atol: float = PARITY_ATOL,
                 read_back: dict[str, torch.nn.Module] | None = None,
                 ) -> dict[str, ExportedArtifact]:
    """Export a network as Core ML packages (one per variant) plus ONNX.

    Files: ``<name>_<variant>.mlpackage`` for each variant and ``<name>.onnx``. Every
    package is read back after saving; the weights it holds (dequantized) are mapped onto
    the module's parameters, and the read-back float32 package must equal the module's
    weights exactly. For quantized variants ``extra`` records which parameters were
    quantized and the output change on ``sample`` when the module runs with them.

    Args:
        module: the trained network (left in the mode it came in).
        example: one input batch, e.g. ``[1, n_features]`` or ``[1, 14, n_features]``;
            the Core ML input has exactly this shape.
        out_dir: folder for the files (created).
        name: file stem.
        input_name / output_names: tensor names in every file.
        variants: subset of ``("float32", "linear8", "palette4")``.
        sample: rows for the ONNX parity check (default: ``example``); the ONNX file has
            a dynamic batch dimension.
        metadata: extra string metadata stored in every file.
        read_back: if given, receives per variant the module copy (eval mode) loaded
            with the weights read back from that variant's saved package, the same
            copy the output change was measured with (callers evaluate gates on it
            instead of reading the package a second time).

    Returns:
        ``{"float32": ..., "linear8": ..., "palette4": ..., "onnx": ...}`` (the
        requested variants plus ``"onnx"``).

    Raises:
        ExportParityError: if ONNX Runtime and PyTorch differ by more than ``atol``, or
            the float32 package does not hold the module's weights.
    """
    import torch

    _check_name(name)
    unknown = [v for v in variants if v not in COREML_VARIANTS]
    if unknown:
        raise ValueError(f"{name}: unknown variants {unknown}; expected {COREML_VARIANTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = example if sample is None else sample
    meta = {"veloready.name": name, "veloready.input_shape": metadata_json(list(example.shape)),
            **(metadata or {})}

    started = time.perf_counter()
    base = convert_torch_mlmodel(module, example, input_name, output_names)
    convert_seconds = time.perf_counter() - started
    artifacts: dict[str, ExportedArtifact] = {}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = module(sample)
        for variant in dict.fromkeys(variants):
            started = time.perf_counter()
            model = compress_mlmodel(base, variant)
            path = out_dir / f"{name}_{variant}.mlpackage"
            _save_package(model, path, f"{name} ({variant} weights)",
                          {**meta, "veloready.variant": variant})
            seconds = time.perf_counter() - started
            if variant == "float32":
                seconds += convert_seconds
            state, report = read_back_state_dict(module, path)
            copy = module_with_state(module, state)
            if read_back is not None:
                read_back[variant] = copy
            with torch.no_grad():
                out = copy(sample)
            change = _max_abs_change(out, reference)
            if variant == "float32":
                weight_diff = max((float((state[k] - v).abs().max()) for k, v in
                                   module.state_dict().items() if v.is_floating_point()),
                                  default=0.0)
                if weight_diff != 0.0:
                    raise ExportParityError(f"{name}: float32 package weights vs module",
                                            weight_diff, 0.0)
            spec = model.get_spec()
            c_in, c_in_shapes, c_out, c_out_shapes = coreml_io(spec)
            artifacts[variant] = ExportedArtifact(
                kind="coreml", variant=variant, path=path, size_bytes=size_path(path),
                sha256=digest_path(path), input_names=c_in, input_shapes=c_in_shapes,
                output_names=c_out, output_shapes=c_out_shapes,
                extra={"seconds": round(seconds, 4), "minimum_ios": MINIMUM_IOS[variant],
                       "weights_bytes": _weights_bytes(path),
                       "quantized_params": report.quantized,
                       "float_params": report.unquantized,
                       "max_abs_output_change": change},
            )
    finally:
        module.train(was_training)
    if "float32" in artifacts:
        full = artifacts["float32"]
        for art in artifacts.values():
            art.extra["size_ratio_vs_float32"] = round(art.size_bytes / full.size_bytes, 4)
            if full.extra["weights_bytes"]:
                art.extra["weights_ratio_vs_float32"] = round(
                    art.extra["weights_bytes"] / full.extra["weights_bytes"], 4)
    artifacts["onnx"] = export_torch_onnx(module, example, out_dir / f"{name}.onnx",
                                          input_name, output_names, sample=sample,
                                          metadata=meta, atol=atol)
    return artifacts


def _max_abs_change(got: Any, ref: Any) -> float:
    gots = list(got) if isinstance(got, tuple | list) else [got]
    refs = list(ref) if isinstance(ref, tuple | list) else [ref]
    return max(float((g - r).abs().max()) for g, r in zip(gots, refs, strict=True))
