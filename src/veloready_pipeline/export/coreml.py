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

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.export import (
    ExportedArtifact,
    ExportParityError,
    digest_path,
    size_path,
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

if TYPE_CHECKING:
    import torch
    import xgboost

__all__ = [
    "COREML_VARIANTS",
    "ExportParityError",
    "ExportedArtifact",
    "MINIMUM_IOS",
    "compress_mlmodel",
    "convert_torch_mlmodel",
    "evaluate_tree_spec",
    "export_torch",
    "export_xgboost",
    "raw_xgboost_spec",
    "xgboost_base_margin",
    "xgboost_exact_predictions",
]

COREML_VARIANTS = ("float32", "linear8", "palette4")
# Every variant targets iOS 17: per-channel int8 (constexpr_affine_dequantize) and
# per-tensor 4-bit LUTs (constexpr_lut_to_dense) exist since iOS 16; only grouped-channel
# palettes or 4-bit *linear* weights would need iOS 18.
MINIMUM_IOS = {"float32": "17.0", "linear8": "17.0", "palette4": "17.0"}
# Tree ensembles are NeuralNetwork-era specs, readable by every iOS the app supports.
TREE_MINIMUM_IOS = "17.0"
# Quantize every weight tensor a small net has. coremltools itself never compresses
# rank-1 tensors (biases, normalisation statistics) or tensors with < 10 elements.
WEIGHT_THRESHOLD = 0
_AUTHOR = "VeloReady Pipeline"
# Objectives whose prediction is the raw margin (identity link): for these the base
# score XGBoost stores is directly the Core ML base prediction value.
_IDENTITY_OBJECTIVES = frozenset({
    "reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror",
})


# ----------------------------------------------------------------------------- helpers


@functools.cache
def _ct() -> Any:
    """Import coremltools quietly (it logs version warnings and Linux runtime misses)."""
    from veloready_pipeline.logs import quiet_coremltools

    quiet_coremltools()  # the notes it logs later, on lazy submodule imports, too
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


# coremltools' MIL builder keeps the block being built in global state, so two
# conversions in threads of one process (a thread-pool task runner) would corrupt each
# other. Every coremltools call here runs under this lock.
_CT_LOCK = threading.RLock()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Serialise and silence one coremltools call (progress bars, warnings, info logs).

    The converter draws ~8 tqdm bars per model; with one export per athlete they bury
    the pipeline's own progress bar. The tqdm names are swapped back on exit.
    """
    with _CT_LOCK, _silenced():
        yield


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    from tqdm import tqdm as real_tqdm

    _ct()  # import coremltools quietly before touching its submodules
    silent = functools.partial(real_tqdm, disable=True)
    targets = []
    for mod_name, attr in (
        ("coremltools.converters.mil.mil.passes.pass_pipeline", "tqdm"),
        ("coremltools.converters.mil.frontend.torch.ops", "_tqdm"),
        ("coremltools.optimize.coreml._post_training_quantization", "tqdm"),
        ("coremltools.optimize.coreml._quantization_passes", "tqdm"),
    ):
        try:
            module = __import__(mod_name, fromlist=[attr])
        except ImportError:  # layout changed in another coremltools version
            continue
        if hasattr(module, attr):
            targets.append((module, attr, getattr(module, attr)))
            setattr(module, attr, silent)
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        for module, attr, original in targets:
            setattr(module, attr, original)


def _check_name(name: str) -> str:
    """A file stem must stay inside ``out_dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"export name {name!r} must be a plain file stem")
    return name


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``, replacing an existing ``dest`` with one rename.

    ``os.replace`` cannot overwrite a non-empty directory, so an existing ``dest`` is
    first renamed aside; readers see either the old or the new package, never a mix.
    """
    aside = None
    if dest.exists():
        aside = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.replace(dest, aside)
    os.replace(src, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


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
    _ct()
    from coremltools.converters.xgboost._tree_ensemble import convert_tree_ensemble

    with _quiet():
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
    _ct()
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
    node_type = type(nodes[0]) if nodes else None
    index = {(n.treeId, n.nodeId): k for k, n in enumerate(nodes)}
    behaviours = [node_type.TreeNodeBehavior.Name(n.nodeBehavior) for n in nodes] if nodes else []
    codes = {"LeafNode": -1, "BranchOnValueLessThanEqual": 0, "BranchOnValueLessThan": 1,
             "BranchOnValueGreaterThanEqual": 2, "BranchOnValueGreaterThan": 3,
             "BranchOnValueEqual": 4, "BranchOnValueNotEqual": 5}
    n = len(nodes)
    arrays = {
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
    ct = _ct()
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
    _atomic_write_bytes(coreml_path, spec.SerializeToString(deterministic=True))
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


# Of coremltools' default MIL pipeline (~90 graph passes, each followed by a validation
# of the whole program) only these changed the programs our two networks trace to
# (the zone MLP with its anchor transform; the injury LSTM with its normalisation and
# sigmoid head), over 79 trained networks; the others found nothing to do and cost
# ~32 ms of a ~85 ms conversion. Of the 19 clean-up passes run after compression only
# const_deduplication changed anything; dead-code and const elimination stay in both
# as a safety net. `tests/test_export_torch.py` converts every architecture of the
# search spaces both ways and requires identical packages, so a coremltools upgrade
# that makes another pass matter fails there. (The passes are optimisations: the
# front- and back-end passes a valid ML program needs run either way.)
NET_CONVERT_PASSES = frozenset({
    "common::cast_optimization", "common::const_elimination", "common::dead_code_elimination",
    "common::dedup_op_and_var_names", "common::divide_to_multiply", "common::noop_elimination",
    "common::remove_redundant_ops", "common::topological_reorder",
})
NET_CLEANUP_PASSES = frozenset({
    "common::const_deduplication", "common::const_elimination", "common::dead_code_elimination",
})


def _pass_pipeline(kind: str, full: bool) -> Any:
    """coremltools' ``DEFAULT`` or ``CLEANUP`` pipeline, or its passes our nets need."""
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline

    pipeline = PassPipeline.DEFAULT if kind == "default" else PassPipeline.CLEANUP
    if full:
        return pipeline
    keep = NET_CONVERT_PASSES if kind == "default" else NET_CLEANUP_PASSES
    return PassPipeline([p for p in pipeline.passes if p in keep], f"veloready_nets_{kind}")


