# SPDX-License-Identifier: MIT
"""vnpu.AsyncRuntime from asyncio and from threads: async_run futures, gather, cancellation, wait_for,
vnpu.Task (wait, done, cancel, add_done_callback), and the calls that must not deadlock."""
import asyncio
import threading
import time

import numpy as np
import pytest

import vnpu
from conftest import BACKEND, close_to, x1


def test_gather_of_100_requests_matches_pytorch(yolo, yolo_io):
    x, ref = yolo_io
    rt = vnpu.AsyncRuntime(yolo, backend=BACKEND, parallel=2)

    async def infer(i):
        return await rt.async_run(x + 0)  # a distinct array per request

    async def main():
        return await asyncio.gather(*[infer(i) for i in range(100)])
    ys = asyncio.run(main())
    rt.close()
    assert len(ys) == 100 and all(close_to(y, ref) for y in ys)


def test_async_run_returns_a_future_of_the_running_loop_with_timings(yolo, yolo_io):
    x, ref = yolo_io

    async def main():
        with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
            fut = rt.async_run(x)
            assert isinstance(fut, asyncio.Future) and isinstance(fut, vnpu.RequestFuture)
            assert fut.get_loop() is asyncio.get_running_loop()
            y = await fut
            assert fut.timings.compute_ns > 0 and fut.task.done()
            return y
    assert close_to(asyncio.run(main()), ref)


def test_async_run_without_a_running_loop_says_what_to_use(yolo, yolo_io):
    x, _ = yolo_io
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        with pytest.raises(vnpu.Error) as e:
            rt.async_run(x)
        assert "run()" in str(e.value)


def test_async_errors_surface_at_await_or_at_once(yolo, yolo_io, slow_model):
    x, _ = yolo_io

    async def main():
        with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
            with pytest.raises(vnpu.Error):
                rt.async_run(x[:, :1])  # wrong shape: at the call, as in C++
        with vnpu.AsyncRuntime(slow_model, backend=BACKEND, timeout=0.05) as rt:
            with pytest.raises(vnpu.TimeoutError):
                await rt.async_run(x1())  # the runtime's own timeout
    asyncio.run(main())


def test_wait_for_timeout_cancels_the_request(slow_model):
    async def main():
        with vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1) as rt:
            running = rt.async_run(x1())
            queued = rt.async_run(x1())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(queued, 0.05)
            assert queued.cancelled()
            # The cancellation reached the request: its vnpu.Task fails with CANCELLED, long before the
            # 300 ms of the request ahead of it would have let it finish.
            assert queued.task.exception(timeout=5).code == vnpu.ErrorCode.CANCELLED
            await running
    asyncio.run(main())


def test_cancelling_the_awaiting_coroutine_cancels_the_request(slow_model):
    async def main():
        with vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1) as rt:
            futs = []

            async def infer():
                f = rt.async_run(x1())
                futs.append(f)
                return await f
            tasks = [asyncio.ensure_future(infer()) for _ in range(4)]
            await asyncio.sleep(0.01)
            for t in tasks[1:]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert not isinstance(done[0], BaseException)
            assert all(isinstance(d, asyncio.CancelledError) for d in done[1:])
            for f in futs[1:]:
                assert f.task.exception(timeout=5).code == vnpu.ErrorCode.CANCELLED
    asyncio.run(main())


def test_task_wait_done_cancel_timings(yolo, yolo_io, slow_model):
    x, ref = yolo_io
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        t = rt.run(x)
        assert isinstance(t, vnpu.Task)
        y = t.wait()
        assert t.done() and not t.cancelled() and t.exception() is None
        assert close_to(y, ref) and t.wait() is y  # wait() may be called again
        assert t.result() is y and t.timings.total_ns >= t.timings.prep_ns
        assert not t.cancel()  # already done
    with vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1) as rt:
        first, second = rt.run(x1()), rt.run(x1())
        with pytest.raises(vnpu.TimeoutError) as e:
            first.wait(timeout=0.01)
        assert "still running" in str(e.value) or "keeps running" in str(e.value)
        if not first.done():  # (300 ms of modelled device time: done only if this host stalled that long)
            assert first.timings is None
        assert second.cancel()
        with pytest.raises(vnpu.Error) as e:
            second.wait(timeout=5)
        assert e.value.code == vnpu.ErrorCode.CANCELLED and second.cancelled()
        first.wait()


def test_add_done_callback_runs_on_the_binding_thread_or_at_once(yolo, yolo_io):
    x, ref = yolo_io
    seen = []
    ev = threading.Event()
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        t = rt.run(x)

        def cb(task):
            seen.append((task, threading.current_thread() is threading.main_thread(), close_to(task.wait(), ref)))
            ev.set()
        t.add_done_callback(cb)
        assert ev.wait(30)
        assert seen[0][0] is t and seen[0][2]
        seen.clear()
        t.add_done_callback(cb)  # done already: runs right here
        assert seen == [(t, True, True)]


def test_a_raising_callback_is_reported_not_lost(yolo, yolo_io, monkeypatch):
    x, _ = yolo_io
    reports = []
    ev = threading.Event()
    monkeypatch.setattr("sys.unraisablehook", lambda u: (reports.append(u.exc_value), ev.set()))
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        t = rt.run(x)
        t.add_done_callback(lambda task: 1 / 0)
        t.wait()
        assert ev.wait(30)
    assert isinstance(reports[0], ZeroDivisionError)
    with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
        assert rt.run(x).wait().shape == (1, 84, 525)  # the callback thread still works


