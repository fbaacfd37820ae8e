"""The coremltools side shared by Core ML export and quantization read-back.

coremltools imported quietly and used under one lock (`ct_module`, `ct_call`), a
PyTorch module traced and converted to a float32 ML program (`convert_torch_mlmodel`)
and compressed to a quantized variant (`compress_mlmodel`). `export.coreml` saves and
checks the packages; `export.quantize` reads their weights back; both import this
module, neither imports the other's helpers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tqdm import tqdm as real_tqdm

from veloready_pipeline.logs import quiet_coremltools

# coremltools and torch are imported inside the functions that use them: both are heavy
# optional libraries (seconds to import) that only the export stage needs.
if TYPE_CHECKING:
    import torch

__all__ = [
    "COREML_VARIANTS",
    "WEIGHT_THRESHOLD",
    "compress_mlmodel",
    "convert_torch_mlmodel",
    "ct_call",
    "ct_module",
]

COREML_VARIANTS = ("float32", "linear8", "palette4")
# Quantize every weight tensor a small net has. coremltools itself never compresses
# rank-1 tensors (biases, normalisation statistics) or tensors with < 10 elements.
WEIGHT_THRESHOLD = 0


@functools.cache
def ct_module() -> Any:
    """Import coremltools quietly (it logs version warnings and Linux runtime misses)."""
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
def ct_call() -> Iterator[None]:
    """Serialise and silence one coremltools call (progress bars, warnings, info logs).

    The converter draws ~8 tqdm bars per model; with one export per athlete they bury
    the pipeline's own progress bar. The tqdm names are swapped back on exit.
    """
    with _CT_LOCK, _silenced():
        yield


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    ct_module()  # import coremltools quietly before touching its submodules
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

    ct = ct_module()
    was_training = module.training
    module.eval()
    try:
        with ct_call(), torch.no_grad():
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
    cto = ct_module().optimize.coreml
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
    with ct_call():
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
    ct = ct_module()
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
