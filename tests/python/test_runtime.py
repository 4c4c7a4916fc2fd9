# SPDX-License-Identifier: MIT
"""vnpu.Runtime and the synchronous side of vnpu.AsyncRuntime: options, inputs, outputs, errors, faults."""
import gc
import subprocess
import sys
import threading
import weakref

import numpy as np
import pytest
import torch

import vnpu
from conftest import BACKEND, close_to, x1


def test_runtime_run_matches_pytorch(yolo, yolo_io):
    x, ref = yolo_io
    with vnpu.Runtime(yolo, backend=BACKEND) as rt:
        y = rt.run(x)
        assert isinstance(y, np.ndarray) and y.dtype == np.float32
        assert close_to(y, ref)
        t = rt.last_timings
        assert t.total_ns > 0 and t.compute_ns > 0 and t.h2d_ns > 0 and t.d2h_ns > 0
        assert set(t.as_dict()) >= {"total_ns", "prep_ns", "h2d_ns", "compute_ns", "d2h_ns", "device_ns"}


def test_every_runtime_option_is_a_keyword(yolo, yolo_io):
    x, ref = yolo_io
    opts = dict(backend="sim", device=0, devices=[0], placement="round-robin", parallel=2, max_in_flight=3,
                staging_buffers=2, timeout=30, submit_mode="ioctl", priority=2, timing_only=False, tensor_type="np")
    with vnpu.AsyncRuntime(yolo, **opts) as rt:
        got = rt.options
        assert got["backend"] == "sim" and got["parallel"] == 2 and got["max_in_flight"] == 3
        assert got["staging_buffers"] == 2 and got["timeout"] == 30.0 and got["priority"] == 2
        assert got["placement"] == "round-robin" and got["submit_mode"] == "ioctl" and got["devices"] == [0]
        assert rt.backend == "sim" and "sim" in rt.device_name
        assert close_to(rt.run(x).wait(), ref)
    # None means the default, as in the seed's signature.
    with vnpu.AsyncRuntime(yolo, backend="sim", max_in_flight=None, timeout=None, priority=None) as rt:
        assert rt.options["timeout"] is None and rt.options["max_in_flight"] >= 1


@pytest.mark.parametrize("opts, words", [
    (dict(paralel=2), ["unknown option 'paralel'"]),
    (dict(parallel="two"), ["parallel", "int"]),
    (dict(parallel=0), ["parallel"]),
    (dict(timeout=-1), ["timeout"]),
    (dict(tensor_type="tf"), ["tensor_type"]),
    (dict(placement="random"), ["placement"]),
    (dict(submit_mode="mmap"), ["submit_mode"]),
    (dict(priority=9), ["priority"]),
    (dict(backend="gpu"), ["gpu"]),
])
def test_bad_options_raise_a_clear_error(yolo, opts, words):
    with pytest.raises(vnpu.Error) as e:
        vnpu.AsyncRuntime(yolo, **{"backend": "sim", **opts})
    for w in words:
        assert w in str(e.value), str(e.value)


def test_timing_only_runs_are_timed_but_not_computed(yolo, yolo_io):
    x, _ = yolo_io
    with vnpu.AsyncRuntime(yolo, backend="sim", timing_only=True) as rt:
        t = rt.run(x)
        assert t.wait().shape == (1, 84, 525)
        assert t.timings.compute_ns > 0


def test_wrong_input_count_shape_and_dtype_raise_at_run(yolo, yolo_io):
    x, _ = yolo_io
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        cases = [((), "takes 1 input(s), got 0"), ((x, x), "got 2"), ((x[:, :, :10],), "[1,3,10,160]"),
                 ((x.astype(np.complex64),), "complex64"), ((np.array(["a"] * 4),), "<U1"),
                 (("hello",), "does not convert"), ((object(),), "object")]
        for args, words in cases:
            with pytest.raises(vnpu.Error) as e:
                rt.run(*args)
            assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT
            assert words in str(e.value), str(e.value)
        with vnpu.Runtime(yolo, backend=BACKEND) as srt:
            with pytest.raises(vnpu.Error):
                srt.run(x[0])


