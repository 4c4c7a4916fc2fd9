# SPDX-License-Identifier: MIT
"""vnpu on a Dask cluster: one AsyncRuntime per worker, batches of samples as tasks (docs/scale-out.md).

    from distributed import Client
    import vnpu.dask
    client = Client("tcp://scheduler:8786")
    vnpu.dask.register(client, "yolov8n.vnpu", parallel=2)    # ships the model to every worker, once
    futures = vnpu.dask.map(client, samples, batch=32)        # one Dask future per batch of 32 samples
    outputs = vnpu.dask.gather(futures, timeout=600)          # flat list, in input order

The worker side is a distributed.WorkerPlugin (VnpuPlugin) that opens the model once per worker, on the
worker's devices (its Dask resource NPU=N, or the worker's Dask config `vnpu.devices`). A task runs one batch:
it submits every sample of the batch with AsyncRuntime.run() before waiting for the first, so the runtime's
pipeline stays full; several batch tasks may run on a worker at once (tasks_per_device).

Errors: a sample whose request fails (a device fault, a timeout, a wrong shape) becomes a vnpu.dask.SampleError
(a vnpu.Error with the request's .code and .message, plus .index and .worker) in its place in the batch's
result; the other samples of the batch are unaffected. gather() raises the first one (errors="raise") or
returns them in place (errors="return"). A worker that dies (killed, out of memory) loses nothing: Dask runs
its unfinished tasks again on other workers (and on the worker the nanny restarts, which gets the plugin again).
"""
import math
import threading
import time
import warnings

import numpy as np
from distributed import WorkerPlugin

from . import AsyncRuntime, CompiledModel, Error, ErrorCode, _make_error

__all__ = ["RegisteredModel", "SampleError", "VnpuPlugin", "gather", "infer_blocks", "map", "register", "stats",
           "synthetic"]

RESOURCE = "NPU"
_PLUGIN_PREFIX = "vnpu-"


class SampleError(Error):
    """The failure of one sample's request on a worker: a vnpu.Error (.code, .message) plus .index (the
    sample's position in the inputs of map()) and .worker (the worker's address)."""

    def __init__(self, code, message, index=None, worker=None):
        where = f"sample {index}" if index is not None else "a sample"
        if worker:
            where += f" on worker {worker}"
        super().__init__(f"{where}: {message}")
        self.code = code
        self.message = message
        self.index = index
        self.worker = worker

    def __reduce__(self):
        return (SampleError, (self.code, self.message, self.index, self.worker))


class synthetic:
    """A synthetic model (vnpu.CompiledModel.synthetic) for register(): its spec is shipped, not bytes."""

    def __init__(self, **spec):
        CompiledModel.synthetic(**spec)  # a bad spec fails here, on the client
        self.spec = spec

    def load(self):
        return CompiledModel.synthetic(**self.spec)


class RegisteredModel:
    """What register() returns: the model's name on the workers and its inputs/outputs as (name, shape)."""

    def __init__(self, name, inputs, outputs):
        self.name = name
        self.inputs = inputs
        self.outputs = outputs

    def __repr__(self):
        return f"RegisteredModel({self.name!r}, inputs={self.inputs}, outputs={self.outputs})"


def _io(model):
    return ([(t.name, tuple(t.shape)) for t in model.inputs], [(t.name, tuple(t.shape)) for t in model.outputs])


