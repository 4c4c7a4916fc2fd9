# SPDX-License-Identifier: MIT
"""vnpu: compile models for the vnpu NPU and run them, synchronously or from asyncio.

    import numpy as np, vnpu
    compiled = vnpu.compile_from_torch(model, input_info=[("x", [1, 3, 640, 640], np.float32)])
    runtime = vnpu.AsyncRuntime(compiled, parallel=2)
    y = await runtime.async_run(x)          # inside a coroutine; asyncio.gather works
    task = runtime.run(x); y = task.wait()  # anywhere: threads, GUI loops, scripts

A thin layer over libvnpu-runtime and the compiler library (docs/python.md): every runtime option is a
keyword, every failure a vnpu.Error with the C++ error code and message.
"""
import asyncio
import os

from ._vnpu import (AsyncRuntime, CompiledModel, CompileError, Error, ErrorCode, RequestTimings, Runtime, Task,
                    TensorInfo, TimeoutError, _make_error, _set_future_class, supported_onnx_ops)
from ._torch import compile_from_torch, compile_from_torchscript, normalize_input_info

__all__ = ["AsyncRuntime", "CompiledModel", "CompileError", "Error", "ErrorCode", "RequestFuture",
           "RequestTimings", "Runtime", "Task", "TensorInfo", "TimeoutError", "compile_from_onnx",
           "compile_from_torch", "compile_from_torchscript", "load", "supported_onnx_ops"]
__version__ = "0.1.0"


class RequestFuture(asyncio.Future):
    """The asyncio future AsyncRuntime.async_run() returns, bound to the running loop.

    Resolved on the loop (through loop.call_soon_threadsafe) with the outputs or a vnpu.Error. Cancelling it
    (task.cancel(), asyncio.wait_for's timeout, a cancelled gather) cancels the request (best effort, as
    vnpu.Task.cancel). `.task` is the request's vnpu.Task, `.timings` its RequestTimings once done.
    """

    def cancel(self, msg=None):
        if not self.done():
            self._vnpu_task.cancel()
        return super().cancel(msg)

    @property
    def task(self):
        return self._vnpu_task

    @property
    def timings(self):
        return self._vnpu_task.timings


_set_future_class(RequestFuture)


def load(path):
    """Load a saved .vnpu file: the same as vnpu.CompiledModel(path)."""
    return CompiledModel(path)


def compile_from_onnx(path_or_bytes, input_info=None):
    """Compile an ONNX model (a file path, or the serialized ModelProto as bytes) in-process.

    input_info: optional [(name, shape, dtype)] giving graph inputs static shapes (needed for dynamic
    dimensions); dtype must be float32. Raises vnpu.CompileError (a vnpu.Error) naming the node and op that
    cannot be compiled, or the bad input_info entry.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        try:
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except OSError as e:
            raise _make_error(ErrorCode.NOT_FOUND,
                              f"cannot read ONNX model '{os.fspath(path_or_bytes)}': {e.strerror}") from e
    else:
        raise _make_error(ErrorCode.INVALID_ARGUMENT,
                          "compile_from_onnx takes a path or bytes, got " + type(path_or_bytes).__name__)
    from ._vnpu import _compile_onnx
    return _compile_onnx(data, normalize_input_info(input_info))


def _create_runtime(self, **options):
    """A vnpu.Runtime for this model: the same as vnpu.Runtime(self, **options)."""
    return Runtime(self, **options)


def _create_async_runtime(self, **options):
    """A vnpu.AsyncRuntime for this model: the same as vnpu.AsyncRuntime(self, **options)."""
    return AsyncRuntime(self, **options)


CompiledModel.create_runtime = _create_runtime
CompiledModel.create_async_runtime = _create_async_runtime
