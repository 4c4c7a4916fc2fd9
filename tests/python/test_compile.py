# SPDX-License-Identifier: MIT
"""Compiling: compile_from_onnx / compile_from_torch / compile_from_torchscript, CompiledModel, vnpu.Error."""
import io
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import vnpu
from conftest import BACKEND, close_to, example


class Small(nn.Module):
    """Conv + BN + SiLU + pool + linear: enough ops to exercise the exporter and the compiler."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = self.pool(self.act(self.bn(self.conv(x))))
        return torch.softmax(self.fc(y.flatten(1)), dim=1)


def onnx_bytes(module, shape, name="x", dynamic=False):
    buf = io.BytesIO()
    axes = {name: {0: "batch"}} if dynamic else None
    torch.onnx.export(module.eval(), torch.zeros(shape), buf, opset_version=13, input_names=[name],
                      dynamic_axes=axes)
    return buf.getvalue()


def run_once(model, *xs):
    with vnpu.Runtime(model, backend=BACKEND) as rt:
        return rt.run(*xs)


def test_compile_from_onnx_takes_a_path_or_bytes_and_matches_pytorch(tmp_path):
    m = Small().eval()
    data = onnx_bytes(m, [1, 3, 16, 16])
    path = tmp_path / "small.onnx"
    path.write_bytes(data)
    x = torch.rand(1, 3, 16, 16)
    ref = m(x).detach().numpy()
    for src in (str(path), path, data, bytearray(data)):
        compiled = vnpu.compile_from_onnx(src)
        assert isinstance(compiled, vnpu.CompiledModel)
        assert close_to(run_once(compiled, x.numpy()), ref)


def test_input_info_fixes_dynamic_dimensions():
    data = onnx_bytes(Small(), [1, 3, 16, 16], dynamic=True)
    with pytest.raises(vnpu.CompileError) as e:
        vnpu.compile_from_onnx(data)
    assert "x" in str(e.value)
    compiled = vnpu.compile_from_onnx(data, input_info=[("x", [2, 3, 16, 16], np.float32)])
    assert compiled.inputs[0].shape == (2, 3, 16, 16)
    name, shape, dtype = compiled.inputs[0]  # the seed's (name, shape, dtype) triple
    assert (name, shape, dtype) == ("x", (2, 3, 16, 16), np.float32)


@pytest.mark.parametrize("info, words", [
    ([("x", [1, 3, 16, 16], np.float64)], ["float64", "float32"]),
    ([("x", [1, 0, 16, 16], np.float32)], ["dimension"]),
    ([("x", [1, 3, 16])], ["(name, shape, dtype)"]),
    ([("x", "abc", np.float32)], ["shape"]),
    ([("nope", [1, 3, 16, 16], np.float32)], ["nope"]),
])
def test_bad_input_info_raises_vnpu_error_naming_the_entry(info, words):
    data = onnx_bytes(Small(), [1, 3, 16, 16])
    with pytest.raises(vnpu.Error) as e:
        vnpu.compile_from_onnx(data, input_info=info)
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT
    for w in words:
        assert w in str(e.value), str(e.value)


def test_unsupported_op_names_node_and_op():
    from onnx import TensorProto, helper
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["idx"], name="nms_7")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4])],
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, [None, 3])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    with pytest.raises(vnpu.CompileError) as e:
        vnpu.compile_from_onnx(data)
    assert isinstance(e.value, vnpu.Error)
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT
    assert "nms_7" in e.value.message and "NonMaxSuppression" in e.value.message
    assert "NonMaxSuppression" not in vnpu.supported_onnx_ops() and "Conv" in vnpu.supported_onnx_ops()


def test_compile_errors_for_garbage_and_missing_files(tmp_path):
    with pytest.raises(vnpu.Error) as e:
        vnpu.compile_from_onnx(b"not an onnx model")
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT
    with pytest.raises(vnpu.Error) as e:
        vnpu.compile_from_onnx(str(tmp_path / "missing.onnx"))
    assert e.value.code == vnpu.ErrorCode.NOT_FOUND
    with pytest.raises(vnpu.Error):
        vnpu.compile_from_onnx(42)


def test_compile_from_torch_exports_in_memory_and_matches_pytorch():
    m = Small()
    m.train()  # the exporter must see inference mode, and the caller's mode is restored
    compiled = vnpu.compile_from_torch(m, input_info=[("x", [1, 3, 16, 16], np.float32)])
    assert m.training
    assert [i.name for i in compiled.inputs] == ["x"]
    assert [o.name for o in compiled.outputs] == ["output0"]  # not the exporter's number
    x = torch.rand(1, 3, 16, 16)
    assert close_to(run_once(compiled, x.numpy()), m.eval()(x).detach().numpy())
    with pytest.raises(vnpu.Error):
        vnpu.compile_from_torch(m, input_info=None)


def test_compile_from_torch_of_the_tiny_deeplab_matches_pytorch(deeplab_io):
    import example_models
    model, shape = example_models.build("deeplabv3plus", "tiny")
    compiled = vnpu.compile_from_torch(model, input_info=[("x", shape, np.float32)])
    x, ref = deeplab_io  # gen_model's input and PyTorch's output for it
    assert close_to(run_once(compiled, x), ref)


def test_compile_from_torchscript_of_the_traced_tiny_yolo_matches_pytorch(yolo_io):
    import example_models
    model, shape = example_models.build("yolov8n", "tiny")
    compiled = vnpu.compile_from_torchscript(torch.jit.trace(model, torch.zeros(shape)))
    assert compiled.inputs[0].shape == tuple(shape)
    x, ref = yolo_io
    assert close_to(run_once(compiled, x), ref)


def test_compile_from_torchscript_takes_shapes_from_the_traced_graph():
    m = Small().eval()
    traced = torch.jit.trace(m, torch.zeros(1, 3, 24, 24))
    compiled = vnpu.compile_from_torchscript(traced)
    assert compiled.inputs[0].shape == (1, 3, 24, 24)
    x = torch.rand(1, 3, 24, 24)
    assert close_to(run_once(compiled, x.numpy()), m(x).detach().numpy())


def test_compile_from_torchscript_of_a_scripted_module_needs_input_info():
    class Twice(nn.Module):
        def forward(self, x):
            return x * 2.0 + 1.0
    scripted = torch.jit.script(Twice())
    with pytest.raises(vnpu.Error) as e:
        vnpu.compile_from_torchscript(scripted)
    assert "input_info" in str(e.value)
    compiled = vnpu.compile_from_torchscript(scripted, input_info=[("x", [2, 8], np.float32)])
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(run_once(compiled, x), x * 2 + 1)
    with pytest.raises(vnpu.Error):
        vnpu.compile_from_torchscript(Twice())  # an nn.Module, not a ScriptModule


def test_save_and_load_by_path_round_trip(tmp_path, yolo_path, yolo_io):
    m = vnpu.CompiledModel(yolo_path)
    p = tmp_path / "copy.vnpu"
    m.save(p)
    assert p.read_bytes() == open(yolo_path, "rb").read()
    for loaded in (vnpu.CompiledModel(str(p)), vnpu.load(p), vnpu.CompiledModel.load(p),
                   vnpu.CompiledModel.from_bytes(p.read_bytes())):
        assert [(i.name, i.shape) for i in loaded.inputs] == [("images", (1, 3, 160, 160))]
        assert [(o.name, o.shape) for o in loaded.outputs] == [("output0", (1, 84, 525))]
        assert loaded.outputs[0].dtype == np.float32 and loaded.outputs[0].size_bytes == 84 * 525 * 4
    x, ref = yolo_io
    assert close_to(run_once(vnpu.load(p), x), ref)
    # A compiled model saves too, and a runtime takes the path directly.
    c = vnpu.compile_from_torch(Small(), input_info=[("x", [1, 3, 16, 16], np.float32)])
    c.save(tmp_path / "small.vnpu")
    with vnpu.Runtime(str(tmp_path / "small.vnpu"), backend=BACKEND) as rt:
        assert rt.run(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 5)


def test_load_errors_carry_the_code(tmp_path):
    with pytest.raises(vnpu.Error) as e:
        vnpu.CompiledModel(str(tmp_path / "none.vnpu"))
    assert e.value.code == vnpu.ErrorCode.NOT_FOUND
    junk = tmp_path / "junk.vnpu"
    junk.write_bytes(b"\7" * 200)
    with pytest.raises(vnpu.Error) as e:
        vnpu.load(junk)
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT
    with pytest.raises(vnpu.Error):
        vnpu.AsyncRuntime(12)
    with pytest.raises(vnpu.Error) as e:
        vnpu.CompiledModel.synthetic(compute_ms=1).save(tmp_path / "s.vnpu")
    assert e.value.code == vnpu.ErrorCode.UNSUPPORTED


def test_create_runtime_and_create_async_runtime(yolo, yolo_io):
    x, ref = yolo_io
    with yolo.create_runtime(backend=BACKEND) as rt:
        assert isinstance(rt, vnpu.Runtime)
        assert close_to(rt.run(x), ref)
    with yolo.create_async_runtime(backend=BACKEND, parallel=2) as art:
        assert isinstance(art, vnpu.AsyncRuntime)
        assert art.options["parallel"] == 2
        assert close_to(art.run(x).wait(), ref)


def test_example_model_files_exist():
    for f in ("yolov8n-tiny.vnpu", "deeplabv3plus-tiny.vnpu"):
        assert os.path.getsize(example(f)) > 0