def convert_torch_mlmodel(module: torch.nn.Module, example: torch.Tensor, input_name: str,
                          output_names: Sequence[str], *, full_pipeline: bool = False) -> Any:
    """Trace a module and convert it to a float32 Core ML ML program (iOS 17).

    ``torch.jit.trace`` rather than ``torch.export``: the latter fails on ``nn.LSTM`` in
    coremltools 9. ``compute_precision=FLOAT32`` because ML programs default to fp16.
    Only the graph passes in `NET_CONVERT_PASSES` run unless ``full_pipeline``.
    """
    import torch

    ct = _ct()
    was_training = module.training
    module.eval()
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(module, example)
            return ct.convert(
                traced,
                inputs=[ct.TensorType(name=input_name, shape=tuple(example.shape))],
                outputs=[ct.TensorType(name=n) for n in output_names],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32,
                minimum_deployment_target=ct.target.iOS17,
                pass_pipeline=_pass_pipeline("default", full_pipeline),
            )
    finally:
        module.train(was_training)


def _recurrent_state_consts(mlmodel: Any) -> list[str]:
    """Names of const ops feeding LSTM/GRU initial states (zeros; never worth compressing).

    Left to the quantizer they become all-zero tensors with scale 0, which carries no
    information and only risks a degenerate op on device.
    """
    names: set[str] = set()
    prog = mlmodel._mil_program
    for func in prog.functions.values():
        for op in func.operations:
            if op.op_type in ("lstm", "gru", "rnn"):
                for key in ("initial_h", "initial_c"):
                    var = op.inputs.get(key)
                    if var is not None and var.op is not None and var.op.op_type == "const":
                        names.add(var.op.name)
    return sorted(names)


def compress_mlmodel(mlmodel: Any, variant: str, *, full_pipeline: bool = False) -> Any:
    """The ``variant`` of a float32 ML program: as is, 8-bit linear or 4-bit palettized.

    * ``linear8``: symmetric per-output-channel int8 (``scale = max|w_row| / 127``).
    * ``palette4``: one 16-entry k-means look-up table per tensor.

    Both use ``weight_threshold=0`` so every weight matrix of a small net is compressed
    (coremltools' default 2048 would skip all of them).
    """
    if variant == "float32":
        return mlmodel
    cto = _ct().optimize.coreml
    skip: dict[str, Any] = dict.fromkeys(_recurrent_state_consts(mlmodel))
    if variant == "linear8":
        op_config: Any = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel",
            weight_threshold=WEIGHT_THRESHOLD)
        pass_name, options = "compression::linear_quantize_weights", {"joint_compression": False}
    elif variant == "palette4":
        op_config = cto.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor",
                                           weight_threshold=WEIGHT_THRESHOLD)
        pass_name, options = "compression::palettize_weights", {}
    else:
        raise ValueError(f"unknown Core ML variant {variant!r}; expected one of "
                         f"{COREML_VARIANTS}")
    config = cto.OptimizationConfig(global_config=op_config, op_name_configs=skip)
    with _quiet():
        return _apply_compression(mlmodel, pass_name, {"config": config, **options},
                                  full_pipeline)


def _apply_compression(mlmodel: Any, pass_name: str, options: dict[str, Any],
                       full_pipeline: bool = False) -> Any:
    """``cto.linear_quantize_weights`` / ``palettize_weights`` with a cleanup-only pipeline.

    The public functions run coremltools' whole default pass pipeline (~100 graph
    passes, ~1 s for a tiny net) again on a program that `convert_torch_mlmodel` already
    optimised; the compression pass only swaps const weights for ``constexpr_*``
    dequantize ops, so the cleanup passes (dead code, const elimination, casts) are all
    the re-conversion needs. Same pass, same options, same ``constexpr`` ops in the
    package; `quantize.read_back_state_dict` re-reads every saved package anyway.
    Of those only `NET_CLEANUP_PASSES` run unless ``full_pipeline``.
    """
    ct = _ct()
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as ct_utils

    graph_pass = PASS_REGISTRY[pass_name]
    graph_pass.set_options([PassOption(k, v) for k, v in options.items()])
    prog = ct_utils._apply_graph_pass(mlmodel, graph_pass, return_pymil_prog=True)
    spec = mlmodel.get_spec()
    return mil_convert(
        prog, convert_to="mlprogram", convert_from="milinternal",
        specification_version=max(spec.specificationVersion,
                                  ct._SPECIFICATION_VERSION_IOS_16),
        compute_units=mlmodel.compute_unit, model_description=spec.description,
        skip_model_load=True, pass_pipeline=_pass_pipeline("cleanup", full_pipeline),
    )


def _save_package(mlmodel: Any, dest: Path, short: str, metadata: dict[str, str]) -> None:
    """Save an ML program package atomically and deterministically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _set_metadata(mlmodel._spec, short, metadata)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        staged = Path(tmp) / dest.name
        with _quiet():
            mlmodel.save(str(staged))
        _normalize_package(staged)
        _replace_dir(staged, dest)


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

    from veloready_pipeline.export import quantize

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
            state, report = quantize.read_back_state_dict(module, path)
            copy = quantize.module_with_state(module, state)
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
