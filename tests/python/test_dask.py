# SPDX-License-Identifier: MIT
"""vnpu.dask on a distributed.LocalCluster of 2 worker processes (sim backend): outputs against a single-process
run, every input form, per-sample device faults, a worker SIGKILLed mid-run, errors reaching the client, how
devices map to workers, and no worker process left behind."""
import os
import signal
import time

import numpy as np
import pytest

import vnpu
from conftest import BACKEND

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import vnpu.dask as vd  # noqa: E402

# distributed 2022.12 on Debian's tornado 6.2.
pytestmark = pytest.mark.filterwarnings("ignore:make_current is deprecated:DeprecationWarning")

WAIT = 120  # seconds: the bound of every wait on the cluster (a hang fails the test instead)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    """A LocalCluster of 2 worker processes (each with NPU=1), or the given cluster of 2 workers, and its
    client; close() checks that every worker process (and nanny) is gone afterwards."""

    def __init__(self, cluster=None):
        self.cluster = cluster or distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                                           dashboard_address=":0", resources={"NPU": 1},
                                                           silence_logs=40, timeout=WAIT)
        self.client = distributed.Client(self.cluster, timeout=WAIT)
        self.client.wait_for_workers(2, timeout=WAIT)

    def pids(self):
        return self.client.run(os.getpid)

    def close(self):
        pids = list(self.pids().values()) + [n.process.pid for n in self.cluster.workers.values()
                                             if getattr(n, "process", None) and n.process.pid]
        self.client.close(timeout=WAIT)
        self.cluster.close(timeout=WAIT)
        deadline = time.monotonic() + 20
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in pids if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert not left, f"worker processes left behind: {left}"


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.close()


def same(outs, refs):
    return len(outs) == len(refs) and all(isinstance(o, np.ndarray) and np.array_equal(o, r)
                                          for o, r in zip(outs, refs))


# The bag's and dask.array's samples are in the graph (from_sequence, from_array), which Dask warns about.
@pytest.mark.filterwarnings("ignore:Large object of size")
def test_map_outputs_equal_a_single_process_run(cluster, samples, yolo_path):
    xs, refs = samples
    client = cluster.client
    reg = vd.register(client, yolo_path, backend=BACKEND, parallel=2)
    assert reg.inputs == [("images", (1, 3, 160, 160))] and reg.outputs == [("output0", (1, 84, 525))]
    vd.stats(client, reset=True)
    futures = vd.map(client, xs, batch=3)
    assert len(futures) == 6  # 16 samples in batches of 3
    assert same(vd.gather(futures, timeout=WAIT), refs)
    st = vd.stats(client)
    assert len(st) == 2 and sum(s["samples"] for s in st.values()) == 16
    assert all(s["errors"] == 0 and s["devices"] == [0] and s["backend"] == BACKEND for s in st.values())
    # A numpy array of samples without the leading 1, a dask.array (blocks computed on the workers), a bag.
    stacked = np.stack(xs)[:, 0]
    assert same(vd.gather(vd.map(client, stacked, batch=5), timeout=WAIT), refs)
    darr = da.from_array(stacked, chunks=(4, 3, 160, 160))
    futures = vd.map(client, darr, batch=6)
    assert len(futures) == 3 and same(vd.gather(futures, timeout=WAIT), refs)
    futures = vd.map(client, db.from_sequence(xs, npartitions=4), model=reg)
    assert len(futures) == 4 and same(vd.gather(futures, timeout=WAIT), refs)


def test_infer_blocks_maps_over_the_blocks_of_a_dask_array(cluster, samples, yolo_path):
    xs, refs = samples
    # Read by the workers from the (shared) path rather than shipped.
    reg = vd.register(cluster.client, yolo_path, name="blocks", backend=BACKEND, shared_path=True)
    assert cluster.client.run(lambda dask_worker: dask_worker.plugins["vnpu-blocks"].source[0]) == \
        {w: "path" for w in cluster.pids()}
    y = vd.infer_blocks(da.from_array(np.stack(xs), chunks=(5, 1, 3, 160, 160)), reg)
    assert y.shape == (16, 1, 84, 525) and y.chunks[0] == (5, 5, 5, 1)
    got = cluster.client.compute(y).result(timeout=WAIT)
    assert np.array_equal(got, np.stack(refs))
    with pytest.raises(vnpu.Error) as e:
        vd.infer_blocks(da.zeros((4, 7), chunks=2), reg)
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT and "(7,)" in str(e.value)


@pytest.mark.skipif(BACKEND != "sim", reason="fault injection through VNPU_SIM_FI_* is the sim backend's")
def test_a_device_fault_on_one_worker_fails_only_its_sample(cluster, samples, yolo_path):
    xs, refs = samples
    client = cluster.client
    bad, good = sorted(cluster.pids())
    # Arm a one-shot DMA fault in the sim engine that `bad` opens next: its jobs 1-6 open the model
    # (max_in_flight=4), job 8 belongs to the first request (docs/runtime.md, VNPU_SIM_FI_*).
    client.run(os.putenv, "VNPU_SIM_FI_KIND", "1", workers=[bad])
    client.run(os.putenv, "VNPU_SIM_FI_AFTER", "8", workers=[bad])
    try:
        vd.register(client, yolo_path, name="faulty", backend="sim", max_in_flight=4)
    finally:
        client.run(os.unsetenv, "VNPU_SIM_FI_KIND", workers=[bad])
        client.run(os.unsetenv, "VNPU_SIM_FI_AFTER", workers=[bad])
    on_bad = vd.map(client, xs[:8], batch=4, model="faulty", workers=[bad])
    on_good = vd.map(client, xs[8:], batch=4, model="faulty", workers=[good])
    outs = vd.gather(on_bad + on_good, timeout=WAIT, errors="return")
    errors = [(i, o) for i, o in enumerate(outs) if isinstance(o, vd.SampleError)]
    assert len(errors) == 1, errors
    i, err = errors[0]
    assert isinstance(err, vnpu.Error) and err.code == vnpu.ErrorCode.DEVICE_FAULT, err
    assert err.worker == bad and "DMA fault" in err.message and f"sample {err.index}" in str(err)
    # Every other sample, on both workers, is unaffected.
    assert same([o for j, o in enumerate(outs) if j != i], [r for j, r in enumerate(refs) if j != i])
    # errors="raise" (the default) raises that vnpu.Error on the client.
    with pytest.raises(vnpu.Error) as e:
        vd.gather(on_bad, timeout=WAIT)
    assert e.value.code == vnpu.ErrorCode.DEVICE_FAULT and e.value.worker == bad


def test_errors_reach_the_client(cluster, samples, yolo_path):
    xs, refs = samples
    client = cluster.client
    vd.register(client, yolo_path, name="errs", backend=BACKEND)
    # A wrong shape fails that sample only, with the runtime's message.
    outs = vd.gather(vd.map(client, [xs[0], np.zeros((2, 2), np.float32), xs[1]], model="errs", batch=3),
                     timeout=WAIT, errors="return")
    assert np.array_equal(outs[0], refs[0]) and np.array_equal(outs[2], refs[1])
    assert isinstance(outs[1], vd.SampleError) and outs[1].code == vnpu.ErrorCode.INVALID_ARGUMENT
    assert outs[1].index == 1 and "[1,3,160,160]" in outs[1].message
    # A model nobody registered: the task's vnpu.Error.
    with pytest.raises(vnpu.Error) as e:
        vd.gather(vd.map(client, xs[:2], model="nope"), timeout=WAIT)
    assert e.value.code == vnpu.ErrorCode.NOT_FOUND and "'nope'" in str(e.value)
    # In a bag, the bad sample is numbered in input order (the task only knows its partition).
    bag = db.from_sequence([xs[0], xs[1], xs[2], np.zeros(3, np.float32)], npartitions=2)
    outs = vd.gather(vd.map(client, bag, model="errs"), timeout=WAIT, errors="return")
    assert [type(o).__name__ for o in outs] == ["ndarray"] * 3 + ["SampleError"] and outs[3].index == 3
    # A sample numpy cannot make an array of fails alone too.
    outs = vd.gather(vd.map(client, [[[1.0], [1.0, 2.0]], xs[0]], model="errs"), timeout=WAIT, errors="return")
    assert outs[0].code == vnpu.ErrorCode.INVALID_ARGUMENT and np.array_equal(outs[1], refs[0])
    # A bad runtime option: the worker's error, from register(); tasks sent to it say why.
    with pytest.raises(vnpu.Error) as e:
        vd.register(client, yolo_path, name="badopt", backend=BACKEND, parallel=99)
    assert e.value.code == vnpu.ErrorCode.INVALID_ARGUMENT and "parallel" in str(e.value)
    with pytest.raises(vnpu.Error) as e:
        vd.gather(vd.map(client, xs[:1], model="badopt"), timeout=WAIT)
    assert e.value.code == vnpu.ErrorCode.NOT_FOUND and "could not open it" in str(e.value)
    # A batch that runs out of time: its unfinished samples fail with TIMEOUT, and the task returns.
    vd.register(client, vd.synthetic(compute_ms=300), name="slow", backend=BACKEND)
    t0 = time.monotonic()
    outs = vd.gather(vd.map(client, [np.ones(1, np.float32)] * 4, model="slow", batch=4, timeout=0.05),
                     timeout=WAIT, errors="return")
    assert time.monotonic() - t0 < 30
    assert all(isinstance(o, vd.SampleError) and o.code == vnpu.ErrorCode.TIMEOUT for o in outs), outs
    # In infer_blocks, a failed sample fails its block with its SampleError (numbered in the whole array).
    slow = vd.infer_blocks(da.ones((4, 1), chunks=2, dtype=np.float32), "slow", timeout=0.05)
    with pytest.raises(vd.SampleError) as e:
        client.compute(slow).result(WAIT)
    assert e.value.code == vnpu.ErrorCode.TIMEOUT and e.value.index in (0, 2)
    # Bad arguments on the client.
    for kw in (dict(batch=0), dict(tasks_per_device=0), dict(model=3), dict(timeout=-1), dict(timeout="1")):
        with pytest.raises(vnpu.Error):
            vd.map(client, xs, **kw)
    with pytest.raises(vnpu.Error):
        vd.register(client, vnpu.CompiledModel.synthetic(compute_ms=1))


def kill_a_busy_worker(c, futures):
    """SIGKILL a worker that has a batch in progress once some batch is done; returns its address and how many
    batches were not done yet."""
    client = c.client
    victim = None
    deadline = time.monotonic() + WAIT
    while victim is None and time.monotonic() < deadline:
        busy = {w: k for w, k in client.processing().items() if k}
        if any(f.done() for f in futures) and busy:
            victim = sorted(busy)[0]
        else:
            time.sleep(0.01)
    assert victim is not None, "no worker ever had a batch in progress"
    pending = sum(not f.done() for f in futures)
    os.kill(c.pids()[victim], signal.SIGKILL)
    return victim, pending


def test_a_worker_killed_mid_run_loses_no_output(samples, yolo_path):
    xs, refs = samples
    xs, refs = xs * 4, refs * 4  # 64 samples, 32 batches
    c = Cluster()
    try:
        client = c.client
        vd.register(client, yolo_path, backend=BACKEND)
        futures = vd.map(client, xs, batch=2)
        victim, pending = kill_a_busy_worker(c, futures)
        outs = vd.gather(futures, timeout=WAIT)
        assert pending > 0 and same(outs, refs)
        assert victim not in client.scheduler_info()["workers"]
    finally:
        c.close()


class FakeWorker:
    def __init__(self, resources):
        self.total_resources = resources
        self.address = "fake"


def test_devices_come_from_the_workers_resources_and_config():
    plugin = vd.VnpuPlugin(("synthetic", vd.synthetic(compute_ms=1)), "m", {"backend": "sim"})
    assert plugin._resolve_options(FakeWorker({}))[0] == {"backend": "sim"}
    assert plugin._resolve_options(FakeWorker({"NPU": 2}))[0]["devices"] == [0, 1]
    with dask.config.set({"vnpu.devices": "1,3", "vnpu.parallel": 2}):
        assert plugin._resolve_options(FakeWorker({"NPU": 2}))[0] == {"backend": "sim", "devices": [1, 3],
                                                                       "parallel": 2}
    with dask.config.set({"vnpu.devices": "x"}):
        with pytest.raises(vnpu.Error):
            plugin._resolve_options(FakeWorker({}))
    explicit = vd.VnpuPlugin(("synthetic", vd.synthetic()), "m", {"backend": "sim", "device": 5})
    assert "devices" not in explicit._resolve_options(FakeWorker({"NPU": 2}))[0]
    # A worker of a mixed cluster that declares resources but no NPU opens nothing.
    gpu_only = FakeWorker({"GPU": 1})
    plugin.setup(gpu_only)
    assert plugin.runtime is None
    # NPU=2: one runtime over both devices, which both get requests.
    plugin.setup(FakeWorker({"NPU": 2}))
    try:
        assert plugin.runtime is not None and plugin.runtime.options["devices"] == [0, 1]
        tasks = [plugin.runtime.run(np.ones(1, np.float32)) for _ in range(8)]
        for t in tasks:
            t.wait(WAIT)
        assert {t.timings.device_index for t in tasks} == {0, 1}
    finally:
        plugin.teardown(None)
    assert plugin.runtime is None


def test_the_dask_batch_example_runs_on_the_fixtures(tmp_path):
    import json
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "python", "dask_batch.py"), "--workers", "2",
                        "--count", "12", "--batch", "3", "--check", "--backend", BACKEND, "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outputs equal a single-process run" in r.stdout and "total: 12 images on 2 workers" in r.stdout
    report = json.loads(out.read_text())
    assert report["workers"] == 2 and sum(s["samples"] for s in report["per_worker"].values()) == 12
    assert report["total_ips"] > 0 and report["detections"] > 0