def _parse_devices(value):
    """The worker config's vnpu.devices: an int, a list of ints or a string "0,1"."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if isinstance(value, (int, str)):
        value = [value]
    try:
        devices = [int(v) for v in value]
    except (TypeError, ValueError):
        devices = []
    if not devices or any(d < 0 for d in devices):
        raise _make_error(ErrorCode.INVALID_ARGUMENT,
                          f"the worker's Dask config vnpu.devices must be device indices, got {value!r}")
    return devices


class VnpuPlugin(WorkerPlugin):
    """The worker side: opens the model on the worker's devices once (one vnpu.AsyncRuntime per worker) and
    closes it at the worker's teardown. Register it with vnpu.dask.register().

    Devices, in order of precedence: `device`/`devices` in the runtime options (the same on every worker);
    the worker's Dask config `vnpu.devices` (e.g. DASK_VNPU__DEVICES="[1]" in the worker's environment);
    devices 0..N-1 for a worker with the Dask resource NPU=N; else the runtime's default (device 0). A worker
    that declares resources but no NPU opens nothing (tasks sent there fail with NOT_FOUND). `parallel` comes
    from the options, else the worker's Dask config `vnpu.parallel`, else the runtime's default.
    """

    def __init__(self, source, name, options):
        self.source = source      # ("bytes", b) | ("path", p) | ("synthetic", synthetic)
        self.model_name = name
        self.name = _PLUGIN_PREFIX + name
        self.options = dict(options)
        self.runtime = None
        self.worker_address = None
        self.open_error = None

    def __getstate__(self):
        return {"source": self.source, "model_name": self.model_name, "name": self.name, "options": self.options}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.runtime = None
        self.worker_address = None
        self.open_error = None

    def _load(self):
        kind, what = self.source
        if kind == "bytes":
            return CompiledModel.from_bytes(what)
        if kind == "path":
            return CompiledModel(what)
        return what.load()

    def _resolve_options(self, worker):
        import dask
        opts = dict(self.options)
        state = getattr(worker, "state", None)  # distributed >= 2022.08 keeps them in the worker's state
        resources = dict(getattr(state, "total_resources", None) or getattr(worker, "total_resources", None) or {})
        if "device" not in opts and "devices" not in opts:
            configured = dask.config.get("vnpu.devices", None)
            if configured is not None:
                opts["devices"] = _parse_devices(configured)
            elif resources.get(RESOURCE):
                opts["devices"] = list(range(max(1, int(resources[RESOURCE]))))
        if "parallel" not in opts:
            parallel = dask.config.get("vnpu.parallel", None)
            if parallel is not None:
                opts["parallel"] = int(parallel)
        return opts, resources

    def setup(self, worker):
        self.worker_address = worker.address
        self.lock = threading.Lock()
        self.samples = 0
        self.errors = 0
        self.batches = 0
        self.busy_s = 0.0      # union of the intervals in which at least one batch ran
        self.first = None
        self.last = None
        self._active = 0
        self._active_since = None
        opts, resources = self._resolve_options(worker)
        if resources and not resources.get(RESOURCE):
            return  # a worker without NPUs in a mixed cluster
        try:
            self.runtime = AsyncRuntime(self._load(), **opts)
        except Exception as e:
            self.open_error = e  # for the tasks that still get here (Dask keeps a plugin whose setup failed)
            raise

    def teardown(self, worker):
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None

    def _begin(self):
        with self.lock:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            if self._active == 0:
                self._active_since = now
            self._active += 1

    def _end(self, n, errors):
        with self.lock:
            now = time.monotonic()
            self._active -= 1
            if self._active == 0:
                self.busy_s += now - self._active_since
            self.last = now
            self.samples += n
            self.errors += errors
            self.batches += 1

    def stats(self):
        with self.lock:
            busy = self.busy_s + (time.monotonic() - self._active_since if self._active else 0.0)
            return {"samples": self.samples, "errors": self.errors, "batches": self.batches, "busy_s": busy,
                    "throughput": self.samples / busy if busy > 0 else 0.0,
                    "devices": (self.runtime.options.get("devices") if self.runtime is not None else []),
                    "backend": self.runtime.backend if self.runtime is not None else None}

    def reset_stats(self):
        with self.lock:
            self.samples = self.errors = self.batches = 0
            self.busy_s = 0.0
            self.first = self.last = None
            if self._active:
                self._active_since = time.monotonic()


def register(client, model_or_path, *, name="default", shared_path=False, **runtime_options):
    """Open a model on every worker of `client`'s cluster (and on workers that join later): one
    vnpu.AsyncRuntime per worker, with `runtime_options` (AsyncRuntime's keywords; devices and parallel
    default to the worker's configuration, see VnpuPlugin).

    model_or_path: a vnpu.CompiledModel, .vnpu bytes, a path, or vnpu.dask.synthetic(...). A path is read on
    the client and its bytes shipped with the plugin, once per worker; with shared_path=True the workers read
    the path themselves (a file system every worker sees). Registering a name again replaces its model.
    Returns a RegisteredModel. Raises the vnpu.Error of the first worker that could not open it.
    """
    import os
    if not isinstance(name, str) or not name:
        raise _make_error(ErrorCode.INVALID_ARGUMENT, "the model name must be a non-empty string")
    if isinstance(model_or_path, synthetic):
        source, model = ("synthetic", model_or_path), model_or_path.load()
    elif isinstance(model_or_path, CompiledModel):
        if model_or_path.kind == "synthetic":
            raise _make_error(ErrorCode.INVALID_ARGUMENT,
                              "a synthetic CompiledModel cannot be shipped: pass vnpu.dask.synthetic(**spec)")
        model = model_or_path
        source = ("bytes", model.to_bytes())
    elif isinstance(model_or_path, (bytes, bytearray, memoryview)):
        source = ("bytes", bytes(model_or_path))
        model = CompiledModel.from_bytes(source[1])
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        model = CompiledModel(path)  # checks it on the client (a clear error before any worker sees it)
        source = ("path", os.path.abspath(path)) if shared_path else ("bytes", model.to_bytes())
    else:
        raise _make_error(ErrorCode.INVALID_ARGUMENT,
                          "register takes a CompiledModel, bytes, a path or vnpu.dask.synthetic, got " +
                          type(model_or_path).__name__)
    inputs, outputs = _io(model)
    client.register_worker_plugin(VnpuPlugin(source, name, runtime_options), name=_PLUGIN_PREFIX + name)
    reg = RegisteredModel(name, inputs, outputs)
    _registered[name] = reg
    return reg


_registered = {}


def _name_of(model):
    if isinstance(model, RegisteredModel):
        return model.name
    if isinstance(model, str):
        return model
    raise _make_error(ErrorCode.INVALID_ARGUMENT,
                      "model must be a registered model's name or what register() returned, got " +
                      type(model).__name__)


# ---- the worker side -------------------------------------------------------------------------------------------

def _plugin(name):
    from distributed import get_worker
    worker = get_worker()
    plugin = worker.plugins.get(_PLUGIN_PREFIX + name)
    if plugin is None or plugin.runtime is None:
        if plugin is None:
            why = "is not registered (call vnpu.dask.register first)"
        elif getattr(plugin, "open_error", None) is not None:
            why = f"could not open it: {plugin.open_error}"
        else:
            why = "has no NPU resource"
        raise _make_error(ErrorCode.NOT_FOUND, f"model '{name}' on worker {worker.address}: the worker {why}")
    return plugin


def _as_inputs(sample, infos):
    """One sample as the runtime's inputs: an array for a one-input model (a tuple/list for several), each
    reshaped to the input's shape when only a leading batch dimension of 1 differs."""
    parts = sample if len(infos) > 1 and isinstance(sample, (tuple, list)) else (sample,)
    out = []
    for a, info in zip(parts, infos):
        a = np.asarray(a)
        shape = tuple(info.shape)
        if a.shape != shape and a.size == math.prod(shape):
            a = a.reshape(shape)
        out.append(a)
    return out + list(parts[len(infos):])


def _run_batch(samples, name, first_index, timeout):
    """A batch task: every sample submitted before any is waited for; per-sample SampleErrors in place."""
    plugin = _plugin(name)
    rt = plugin.runtime
    infos = rt.model.inputs
    plugin._begin()
    errors = 0
    results = []
    try:
        tasks = []
        for i, s in enumerate(samples):
            try:
                tasks.append(rt.run(*_as_inputs(s, infos)))
            except Error as e:
                tasks.append(e)
            except Exception as e:  # a sample numpy cannot even make an array of (ragged lists, ...)
                tasks.append(_make_error(ErrorCode.INVALID_ARGUMENT, f"the sample does not convert to inputs: {e}"))
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, t in enumerate(tasks):
            if not isinstance(t, Error):
                try:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    results.append(t.wait(left))
                    continue
                except Error as e:
                    t.cancel()
                    t = e
            errors += 1
            results.append(SampleError(t.code, t.message, first_index + i, plugin.worker_address))
    finally:
        plugin._end(len(samples), errors)
    return results


def _run_block(block, name, first_index, timeout):
    """An infer_blocks task: a block of samples along axis 0 → the stacked outputs; a failed sample fails the
    block with its SampleError (an array block has no place for per-sample errors)."""
    outs = _run_batch(list(block), name, first_index, timeout)
    for o in outs:
        if isinstance(o, SampleError):
            raise o
    first = outs[0] if outs else None
    if isinstance(first, list):
        raise _make_error(ErrorCode.INVALID_ARGUMENT, "infer_blocks needs a model with one output")
    return np.stack(outs) if outs else np.empty((0,), np.float32)


def _stats(name):
    from distributed import get_worker
    plugin = get_worker().plugins.get(_PLUGIN_PREFIX + name)
    return None if plugin is None or not hasattr(plugin, "lock") else plugin.stats()


def _reset_stats(name):
    from distributed import get_worker
    plugin = get_worker().plugins.get(_PLUGIN_PREFIX + name)
    if plugin is not None and hasattr(plugin, "lock"):
        plugin.reset_stats()


# ---- the client side -------------------------------------------------------------------------------------------

def _default_resources(client, tasks_per_device):
    """{NPU: 1/tasks_per_device} when some worker declares NPUs, else None (every worker runs the model)."""
    workers = client.scheduler_info().get("workers", {})
    if any((w.get("resources") or {}).get(RESOURCE) for w in workers.values()):
        return {RESOURCE: 1.0 / tasks_per_device}
    return None


def map(client, inputs, *, batch=32, model="default", timeout=None, resources="auto", tasks_per_device=2,
        workers=None, priority=0):
    """Run every sample of `inputs` through a registered model on the cluster, `batch` samples per task.

    inputs: a list of samples (each an array, or a tuple of arrays for a multi-input model), a numpy array
    (samples along axis 0), a dask.array (rechunked to `batch` along axis 0; its blocks are computed on the
    workers) or a dask.bag of samples (one task per partition: repartition the bag to choose the batch size).
    A sample may lack the model input's leading batch dimension of 1.

    Returns a list of distributed.Future, one per batch in input order, each resolving to the list of the
    batch's outputs (the runtime's outputs, or a SampleError in place of a failed sample); gather() flattens
    them. timeout: seconds a batch waits for its requests (then its unfinished samples fail with TIMEOUT).
    resources: "auto" — {NPU: 1/tasks_per_device} per task when the cluster's workers declare NPU resources,
    so a worker with NPU=N runs up to N*tasks_per_device batches at once; a dict; or None. workers and
    priority go to client.submit.
    """
    name = _name_of(model)
    if not isinstance(batch, int) or batch < 1:
        raise _make_error(ErrorCode.INVALID_ARGUMENT, f"batch must be an int >= 1, got {batch!r}")
    if not isinstance(tasks_per_device, int) or tasks_per_device < 1:
        raise _make_error(ErrorCode.INVALID_ARGUMENT, f"tasks_per_device must be an int >= 1, got {tasks_per_device!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise _make_error(ErrorCode.INVALID_ARGUMENT, f"timeout must be seconds > 0 or None, got {timeout!r}")
    if resources == "auto":
        resources = _default_resources(client, tasks_per_device)
    kw = dict(resources=resources, workers=workers, priority=priority, pure=False)

    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - python3-dask comes with python3-distributed
        da = None
    try:
        import dask.bag as db
    except ImportError:  # pragma: no cover
        db = None

    if db is not None and isinstance(inputs, db.Bag):
        import dask
        # A partition's length is unknown until it is computed: its SampleErrors are numbered within the
        # partition, and gather() renumbers them in input order.
        delayed = [dask.delayed(_run_batch, pure=False)(p, name, 0, timeout) for p in inputs.to_delayed()]
        return client.compute(delayed, resources=resources, workers=workers, priority=priority)
    if da is not None and isinstance(inputs, da.Array):
        import dask
        arr = inputs.rechunk({0: batch, **{i: -1 for i in range(1, inputs.ndim)}})
        blocks = arr.to_delayed().reshape(-1)
        firsts = np.concatenate([[0], np.cumsum(arr.chunks[0])[:-1]]).astype(int)
        delayed = [dask.delayed(_run_batch, pure=False)(b, name, int(f), timeout) for b, f in zip(blocks, firsts)]
        return client.compute(delayed, resources=resources, workers=workers, priority=priority)

    if isinstance(inputs, np.ndarray):
        samples = [inputs[i] for i in range(inputs.shape[0])] if inputs.ndim else [inputs]
    else:
        samples = list(inputs)
    # The samples travel inside the task (kept by the scheduler), not scattered: a batch whose worker dies can
    # run again elsewhere, which scattered data lost with that worker could not.
    # (Dask warns about large objects in the task graph, suggesting exactly that scatter: not here.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Large object of size", category=UserWarning)
        return [client.submit(_run_batch, samples[i:i + batch], name, i, timeout, **kw)
                for i in range(0, len(samples), batch)]


def gather(futures, *, timeout=None, errors="raise"):
    """The outputs of map()'s futures as one flat list in input order. errors="raise": raise the first
    SampleError (a vnpu.Error: .code, .index, .worker); "return": leave SampleErrors in place. timeout:
    seconds for the whole gather (then a vnpu.TimeoutError)."""
    from distributed import wait
    from distributed.utils import TimeoutError as DaskTimeout
    if errors not in ("raise", "return"):
        raise _make_error(ErrorCode.INVALID_ARGUMENT, f"errors must be 'raise' or 'return', got {errors!r}")
    futures = list(futures)
    if not futures:
        return []
    try:
        wait(futures, timeout=timeout)
    except (DaskTimeout, TimeoutError) as e:
        left = sum(not f.done() for f in futures)
        raise _make_error(ErrorCode.TIMEOUT, f"{left} of {len(futures)} batches not done after {timeout} s") from e
    client = futures[0].client
    out = []
    for batch in client.gather(futures):
        out.extend(batch)
    for i, o in enumerate(out):
        if isinstance(o, SampleError) and o.index != i:
            out[i] = SampleError(o.code, o.message, i, o.worker)
    if errors == "raise":
        for o in out:
            if isinstance(o, SampleError):
                raise o
    return out


def infer_blocks(darray, model="default", *, timeout=None):
    """A dask.array of the outputs of a one-input, one-output registered model over `darray`'s samples along
    axis 0 (each sample the model input's shape, or that shape without its leading 1). One task per block
    along axis 0 (the other axes are merged); a failed sample fails its block with a SampleError.
    Lazy: .compute() it, or client.compute() it, on a cluster where the model is registered."""
    import dask
    import dask.array as da
    name = _name_of(model)
    reg = model if isinstance(model, RegisteredModel) else _registered.get(name)
    if reg is None:
        raise _make_error(ErrorCode.NOT_FOUND, f"model '{name}' is not registered from this client")
    if len(reg.inputs) != 1 or len(reg.outputs) != 1:
        raise _make_error(ErrorCode.INVALID_ARGUMENT,
                          f"infer_blocks needs a model with one input and one output; '{name}' has "
                          f"{len(reg.inputs)} and {len(reg.outputs)}")
    in_shape, out_shape = reg.inputs[0][1], reg.outputs[0][1]
    if darray.ndim < 1 or math.prod(darray.shape[1:]) != math.prod(in_shape):
        raise _make_error(ErrorCode.INVALID_ARGUMENT,
                          f"infer_blocks: samples of shape {tuple(darray.shape[1:])} do not fit input "
                          f"'{reg.inputs[0][0]}' {list(in_shape)}")
    arr = darray.rechunk({i: -1 for i in range(1, darray.ndim)})
    blocks = arr.to_delayed().reshape(-1)
    firsts = np.concatenate([[0], np.cumsum(arr.chunks[0])[:-1]]).astype(int)
    parts = [da.from_delayed(dask.delayed(_run_block, pure=True)(b, name, int(f), timeout),
                             shape=(n,) + tuple(out_shape), dtype=np.float32)
             for b, n, f in zip(blocks, arr.chunks[0], firsts)]
    return da.concatenate(parts, axis=0)


def stats(client, model="default", reset=False):
    """Per-worker counters of a registered model: {address: {samples, errors, batches, busy_s (time with at
    least one batch running), throughput (samples / busy_s), devices, backend}}. reset=True zeroes them after
    reading."""
    name = _name_of(model)
    got = client.run(_stats, name)
    if reset:
        client.run(_reset_stats, name)
    return {w: s for w, s in got.items() if s is not None}
