# SPDX-License-Identifier: MIT
"""The PyTorch front ends: export to ONNX in memory with torch.onnx.export, then compile in-process."""
import io
import warnings

import numpy as np

# torch.onnx.export's opset: 13 is what the project's example models use (PyTorch 1.13 defaults to 14; vnpuc
# accepts 1-18).
ONNX_OPSET = 13


def _error(message, code_name="INVALID_ARGUMENT"):
    from ._vnpu import ErrorCode, _make_error
    return _make_error(getattr(ErrorCode, code_name), message)


def _is_float32(dtype):
    if dtype is None:
        return True
    try:
        import torch
        if isinstance(dtype, torch.dtype):
            return dtype == torch.float32
    except ImportError:
        pass
    try:
        return np.dtype(dtype) == np.float32
    except TypeError:
        return False


def normalize_input_info(input_info):
    """[(name, shape, dtype)] -> [(name, [dims])], checked: vnpu programs are float32 with static shapes."""
    if input_info is None:
        return []
    if isinstance(input_info, tuple) and len(input_info) == 3 and isinstance(input_info[0], str):
        input_info = [input_info]  # one entry given without the list
    out = []
    for i, entry in enumerate(input_info):
        try:
            name, shape, dtype = entry
        except (TypeError, ValueError):
            raise _error(f"input_info[{i}] is {entry!r}; each entry is (name, shape, dtype)") from None
        if not isinstance(name, str) or not name:
            raise _error(f"input_info[{i}]: the name must be a non-empty string, got {name!r}")
        try:
            dims = [int(d) for d in shape]
        except (TypeError, ValueError):
            raise _error(f"input_info[{i}] ('{name}'): shape must be a list of ints, got {shape!r}") from None
        if any(d < 1 for d in dims):
            raise _error(f"input_info[{i}] ('{name}'): shape {dims} has a dimension < 1")
        if not _is_float32(dtype):
            raise _error(f"input_info[{i}] ('{name}'): dtype {dtype!r} is not supported; vnpu programs are float32")
        out.append((name, dims))
    return out


def _count_outputs(result):
    import torch
    if isinstance(result, torch.Tensor):
        return 1
    if isinstance(result, (list, tuple)):
        return sum(_count_outputs(r) for r in result)
    if isinstance(result, dict):
        return sum(_count_outputs(r) for r in result.values())
    return 0


def _export(module, dummy, names, output_names):
    import torch
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (TracerWarning, prim::Constant shape inference)
            if output_names is None:
                # The exporter numbers unnamed outputs ("597"); name them as Ultralytics' export does.
                output_names = [f"output{i}" for i in range(_count_outputs(module(*dummy)))]
            torch.onnx.export(module, tuple(dummy), buf, opset_version=ONNX_OPSET, input_names=names,
                              output_names=list(output_names), do_constant_folding=True)
    except Exception as e:  # the exporter raises many types; say which step failed
        raise _error(f"torch.onnx.export failed: {type(e).__name__}: {e}", "UNSUPPORTED") from e
    return buf.getvalue()


def compile_from_torch(module, input_info, output_names=None):
    """Compile a torch.nn.Module: export it to ONNX in memory (torch.onnx.export, opset 13) with zero inputs
    of the input_info shapes, then compile in-process. input_info: [(name, shape, dtype)], one per forward()
    argument, dtype float32. output_names: default output0, output1, ... Returns a vnpu.CompiledModel;
    raises vnpu.Error."""
    import torch
    from . import compile_from_onnx
    info = normalize_input_info(input_info)
    if not info:
        raise _error("compile_from_torch needs input_info=[(name, shape, dtype)], one entry per input")
    was_training = module.training
    module.eval()
    try:
        onnx = _export(module, [torch.zeros(shape) for _, shape in info], [name for name, _ in info], output_names)
    finally:
        module.train(was_training)
    return compile_from_onnx(onnx, input_info)


def _traced_input_info(scripted):
    """(name, shape, float32) of each input of a traced module's graph (its first input is `self`)."""
    info = []
    for i, value in enumerate(list(scripted.graph.inputs())[1:]):
        t = value.type()
        sizes = t.sizes() if hasattr(t, "sizes") else None
        if not sizes or any(s is None for s in sizes):
            raise _error(f"input {i} ('{value.debugName()}') of the TorchScript module has no static shape (a "
                         f"scripted, not traced, module?): pass input_info=[(name, shape, np.float32)]")
        name = value.debugName().split(".")[0] or f"input{i}"
        info.append((name, list(sizes), np.float32))
    return info


def compile_from_torchscript(scripted, input_info=None, output_names=None):
    """Compile a TorchScript module (torch.jit.trace or torch.jit.script). Without input_info the input
    names and shapes are taken from the traced graph, as the seed does for torch.jit.trace(model, x).
    Returns a vnpu.CompiledModel; raises vnpu.Error."""
    import torch
    from . import compile_from_onnx
    if not isinstance(scripted, torch.jit.ScriptModule):
        raise _error(f"compile_from_torchscript takes a torch.jit.ScriptModule, got {type(scripted).__name__} "
                     f"(use compile_from_torch for an nn.Module)")
    if input_info is None:
        input_info = _traced_input_info(scripted)
    info = normalize_input_info(input_info)
    onnx = _export(scripted, [torch.zeros(shape) for _, shape in info], [name for name, _ in info], output_names)
    return compile_from_onnx(onnx, input_info)