def test_other_numeric_inputs_are_converted_once(yolo, yolo_io):
    x, ref = yolo_io
    with vnpu.Runtime(yolo, backend=BACKEND) as rt:
        assert close_to(rt.run(x.astype(np.float64)), ref)
        assert close_to(rt.run(np.asfortranarray(x)), ref)  # not C-contiguous
        assert close_to(rt.run(x.tolist()), ref)


def test_float32_inputs_are_borrowed_and_kept_alive_until_read(slow_model):
    # The runtime reads a borrowed array on its prep thread: dropping the caller's last reference right after
    # run() must not free it early, and the reference must be given back once the request is done.
    with vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1) as rt:
        a = x1()
        before = sys.getrefcount(a)
        t1 = rt.run(a)
        t2 = rt.run(a)  # queued behind t1: still borrowing
        assert sys.getrefcount(a) >= before + 1
        t1.wait()
        t2.wait()
        gc.collect()
        rt.run(x1()).wait()  # drains the references released by runtime threads
        assert sys.getrefcount(a) == before

        class Arr(np.ndarray):
            pass
        b = np.full(1, 7, np.float32).view(Arr)
        gone = weakref.ref(b)
        t = rt.run(b)
        del b
        assert gone() is not None  # held by the request
        assert t.wait().shape == (1,)
        rt.run(x1()).wait()
        gc.collect()
        assert gone() is None


def test_outputs_are_not_copied_a_second_time(yolo, yolo_io):
    x, _ = yolo_io
    with vnpu.Runtime(yolo, backend=BACKEND) as rt:
        y = rt.run(x)
        # The array is a view over the runtime's output tensor, owned through a capsule: no copy was made.
        assert not y.flags.owndata and type(y.base).__name__ == "PyCapsule"
        assert y.flags.writeable and y.flags.c_contiguous


def test_torch_tensors_in_and_out_with_tensor_type_pt(yolo, yolo_io):
    x, ref = yolo_io
    with vnpu.AsyncRuntime(yolo, backend=BACKEND, tensor_type="pt") as rt:
        y = rt.run(torch.from_numpy(x)).wait()
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
        assert close_to(y.numpy(), ref)
        assert close_to(rt.run(x).wait().numpy(), ref)  # numpy in, torch out
    with vnpu.Runtime(yolo, backend=BACKEND, tensor_type="pt") as rt:
        assert isinstance(rt.run(torch.from_numpy(x).requires_grad_()), torch.Tensor)


def test_multi_output_models_return_a_list_in_model_order(tmp_path):
    import io
    import torch.nn as nn

    class Two(nn.Module):
        def forward(self, x):
            return x + 1.0, x * 3.0
    buf = io.BytesIO()
    torch.onnx.export(Two(), torch.zeros(4), buf, opset_version=13, input_names=["x"], output_names=["a", "b"])
    m = vnpu.compile_from_onnx(buf.getvalue())
    assert [o.name for o in m.outputs] == ["a", "b"]
    with vnpu.Runtime(m, backend=BACKEND) as rt:
        a, b = rt.run(np.arange(4, dtype=np.float32))
        np.testing.assert_array_equal(a, [1, 2, 3, 4])
        np.testing.assert_array_equal(b, [0, 3, 6, 9])


def test_a_closed_runtime_raises_aborted(yolo, yolo_io, slow_model):
    x, _ = yolo_io
    with vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1) as srt:
        tasks = [srt.run(x1()) for _ in range(5)]
    # close() (the with-block's end) waited: requests on the device finished, queued ones were cancelled.
    assert all(t.done() for t in tasks)
    for t in tasks:
        assert t.exception() is None or t.exception().code == vnpu.ErrorCode.CANCELLED
    assert tasks[-1].cancelled()
    rt = vnpu.AsyncRuntime(yolo, backend=BACKEND)
    rt.close()
    rt.close()  # idempotent
    assert rt.closed
    for call in (lambda: rt.run(x), lambda: rt.options):
        with pytest.raises(vnpu.Error) as e:
            call()
        assert e.value.code == vnpu.ErrorCode.ABORTED and "closed" in str(e.value)
    srt = vnpu.Runtime(yolo, backend=BACKEND)
    with srt:
        pass
    with pytest.raises(vnpu.Error) as e:
        srt.run(x)
    assert e.value.code == vnpu.ErrorCode.ABORTED


