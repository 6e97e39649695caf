"""The bounded-memory export (placeholder weights, streamed external data) writes the same bytes as the
in-memory export it replaced, and refuses weights it cannot map.

``legacy_*`` below is the exporter's previous path (main at d771cdd: torch.onnx.export with the real
weights, ``onnx.load`` with all external data, ``onnx.save_model``, ORT's fp16 converter and
MatMulNBits quantizer on the whole ModelProto), kept here verbatim as the reference. The external
data threshold is lowered so the tiny graphs take the external-data path a full-size one takes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

import torch  # tests/export/ is not collected without the export extra (conftest)
import onnx

from musicgen_onnx.export import checkpoint as ckpt_mod  # noqa: E402
from musicgen_onnx.export import graph_specs, graph_validation, placeholders, precision as precision_mod, tracing  # noqa: E402
from musicgen_onnx.export.sources import resolve  # noqa: E402
from musicgen_onnx.runtime.errors import ExportError  # noqa: E402

pytestmark = pytest.mark.export
THRESHOLD = 1000  # bytes: every tiny graph goes external, as the full-size ones do


def legacy_save(model, path: Path) -> None:
    """The previous writer (exporter._save): one data file above the threshold, everything inline otherwise."""
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    if sum(t.ByteSize() for t in model.graph.initializer) > tracing.EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def legacy_export_graph(spec, path: Path, opset: int = 17) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        raw = Path(scratch) / path.name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module, spec.example, str(raw), input_names=spec.input_names,
                              output_names=spec.output_names, dynamic_axes=spec.dynamic_axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
        legacy_save(onnx.load(str(raw), load_external_data=True), path)


def legacy_to_fp16(path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path), load_external_data=True)
    io = [v.name for v in [*model.graph.input, *model.graph.output] if not v.name.startswith(("past.", "present."))]
    fp16 = convert_float_to_float16(model, keep_io_types=io, disable_shape_infer=True,
                                    node_block_list=sorted(precision_mod.position_nodes(model)))
    legacy_save(fp16, path)


def legacy_quantize(path: Path, precision: str) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    model = onnx.load(str(path), load_external_data=True)
    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/heads.")]
    for bits, scope in ((precision_mod.QUANT_BITS[precision], {"nodes_to_exclude": heads}), (8, {"nodes_to_include": heads})):
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=precision_mod.QUANT_BLOCK, is_symmetric=True,
                                         accuracy_level=4, **scope)
        quantizer.process()
        model = quantizer.model.model
    legacy_save(model, path)


def build_folders(checkpoint: Path, out: Path, precisions, streamed: bool) -> dict[str, Path]:
    """Every graph of every precision (the codec's graphs are fp32 in all of them): the previous way,
    or the way ``exporter.export`` does it now (placeholders, graph-only trace, then the same per-graph steps)."""
    ckpt = resolve(str(checkpoint))
    model = ckpt_mod.load_model(ckpt)
    specs = {s.name: s for s in graph_specs.graph_specs(model, ckpt.conditioning)}
    markers = None
    if streamed:
        markers = placeholders.swap_in(model, [specs[n].module for n in graph_specs.STREAMED_GRAPHS],
                                       placeholders.CheckpointTensors(ckpt.weight_files))
    base = out / "fp32"
    base.mkdir(parents=True)
    for name in specs:
        if streamed:
            tracing.export_graph(specs[name], base / f"{name}.onnx", 17,
                                 markers if name in graph_specs.STREAMED_GRAPHS else None)
        else:
            legacy_export_graph(specs[name], base / f"{name}.onnx")
    folders = {}
    for precision in precisions:
        folder = out / precision
        if precision != "fp32":
            shutil.copytree(base, folder)
            for name in graph_specs.STREAMED_GRAPHS:
                path = folder / f"{name}.onnx"
                if precision == "fp16":
                    (precision_mod.to_fp16 if streamed else legacy_to_fp16)(path)
                elif name == "decoder":
                    (precision_mod.quantize if streamed else legacy_quantize)(path, precision)
        folders[precision] = folder
    return folders


@pytest.mark.parametrize("arch, precisions", [("tiny-text", ("fp32", "fp16", "int8", "int4")),
                                               ("tiny-melody", ("fp32", "fp16", "int4"))])
def test_streamed_export_writes_the_previous_bytes(arch, precisions, checkpoint_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tracing, "EXTERNAL_DATA_THRESHOLD", THRESHOLD)
    checkpoint = checkpoint_dir(arch)
    want = build_folders(checkpoint, tmp_path / "legacy", precisions, streamed=False)
    got = build_folders(checkpoint, tmp_path / "streamed", precisions, streamed=True)
    for precision in precisions:
        for name in ("text_encoder", "decoder", "audio_decoder", "audio_encoder"):
            for suffix in (".onnx", ".onnx.data"):
                a, b = want[precision] / f"{name}{suffix}", got[precision] / f"{name}{suffix}"
                assert a.exists() and b.exists(), f"{precision} {name}{suffix}"
                assert a.read_bytes() == b.read_bytes(), f"{precision} {name}{suffix} differs from the previous export"


class Toy(torch.nn.Module):
    """A square Linear on 3-D input (exported as MatMul on the folded transpose) and an embedding."""

    def __init__(self, scale_weight: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(40, 16)
        self.proj = torch.nn.Linear(16, 16)
        self.scale_weight = scale_weight

    def forward(self, ids):
        h = self.embed(ids)
        if self.scale_weight:  # constant folding turns this into an initializer computed from a weight
            return h @ (self.proj.weight * 0.5).t()
        return self.proj(h)


def _toy_export(tmp_path: Path, module: Toy, checkpoint_state: dict) -> Path:
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file(checkpoint_state, str(weights))
    markers = placeholders.swap_in(module, [module], placeholders.CheckpointTensors([weights]))
    spec = tracing.GraphSpec("toy", module.eval(), (torch.randint(0, 40, (2, 5)),), ["ids"], ["out"],
                             {"ids": {0: "b", 1: "t"}})
    path = tmp_path / "out" / "toy.onnx"
    path.parent.mkdir()
    tracing.export_graph(spec, path, 17, markers)
    return path


def test_streamed_toy_matches_the_real_weights_transposed(tmp_path, monkeypatch):
    monkeypatch.setattr(tracing, "EXTERNAL_DATA_THRESHOLD", 0)
    torch.manual_seed(0)
    module = Toy()
    state = {k: v.clone().contiguous() for k, v in module.state_dict().items()}
    ids = torch.randint(0, 40, (3, 4))
    with torch.no_grad():
        want = module(ids).numpy()
    path = _toy_export(tmp_path, module, state)
    from musicgen_onnx.runtime.session import open_session

    got = open_session(path).run(["out"], {"ids": ids.numpy()})[0]
    assert abs(got - want).max() < 1e-5
    assert path.with_name("toy.onnx.data").exists()


def test_weight_derived_by_another_fold_is_refused(tmp_path):
    module = Toy(scale_weight=True)
    with pytest.raises(ExportError, match=r"initializer '.*' is computed from a placeholder weight"):
        _toy_export(tmp_path, module, {k: v.clone().contiguous() for k, v in module.state_dict().items()})


def test_weight_missing_from_checkpoint_is_refused(tmp_path):
    module = Toy()
    state = {k: v.clone().contiguous() for k, v in module.state_dict().items() if k != "proj.weight"}
    with pytest.raises(ExportError, match=r"parameter 'proj.weight' is not in the checkpoint"):
        _toy_export(tmp_path, module, state)


def test_weight_of_another_shape_in_checkpoint_is_refused(tmp_path):
    module = Toy()
    state = {k: v.clone().contiguous() for k, v in module.state_dict().items()}
    state["proj.weight"] = torch.zeros(16, 8)
    with pytest.raises(ExportError, match=r"parameter 'proj.weight': checkpoint shape \(16, 8\) != model shape \(16, 16\)"):
        _toy_export(tmp_path, module, state)


def test_marker_seen_with_the_wrong_shape_is_refused():
    import numpy as np
    from onnx import TensorProto

    value = placeholders.marker_value(0)
    markers = {value: placeholders.Placeholder("w", (4, 6), lambda: None)}
    probe = np.array([value, value, -value], np.float32)
    assert placeholders.resolve("x", TensorProto.FLOAT, (4, 6), probe, markers)[1] is False
    assert placeholders.resolve("x", TensorProto.FLOAT, (6, 4), np.array([value, -value, -value], np.float32),
                                markers)[1] is True
    with pytest.raises(ExportError, match=r"initializer 'x' of shape \(3, 8\) comes from weight 'w'"):
        placeholders.resolve("x", TensorProto.FLOAT, (3, 8), probe, markers)
    mask = np.array([np.finfo(np.float32).min] * 3, np.float32)  # attention-mask constants are not markers
    assert placeholders.resolve("m", TensorProto.FLOAT, (3,), mask, markers) is None


def test_references_with_weights_released_after_use_are_unchanged(checkpoint_dir):
    """The reference forward with each module's mapped pages dropped after use gives the same bits."""
    from musicgen_onnx.export import mapped_weights

    ckpt = resolve(str(checkpoint_dir("tiny-text")))
    model = ckpt_mod.load_model(ckpt)
    assert mapped_weights._mappings(), "transformers no longer maps safetensors: the release does nothing"
    spec = {s.name: s for s in graph_specs.graph_specs(model, ckpt.conditioning)}["decoder"]
    plain = [want for _, want in graph_validation.reference_cases(spec)]
    with mapped_weights.released_after_use(model):
        released = [want for _, want in graph_validation.reference_cases(spec)]
        released_again = [want for _, want in graph_validation.reference_cases(spec)]  # pages faulted back in from the file
    for a, b, c in zip(plain, released, released_again):
        for x, y, z in zip(a, b, c):
            assert torch.equal(x, y) and torch.equal(x, z)


def test_validation_session_order_gives_the_same_outputs(tmp_path):
    """Validation opens graphs in priority order (an fp16 graph's fp32 weight copies made one at a time,
    not all first): the node order must not change a single output bit."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from musicgen_onnx.runtime.session import SessionSettings, open_session

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16)]
    weights = []
    for i in range(6):
        weights.append(numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.1).astype(np.float16), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["h" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"]))
    nodes.append(helper.make_node("Cast", ["h5"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], weights)
    path = tmp_path / "fp16.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    plain = open_session(path).run(["y"], {"x": x})[0]
    ordered = open_session(path, graph_validation.VALIDATION_SESSION).run(["y"], {"x": x})[0]
    assert graph_validation.VALIDATION_SESSION.priority_order
    np.testing.assert_array_equal(plain, ordered)
    assert np.abs(plain).max() > 0