def test_wait_and_close_from_a_callback_do_not_deadlock(yolo, yolo_io, slow_model):
    # A callback that waits for another request of the same runtime, then destroys the runtime.
    x, ref = yolo_io
    rt = vnpu.AsyncRuntime(yolo, backend=BACKEND)
    other = rt.run(x)
    out = {}
    ev = threading.Event()

    def cb(task):
        out["other"] = other.wait(timeout=60)
        out["late"] = rt.run(x)  # accepted: the runtime is still open
        rt.close()
        out["closed"] = rt.closed
        ev.set()
    rt.run(x).add_done_callback(cb)
    assert ev.wait(60), "a callback that waited and closed the runtime hung"
    assert close_to(out["other"], ref) and out["closed"]
    late = out["late"]
    assert late.done() and (late.exception() is None or late.exception().code == vnpu.ErrorCode.CANCELLED)


def test_wait_and_close_inside_the_event_loop_do_not_deadlock(yolo, yolo_io):
    x, ref = yolo_io

    async def main():
        rt = vnpu.AsyncRuntime(yolo, backend=BACKEND)
        pending = [rt.async_run(x) for _ in range(4)]
        y = rt.run(x).wait(timeout=60)  # blocks the loop, not the runtime
        rt.close()  # with futures pending on this very loop
        ys = await asyncio.gather(*pending, return_exceptions=True)
        return y, ys
    y, ys = asyncio.run(main())
    assert close_to(y, ref)
    for r in ys:
        assert (isinstance(r, vnpu.Error) and r.code == vnpu.ErrorCode.CANCELLED) or close_to(r, ref)


def test_dropping_a_runtime_with_requests_in_flight(slow_model):
    rt = vnpu.AsyncRuntime(slow_model, backend=BACKEND, max_in_flight=1)
    tasks = [rt.run(x1()) for _ in range(3)]
    del rt  # the tasks keep the runtime alive: nothing is cancelled
    for t in tasks:
        assert t.wait(timeout=30) is not None


def test_a_closed_loop_does_not_break_the_runtime(slow_model):
    rt = vnpu.AsyncRuntime(slow_model, backend=BACKEND)
    loop = asyncio.new_event_loop()

    async def start():
        return rt.async_run(x1())
    fut = loop.run_until_complete(start())
    loop.close()  # nobody will ever await fut
    time.sleep(0.05)
    assert rt.run(x1()).wait(timeout=30) is not None
    fut.task.wait(timeout=30)
    rt.close()


def test_threads_and_asyncio_share_one_runtime(yolo, yolo_io):
    x, ref = yolo_io
    rt = vnpu.AsyncRuntime(yolo, backend=BACKEND, parallel=2)
    thread_results = []

    def worker():
        for _ in range(5):
            thread_results.append(rt.run(x).wait())

    async def main():
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        ys = await asyncio.gather(*[rt.async_run(x) for _ in range(20)])
        for t in threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join)
        return ys
    ys = asyncio.run(main())
    rt.close()
    assert len(ys) == 20 and len(thread_results) == 15
    assert all(close_to(y, ref) for y in ys + thread_results)


def test_many_small_requests_do_not_leak_references(slow_model):
    import sys
    model = vnpu.CompiledModel.synthetic(compute_ms=0.01)
    a = np.ones(1, np.float32)
    before = sys.getrefcount(a)

    async def main(rt):
        await asyncio.gather(*[rt.async_run(a) for _ in range(200)])
    with vnpu.AsyncRuntime(model, backend=BACKEND, parallel=2) as rt:
        asyncio.run(main(rt))
        rt.run(x1()).wait()
    time.sleep(0.1)
    with vnpu.AsyncRuntime(model, backend=BACKEND) as rt:
        rt.run(x1()).wait()
    assert sys.getrefcount(a) == before


def test_close_with_callbacks_pending_runs_every_callback(slow_model):
    # The runtime's destructor (GIL released) drains requests whose completions need the GIL for their
    # Python callbacks: they must not wait for each other (the OpenVINO AsyncInferQueue destructor deadlock).
    done = []
    rt = vnpu.AsyncRuntime(vnpu.CompiledModel.synthetic(compute_ms=20), backend=BACKEND, max_in_flight=2)
    for _ in range(6):
        rt.run(x1()).add_done_callback(lambda t: done.append(t.exception() is None or t.cancelled()))
    rt.close()
    deadline = time.monotonic() + 30
    while len(done) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [True] * 6


def test_a_forked_child_gets_a_working_binding(yolo, yolo_io):
    # A forked child inherited a dead callback thread (its futures never resolved) and the parent's runtimes,
    # whose threads it does not have.
    import os
    x, ref = yolo_io
    parent_rt = vnpu.AsyncRuntime(yolo, backend=BACKEND)
    parent_rt.run(x).wait()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = parent_rt.closed
            with vnpu.AsyncRuntime(yolo, backend=BACKEND) as rt:
                async def main():
                    return await asyncio.wait_for(asyncio.gather(*[rt.async_run(x) for _ in range(3)]), 60)
                ok = ok and all(close_to(y, ref) for y in asyncio.run(main()))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert close_to(parent_rt.run(x).wait(), ref)
    parent_rt.close()