def test_runtime_timeout_raises_vnpu_timeout_error(slow_model):
    with vnpu.Runtime(slow_model, backend=BACKEND, timeout=0.05) as rt:
        with pytest.raises(vnpu.TimeoutError) as e:
            rt.run(x1())
        assert e.value.code == vnpu.ErrorCode.TIMEOUT
        assert isinstance(e.value, TimeoutError) and isinstance(e.value, vnpu.Error)


FAULT_SCRIPT = r"""
import sys
import numpy as np
import vnpu
m = vnpu.CompiledModel(sys.argv[1])
x = np.load(sys.argv[2])
ref = np.load(sys.argv[3])
where = sys.argv[4]
if where == "open":
    try:
        vnpu.AsyncRuntime(m, backend="sim")
    except vnpu.Error as e:
        assert e.code == vnpu.ErrorCode.DEVICE_FAULT, e
        print("fault:", e)
        sys.exit(0)
    sys.exit("the injected fault did not surface")
# Jobs 1-3 upload weights, program and the one slot's binding table; job 4 is the first request's H2D.
rt = vnpu.AsyncRuntime(m, backend="sim", max_in_flight=1)
t = rt.run(x)
try:
    t.wait()
    sys.exit("the injected DMA fault did not surface")
except vnpu.Error as e:
    assert e.code == vnpu.ErrorCode.DEVICE_FAULT, e
    assert "DMA fault" in str(e), e
    assert t.exception() is not None and t.done()
    print("fault:", e)
# A failed request does not affect the next ones.
y = rt.run(x).wait()
assert np.abs(y - ref).max() < 0.05
"""


@pytest.mark.skipif(BACKEND != "sim", reason="fault injection through VNPU_SIM_FI_* is the sim backend's")
@pytest.mark.parametrize("after, where", [(1, "open"), (4, "request")])
def test_injected_device_faults_raise_vnpu_error_device_fault(tmp_path, yolo_path, after, where):
    import os
    from conftest import example
    env = dict(os.environ, VNPU_SIM_FI_KIND="1", VNPU_SIM_FI_AFTER=str(after))
    r = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, yolo_path, example("yolov8n-tiny.input.npy"),
                        example("yolov8n-tiny.ref.npy"), where], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fault:" in r.stdout and "device-fault" in r.stdout


def test_threads_calling_run_concurrently(yolo, yolo_io):
    x, ref = yolo_io
    errors = []
    results = []
    with vnpu.AsyncRuntime(yolo, backend=BACKEND, parallel=2) as art, vnpu.Runtime(yolo, backend=BACKEND) as srt:
        def worker(i):
            try:
                for _ in range(4):
                    results.append(art.run(x).wait())
                    results.append(srt.run(x))
            except Exception as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(results) == 32 and all(close_to(y, ref) for y in results)


def test_the_gil_is_released_while_waiting_for_the_device(slow_model):
    # Another Python thread must run while run() / wait() wait for a 300 ms request.
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1
    t = threading.Thread(target=count)
    t.start()
    try:
        with vnpu.Runtime(slow_model, backend=BACKEND) as rt:
            before = ticks[0]
            rt.run(x1())
            during_run = ticks[0] - before
        with vnpu.AsyncRuntime(slow_model, backend=BACKEND) as art:
            task = art.run(x1())
            before = ticks[0]
            task.wait()
            during_wait = ticks[0] - before
    finally:
        stop.set()
        t.join()
    assert during_run > 10 and during_wait > 10, (during_run, during_wait)
