// SPDX-License-Identifier: MIT
// _vnpu: the extension module behind the `vnpu` Python package (docs/python.md). Thin over libvnpu-runtime
// (CompiledModel, Runtime, AsyncRuntime, Task) and the compiler library (vnpu::compile_onnx); the package's
// Python files add the PyTorch front ends and the asyncio Future type.
//
// Threads and the GIL. No runtime thread ever waits for the GIL: a request's completion (on the runtime's
// "vnpu-callback" thread) stores the C++ result in the request's Core and, if Python code is waiting for it
// (add_done_callback, an asyncio future), hands the Core to one binding thread, "vnpu-py-callback", which
// takes the GIL, converts the outputs, runs the Python callbacks and resolves futures through
// loop.call_soon_threadsafe. Python references that a runtime thread would otherwise drop (the arrays a
// request borrows, a Core with Python state) are queued and released with the GIL. Every blocking call
// (construction, wait, close, compile) releases the GIL. So a runtime can be destroyed, or a Task waited for,
// from a Python callback or from inside the event loop without a lock-order deadlock.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <vnpu/compiler.h>
#include <vnpu/model_file.h>
#include <vnpu/vnpu.h>

namespace py = pybind11;

namespace {

using Clock = std::chrono::steady_clock;

// ---- exceptions -----------------------------------------------------------------------------------------------

PyObject* g_error = nullptr;          // vnpu.Error(Exception)
PyObject* g_timeout_error = nullptr;  // vnpu.TimeoutError(vnpu.Error, builtins.TimeoutError)
PyObject* g_compile_error = nullptr;  // vnpu.CompileError(vnpu.Error)

/// A vnpu.Error instance (class by code unless given) with .code (vnpu.ErrorCode) and .message.
py::object make_error(vnpu::ErrorCode code, const std::string& message, PyObject* cls = nullptr) {
  if (!cls)
    cls = code == vnpu::ErrorCode::kTimeout ? g_timeout_error : g_error;
  py::object e = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", message.c_str()));
  if (!e)
    throw py::error_already_set();
  e.attr("code") = py::cast(code);
  e.attr("message") = py::str(message);
  return e;
}

[[noreturn]] void raise(const py::object& exc) {
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

[[noreturn]] void raise(vnpu::ErrorCode code, const std::string& message) {
  raise(make_error(code, message));
}

// ---- the binding's callback thread ------------------------------------------------------------------------------

/// Runs Python work handed over by runtime threads, with the GIL, on one thread ("vnpu-py-callback").
/// post() and defer_decref() never block and never need the GIL, so runtime threads may call them anywhere.
class Dispatcher {
 public:
  using Item = std::function<void()>;

  void start() {
    std::lock_guard lock(mu_);
    if (started_)
      return;
    started_ = true;
    thread_ = std::thread([this] { loop(); });
  }

  /// Queue `item` to run with the GIL on the callback thread. After stop() the item is leaked on purpose
  /// (destroying it might need the GIL of an interpreter that is going away).
  void post(Item item) {
    {
      std::lock_guard lock(mu_);
      if (!stopped_) {
        items_.push_back(std::move(item));
        cv_.notify_one();
        return;
      }
    }
    new Item(std::move(item));  // NOLINT: intentional leak at interpreter exit
  }

  /// Py_DECREF `o` later, with the GIL (on the callback thread, or in the next run()/wait()).
  void defer_decref(PyObject* o) {
    std::lock_guard lock(mu_);
    decrefs_.push_back(o);
    has_decrefs_ = true;
    if (decrefs_.size() >= 64 && !stopped_)
      cv_.notify_one();
  }

  /// With the GIL: release the deferred references now.
  void drain_decrefs() {
    if (!has_decrefs_.load(std::memory_order_relaxed))
      return;
    std::vector<PyObject*> d;
    {
      std::lock_guard lock(mu_);
      d.swap(decrefs_);
      has_decrefs_ = false;
    }
    for (PyObject* o : d)
      Py_DECREF(o);
  }

  /// With the GIL, on the callback thread: resolve `fut` (a future of `loop`) with `value` (or raise it as an
  /// exception) on its loop. Gathered per loop and sent with one call_soon_threadsafe per batch.
  void resolve_on_loop(py::object loop, py::object fut, py::object value, bool is_error) {
    for (auto& [l, batch] : pending_)
      if (l.is(loop)) {
        batch.append(py::make_tuple(std::move(fut), std::move(value), is_error));
        return;
      }
    py::list batch;
    batch.append(py::make_tuple(std::move(fut), std::move(value), is_error));
    pending_.emplace_back(std::move(loop), std::move(batch));
  }

  /// With the GIL (atexit): process what is queued, then stop the thread.
  void stop() {
    {
      std::lock_guard lock(mu_);
      if (!started_ || stopped_)
        return;
      stop_requested_ = true;
      cv_.notify_one();
    }
    {
      py::gil_scoped_release nogil;
      thread_.join();
    }
    drain_decrefs();
  }

  bool on_callback_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

  py::object resolve_batch_fn;  // _vnpu._resolve_batch, set at module init

 private:
  void loop() {
    pthread_setname_np(pthread_self(), "vnpu-py-callback");
    PyGILState_STATE g = PyGILState_Ensure();
    PyThreadState* ts = PyEval_SaveThread();
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_requested_ || !items_.empty() || decrefs_.size() >= 64; });
      if (stop_requested_ && items_.empty()) {
        stopped_ = true;
        break;
      }
      std::deque<Item> items;
      items.swap(items_);
      lock.unlock();
      PyEval_RestoreThread(ts);
      drain_decrefs();
      for (auto& item : items) {
        item();
        item = nullptr;  // its captures (Python references) go with the GIL held
      }
      flush_loops();
      ts = PyEval_SaveThread();
      lock.lock();
    }
    lock.unlock();
    PyEval_RestoreThread(ts);
    flush_loops();
    PyGILState_Release(g);
  }

  void flush_loops() {
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [loop, batch] : pending) {
      try {
        loop.attr("call_soon_threadsafe")(resolve_batch_fn, batch);
      } catch (py::error_already_set&) {
        // The loop is closed: nobody can await these futures any more.
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  std::vector<PyObject*> decrefs_;
  std::atomic<bool> has_decrefs_{false};
  std::vector<std::pair<py::object, py::list>> pending_;  // callback thread, GIL
  std::thread thread_;
  bool started_ = false, stop_requested_ = false, stopped_ = false;
};

// Never destroyed: runtime threads may still post at exit. Replaced (the old one leaked) in a forked child.
Dispatcher* g_dispatcher = new Dispatcher;

Dispatcher& dispatcher() {
  return *g_dispatcher;
}

/// Releases a Python reference from any thread: now if this thread holds the GIL, else deferred.
void release_ref(PyObject* o) {
  if (PyGILState_Check()) {
    Py_DECREF(o);
    return;
  }
  dispatcher().defer_decref(o);
}

// ---- tensors ----------------------------------------------------------------------------------------------------

// Module-lifetime references, never released (no destructor may run after the interpreter is gone).
py::handle g_numpy, g_torch_from_numpy, g_torch_tensor_type;

bool is_torch_tensor(const py::handle& o) {
  if (!g_torch_tensor_type) {
    // Only look if torch was imported by someone: the binding never imports it itself for numpy users.
    py::dict modules = py::module_::import("sys").attr("modules");
    if (!modules.contains("torch"))
      return false;
    py::module_ torch = modules["torch"];
    g_torch_tensor_type = py::object(torch.attr("Tensor")).release();
    g_torch_from_numpy = py::object(torch.attr("from_numpy")).release();
  }
  return py::isinstance(o, g_torch_tensor_type);
}

/// One model input from a Python object: a C-contiguous float32 numpy array (or torch CPU tensor) is borrowed
/// (zero-copy; the array is kept alive until the runtime no longer reads it); other numeric arrays are
/// converted once; anything else is rejected.
vnpu::Tensor to_tensor(py::handle obj, size_t index, const vnpu::TensorInfo* info) {
  auto what = [&] { return "input " + std::to_string(index) + (info ? " ('" + info->name + "')" : std::string()); };
  py::object o = py::reinterpret_borrow<py::object>(obj);
  if (is_torch_tensor(o)) {
    if (o.attr("is_cuda").cast<bool>())
      raise(vnpu::ErrorCode::kInvalidArgument, what() + " is a CUDA tensor; vnpu takes CPU tensors");
    o = o.attr("detach")().attr("numpy")();  // shares the tensor's memory
  }
  if (!py::isinstance<py::array>(o)) {
    try {
      o = g_numpy.attr("asarray")(o);
    } catch (py::error_already_set& e) {
      raise(vnpu::ErrorCode::kInvalidArgument,
            what() + " is a " + std::string(py::str(obj.get_type().attr("__name__"))) +
                ", not an array: pass a numpy array (or a torch tensor with tensor_type=\"pt\")");
    }
  }
  py::array a = o;
  const char kind = a.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
    raise(vnpu::ErrorCode::kInvalidArgument, what() + " has dtype " + std::string(py::str(a.dtype())) +
                                                 ", which does not convert to float32 (vnpu runs float32 models)");
  const bool direct = a.dtype().is(py::dtype::of<float>()) || a.dtype().equal(py::dtype::of<float>());
  if (!direct || !(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!a)
    raise(vnpu::ErrorCode::kInvalidArgument, what() + " cannot be converted to a float32 array");
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  const auto* data = static_cast<const float*>(a.data());
  PyObject* ref = a.inc_ref().ptr();
  std::shared_ptr<const void> owner(ref,
                                    [](const void* p) { release_ref(static_cast<PyObject*>(const_cast<void*>(p))); });
  return vnpu::Tensor::borrow(std::move(shape), std::span<const float>(data, static_cast<size_t>(a.size())),
                              std::move(owner));
}

vnpu::Inputs to_inputs(const py::args& args, const vnpu::CompiledModel& model) {
  const auto& infos = model.inputs();
  if (args.size() != infos.size())
    raise(vnpu::ErrorCode::kInvalidArgument,
          "the model takes " + std::to_string(infos.size()) + " input(s), got " + std::to_string(args.size()));
  vnpu::Inputs inputs;
  inputs.reserve(args.size());
  for (size_t i = 0; i < args.size(); ++i)
    inputs.push_back(to_tensor(args[i], i, &infos[i]));
  return inputs;
}

/// An output tensor as a numpy array (or torch tensor) over its own buffer: no copy, the array owns it.
py::object to_python(vnpu::Tensor&& t, bool torch) {
  auto* owned = new vnpu::Tensor(std::move(t));
  py::capsule cap(owned, [](void* p) { delete static_cast<vnpu::Tensor*>(p); });
  std::vector<py::ssize_t> shape(owned->shape().begin(), owned->shape().end());
  py::array_t<float> a(shape, owned->data().data(), cap);
  if (torch)
    return g_torch_from_numpy(a);
  return a;
}

py::object outputs_to_python(vnpu::Outputs&& out, bool torch) {
  if (torch && !g_torch_from_numpy)
    (void)is_torch_tensor(py::none());
  if (torch && !g_torch_from_numpy)
    raise(vnpu::ErrorCode::kInvalidArgument, "tensor_type=\"pt\" needs torch (import torch first)");
  if (out.tensors.size() == 1)
    return to_python(std::move(out.tensors[0]), torch);
  py::list l;
  for (auto& t : out.tensors)
    l.append(to_python(std::move(t), torch));
  return l;
}

// ---- timings ----------------------------------------------------------------------------------------------------

int64_t ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// ---- models -----------------------------------------------------------------------------------------------------

/// A compiled model plus the `.vnpu` bytes it came from (for save()).
struct PyModel {
  vnpu::CompiledModel model;
  std::shared_ptr<const std::vector<uint8_t>> bytes;  // null for synthetic models
};

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f)
    raise(vnpu::ErrorCode::kNotFound, "cannot open '" + path + "': no such file or not readable");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad())
    raise(vnpu::ErrorCode::kIo, "reading '" + path + "' failed");
  return bytes;
}

PyModel model_from_bytes(std::vector<uint8_t> bytes, const std::string& what) {
  auto shared = std::make_shared<const std::vector<uint8_t>>(std::move(bytes));
  std::optional<vnpu::CompiledModel> m;
  {
    py::gil_scoped_release nogil;
    m.emplace(vnpu::CompiledModel::from_memory(*shared, what));
  }
  return PyModel{std::move(*m), std::move(shared)};
}

PyModel load_model(const std::string& path) {
  return model_from_bytes(read_file(path), path);
}

PyModel model_arg(const py::object& o) {
  if (py::isinstance<PyModel>(o))
    return o.cast<PyModel>();
  if (py::isinstance<py::str>(o) || py::hasattr(o, "__fspath__"))
    return load_model(py::str(py::module_::import("os").attr("fspath")(o)));
  raise(vnpu::ErrorCode::kInvalidArgument, "expected a vnpu.CompiledModel or a path to a .vnpu file, got " +
                                               std::string(py::str(o.get_type().attr("__name__"))));
}

// ---- options ----------------------------------------------------------------------------------------------------

template <class T>
T kw(const py::handle& v, const char* name, const char* type) {
  try {
    return v.cast<T>();
  } catch (const py::cast_error&) {
    raise(vnpu::ErrorCode::kInvalidArgument, std::string("option ") + name + " must be " + type + ", got " +
                                                 std::string(py::str(v.get_type().attr("__name__"))));
  }
}

struct ParsedOptions {
  vnpu::RuntimeOptions opt;
  bool torch = false;
};

/// RuntimeOptions from keywords (docs/python.md lists them); unknown names are errors, None means default.
ParsedOptions parse_options(const py::kwargs& kwargs) {
  ParsedOptions p;
  vnpu::RuntimeOptions& o = p.opt;
  for (auto [k, v] : kwargs) {
    const std::string name = py::str(k);
    if (name == "tensor_type") {
      const std::string t = v.is_none() ? "np" : kw<std::string>(v, "tensor_type", "\"np\" or \"pt\"");
      if (t != "np" && t != "pt")
        raise(vnpu::ErrorCode::kInvalidArgument, "tensor_type is \"np\" (numpy) or \"pt\" (torch), got \"" + t + "\"");
      p.torch = t == "pt";
      if (p.torch) {
        try {
          py::module_::import("torch");  // outputs become torch tensors: make sure torch is there
        } catch (py::error_already_set&) {
          raise(vnpu::ErrorCode::kNotFound, "tensor_type=\"pt\" needs PyTorch (Debian: python3-torch)");
        }
        (void)is_torch_tensor(py::none());
      }
      continue;
    }
    if (v.is_none())
      continue;  // the default
    if (name == "backend") {
      o.backend = kw<std::string>(v, "backend", "\"sim\", \"kernel\" or None");
    } else if (name == "device") {
      o.device = kw<int>(v, "device", "an int");
    } else if (name == "devices") {
      o.devices = kw<std::vector<int>>(v, "devices", "a list of ints");
    } else if (name == "placement") {
      const std::string s = kw<std::string>(v, "placement", "\"least-loaded\" or \"round-robin\"");
      if (s == "least-loaded")
        o.placement = vnpu::Placement::kLeastLoaded;
      else if (s == "round-robin")
        o.placement = vnpu::Placement::kRoundRobin;
      else
        raise(vnpu::ErrorCode::kInvalidArgument, "placement is \"least-loaded\" or \"round-robin\", got \"" + s + "\"");
    } else if (name == "parallel") {
      o.parallel = kw<int>(v, "parallel", "an int");
    } else if (name == "max_in_flight") {
      o.max_in_flight = kw<int>(v, "max_in_flight", "an int");
    } else if (name == "staging_buffers") {
      o.staging_buffers = kw<int>(v, "staging_buffers", "an int");
    } else if (name == "timeout") {
      const double s = kw<double>(v, "timeout", "a number of seconds or None");
      if (!(s > 0) || !std::isfinite(s) || s > 1e9)
        raise(vnpu::ErrorCode::kInvalidArgument, "timeout is a number of seconds > 0, or None for no limit");
      o.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(s * 1000.0)));
    } else if (name == "submit_mode") {
      const std::string s = kw<std::string>(v, "submit_mode", "\"uring\" or \"ioctl\"");
      if (s == "uring")
        o.submit_mode = vnpu::SubmitMode::kUring;
      else if (s == "ioctl")
        o.submit_mode = vnpu::SubmitMode::kIoctl;
      else
        raise(vnpu::ErrorCode::kInvalidArgument, "submit_mode is \"uring\" or \"ioctl\", got \"" + s + "\"");
    } else if (name == "priority") {
      o.priority = kw<int>(v, "priority", "an int 0..3 or None");
    } else if (name == "timing_only") {
      o.timing_only = kw<bool>(v, "timing_only", "a bool");
    } else {
      raise(vnpu::ErrorCode::kInvalidArgument,
            "unknown option '" + name +
                "' (options: backend, device, devices, placement, parallel, max_in_flight, staging_buffers, "
                "timeout, submit_mode, priority, timing_only, tensor_type)");
    }
  }
  return p;
}

py::dict options_to_dict(const vnpu::RuntimeOptions& o, bool torch) {
  py::dict d;
  d["backend"] = o.backend;
  d["device"] = o.device;
  d["devices"] = o.devices;
  d["placement"] = o.placement == vnpu::Placement::kRoundRobin ? "round-robin" : "least-loaded";
  d["parallel"] = o.parallel;
  d["max_in_flight"] = o.max_in_flight;
  d["staging_buffers"] = o.staging_buffers;
  d["timeout"] = o.timeout.count() ? py::object(py::float_(o.timeout.count() / 1000.0)) : py::object(py::none());
  d["submit_mode"] = o.submit_mode == vnpu::SubmitMode::kIoctl ? "ioctl" : "uring";
  d["priority"] = o.priority;
  d["timing_only"] = o.timing_only;
  d["tensor_type"] = torch ? "pt" : "np";
  return d;
}

// ---- requests ---------------------------------------------------------------------------------------------------

/// The state of one request shared by its vnpu.Task, the runtime's completion handler and the callback
/// thread. C++ members are guarded by `mu`; Python members are touched with the GIL only, and the Core is
/// destroyed with the GIL (see CoreDeleter).
struct Core {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;            // the C++ result is in
  bool wants_dispatch = false;  // Python callbacks or a future wait for it: the callback thread resolves them
  std::optional<vnpu::Outputs> outputs;
  std::optional<vnpu::Error> error;
  std::function<bool()> cancel;
  bool torch = false;
  std::optional<vnpu::RequestTimings> timings;
  // GIL:
  bool converted = false;
  py::object result, exception;
  std::vector<std::pair<py::object, py::object>> callbacks;  // (fn, task)
  py::object future, loop;

  bool has_python() const { return result || exception || !callbacks.empty() || future || loop; }
};

struct CoreDeleter {
  void operator()(Core* c) const {
    if (!c->has_python() || PyGILState_Check())
      delete c;
    else
      dispatcher().post([c] { delete c; });
  }
};

/// With the GIL: the request's Python result (converted once) — the outputs, or a vnpu.Error instance.
void convert(Core& c) {
  if (c.converted)
    return;
  if (c.error) {
    c.exception = make_error(c.error->code(), c.error->what());
  } else {
    try {
      c.result = outputs_to_python(std::move(*c.outputs), c.torch);
    } catch (py::error_already_set& e) {
      c.exception = e.value();
    }
    c.outputs.reset();
  }
  c.converted = true;
}

void call_callback(const py::object& fn, const py::object& task) {
  try {
    fn(task);
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable(fn);
  }
}

/// With the GIL, on the callback thread: hand the result to the future and the callbacks.
void resolve_python(Core& c) {
  convert(c);
  if (c.future) {
    const bool is_error = !c.result;
    dispatcher().resolve_on_loop(std::move(c.loop), std::move(c.future), is_error ? c.exception : c.result, is_error);
    c.loop = py::object();
    c.future = py::object();
  }
  auto callbacks = std::move(c.callbacks);
  c.callbacks.clear();
  for (auto& [fn, task] : callbacks)
    call_callback(fn, task);
}

/// vnpu.Task: the handle of one request (AsyncRuntime.run()).
struct PyTask {
  std::shared_ptr<Core> core;
  py::object runtime;  // keeps the runtime alive while its tasks are referenced
};

std::shared_ptr<Core> start_request(vnpu::AsyncRuntime& rt, vnpu::Inputs inputs, bool torch) {
  std::shared_ptr<Core> core(new Core, CoreDeleter{});
  core->torch = torch;
  std::optional<vnpu::Task<vnpu::Outputs>> task;
  {
    py::gil_scoped_release nogil;
    task.emplace(rt.run(std::move(inputs)));
  }
  core->cancel = task->canceller();
  // Runs on vnpu-callback (or here, if already resolved): never takes the GIL.
  std::move(*task).on_complete([c = core](vnpu::Result<vnpu::Outputs> r) mutable {
    bool dispatch;
    {
      std::lock_guard lock(c->mu);
      if (r.ok()) {
        c->timings = r.value().timings;
        c->outputs.emplace(std::move(r).value());
      } else {
        c->error.emplace(std::move(r).error());
      }
      c->done = true;
      dispatch = c->wants_dispatch;
      c->cv.notify_all();
    }
    if (dispatch)
      dispatcher().post([c = std::move(c)] { resolve_python(*c); });
    else
      c.reset();
  });
  return core;
}

/// Waits (GIL released, in slices so that Ctrl-C is seen) for the request; false on timeout.
bool wait_core(Core& c, std::optional<double> timeout) {
  const auto deadline = timeout ? Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                     std::chrono::duration<double>(std::max(0.0, *timeout)))
                                : Clock::time_point::max();
  for (;;) {
    {
      py::gil_scoped_release nogil;
      std::unique_lock lock(c.mu);
      const auto slice = std::min(deadline, Clock::now() + std::chrono::milliseconds(200));
      if (c.cv.wait_until(lock, slice, [&] { return c.done; }))
        return true;
      if (Clock::now() >= deadline)
        return false;
    }
    if (PyErr_CheckSignals() != 0)
      throw py::error_already_set();
  }
}

py::object task_wait(PyTask& t, std::optional<double> timeout, bool want_exception) {
  if (!wait_core(*t.core, timeout)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", *timeout);
    raise(vnpu::ErrorCode::kTimeout, std::string("vnpu.Task.wait: the request is not done after ") + buf +
                                         " s (it keeps running: wait again, or cancel() it)");
  }
  dispatcher().drain_decrefs();
  convert(*t.core);
  if (want_exception)
    return t.core->exception ? t.core->exception : py::object(py::none());
  if (t.core->exception)
    raise(t.core->exception);
  return t.core->result;
}

bool task_done(PyTask& t) {
  std::lock_guard lock(t.core->mu);
  return t.core->done;
}

// ---- runtimes ---------------------------------------------------------------------------------------------------

struct PyAsyncRuntime;
struct PyRuntime;
std::set<PyAsyncRuntime*> g_async_runtimes;  // GIL: closed at interpreter exit
std::set<PyRuntime*> g_runtimes;

[[noreturn]] void raise_closed(const char* what) {
  raise(vnpu::ErrorCode::kAborted, std::string(what) + " is closed (close() or a with-block ended); create a new one");
}

/// Destroys `rt` with the GIL released: ~AsyncRuntime waits for the requests on the device.
template <class R>
void destroy_released(std::shared_ptr<R>& rt) {
  auto victim = std::move(rt);
  py::gil_scoped_release nogil;
  victim.reset();
}

struct PyAsyncRuntime {
  std::shared_ptr<vnpu::AsyncRuntime> rt;
  PyModel model;
  bool torch = false;

  PyAsyncRuntime(const py::object& model_or_path, const py::kwargs& kwargs) : model(model_arg(model_or_path)) {
    auto p = parse_options(kwargs);
    torch = p.torch;
    {
      py::gil_scoped_release nogil;
      rt = std::make_shared<vnpu::AsyncRuntime>(model.model, std::move(p.opt));
    }
    g_async_runtimes.insert(this);
  }
  ~PyAsyncRuntime() {
    g_async_runtimes.erase(this);
    close();
  }
  void close() {
    if (rt)
      destroy_released(rt);
  }
  std::shared_ptr<vnpu::AsyncRuntime> get() const {
    if (!rt)
      raise_closed("vnpu.AsyncRuntime");
    return rt;
  }
};

struct PyRuntime {
  std::shared_ptr<vnpu::Runtime> rt;
  PyModel model;
  bool torch = false;
  std::optional<vnpu::RequestTimings> last_timings;

  PyRuntime(const py::object& model_or_path, const py::kwargs& kwargs) : model(model_arg(model_or_path)) {
    auto p = parse_options(kwargs);
    torch = p.torch;
    {
      py::gil_scoped_release nogil;
      rt = std::make_shared<vnpu::Runtime>(model.model, std::move(p.opt));
    }
    g_runtimes.insert(this);
  }
  ~PyRuntime() {
    g_runtimes.erase(this);
    close();
  }
  void close() {
    if (rt)
      destroy_released(rt);
  }
};

py::handle g_future_cls;  // vnpu.RequestFuture, set by the package

py::object make_task(const py::object& self, std::shared_ptr<Core> core) {
  return py::cast(PyTask{std::move(core), self});
}

py::object async_run(const py::object& self, const py::args& args) {
  auto& r = self.cast<PyAsyncRuntime&>();
  static py::handle get_running_loop = py::object(py::module_::import("asyncio").attr("get_running_loop")).release();
  py::object loop;
  try {
    loop = get_running_loop();
  } catch (py::error_already_set&) {
    raise(vnpu::ErrorCode::kInvalidArgument,
          "AsyncRuntime.async_run() needs a running asyncio event loop (call it from a coroutine); elsewhere "
          "use run(), which returns a vnpu.Task");
  }
  if (!g_future_cls)
    raise(vnpu::ErrorCode::kInternal, "vnpu.RequestFuture is not registered (import vnpu, not vnpu._vnpu)");
  auto rt = r.get();
  dispatcher().drain_decrefs();
  auto core = start_request(*rt, to_inputs(args, rt->model()), r.torch);
  py::object task = make_task(self, core);
  py::object fut = g_future_cls(py::arg("loop") = loop);
  fut.attr("_vnpu_task") = task;
  bool done;
  {
    std::lock_guard lock(core->mu);
    done = core->done;
    if (!done) {
      core->future = fut;
      core->loop = loop;
      core->wants_dispatch = true;
    }
  }
  if (done) {  // resolved already (e.g. a device error at once): we are on the loop's thread
    convert(*core);
    if (core->exception)
      fut.attr("set_exception")(core->exception);
    else
      fut.attr("set_result")(core->result);
  }
  return fut;
}

py::dict device_info_dict(const vnpu::DeviceInfo& d) {
  py::dict r;
  r["backend"] = d.backend;
  r["name"] = d.name;
  r["device_version"] = d.device_version;
  r["caps"] = d.caps;
  r["devmem_size"] = d.devmem_size;
  r["submit_path"] = d.submit_path;
  r["h2d_mbps"] = d.h2d_mbps;
  r["d2h_mbps"] = d.d2h_mbps;
  r["compute_gflops"] = d.compute_gflops;
  r["compute_cores"] = d.compute_cores;
  r["cmd_overhead_ns"] = d.cmd_overhead_ns;
  r["h2d_latency_ns"] = d.h2d_latency_ns;
  r["d2h_latency_ns"] = d.d2h_latency_ns;
  r["timestamps"] = d.timestamps;
  r["timing_only"] = d.timing_only;
  return r;
}

py::object timings_or_none(const std::optional<vnpu::RequestTimings>& t) {
  if (!t)
    return py::none();
  return py::cast(*t);
}

}  // namespace

PYBIND11_MODULE(_vnpu, m) {
  m.doc() = "vnpu extension module (use the `vnpu` package)";
  g_numpy = py::module_::import("numpy").release();

  py::enum_<vnpu::ErrorCode>(m, "ErrorCode", "What kind of failure a vnpu.Error reports (vnpu::ErrorCode)")
      .value("INVALID_ARGUMENT", vnpu::ErrorCode::kInvalidArgument)
      .value("NOT_FOUND", vnpu::ErrorCode::kNotFound)
      .value("PERMISSION_DENIED", vnpu::ErrorCode::kPermissionDenied)
      .value("OUT_OF_MEMORY", vnpu::ErrorCode::kOutOfMemory)
      .value("UNSUPPORTED", vnpu::ErrorCode::kUnsupported)
      .value("DEVICE_FAULT", vnpu::ErrorCode::kDeviceFault)
      .value("ABORTED", vnpu::ErrorCode::kAborted)
      .value("IO", vnpu::ErrorCode::kIo)
      .value("INTERNAL", vnpu::ErrorCode::kInternal)
      .value("TIMEOUT", vnpu::ErrorCode::kTimeout)
      .value("CANCELLED", vnpu::ErrorCode::kCancelled)
      .value("DEVICE_HANG", vnpu::ErrorCode::kDeviceHang)
      .value("CORRUPT_COMPLETION", vnpu::ErrorCode::kCorruptCompletion)
      .value("INTERRUPTED", vnpu::ErrorCode::kInterrupted)
      .value("DEVICE_LOST", vnpu::ErrorCode::kDeviceLost);

  g_error = PyErr_NewExceptionWithDoc("vnpu.Error",
                                      "A vnpu failure: .code (vnpu.ErrorCode) and .message say what failed and what "
                                      "to do.",
                                      PyExc_Exception, nullptr);
  {
    py::tuple bases = py::make_tuple(py::handle(g_error), py::handle(PyExc_TimeoutError));
    g_timeout_error = PyErr_NewExceptionWithDoc(
        "vnpu.TimeoutError", "A request or a wait ran out of time (code TIMEOUT); also a builtin TimeoutError.",
        bases.ptr(), nullptr);
    g_compile_error = PyErr_NewExceptionWithDoc(
        "vnpu.CompileError", "The compiler rejected the model (names the node and op, or the input).", g_error,
        nullptr);
  }
  m.attr("Error") = py::handle(g_error);
  m.attr("TimeoutError") = py::handle(g_timeout_error);
  m.attr("CompileError") = py::handle(g_compile_error);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const vnpu::Error& e) {
      py::object exc = make_error(e.code(), e.what());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    } catch (const vnpu::CompileError& e) {
      py::object exc = make_error(vnpu::ErrorCode::kInvalidArgument, e.what(), g_compile_error);
      PyErr_SetObject(g_compile_error, exc.ptr());
    } catch (const vnpu::FormatError& e) {
      py::object exc = make_error(vnpu::ErrorCode::kInvalidArgument, e.what());
      PyErr_SetObject(g_error, exc.ptr());
    }
  });

  py::class_<vnpu::TensorInfo>(m, "TensorInfo", "A model input or output: name, shape, dtype, size_bytes")
      .def_readonly("name", &vnpu::TensorInfo::name)
      .def_property_readonly("shape",
                             [](const vnpu::TensorInfo& t) {
                               py::tuple s(t.shape.size());
                               for (size_t i = 0; i < t.shape.size(); ++i)
                                 s[i] = t.shape[i];
                               return s;
                             })
      .def_property_readonly("dtype", [](const vnpu::TensorInfo&) { return py::dtype::of<float>(); })
      .def_readonly("size_bytes", &vnpu::TensorInfo::size_bytes)
      .def("__iter__",  // name, shape, dtype = info (the seed's input_info triple)
           [](const py::object& self) {
             return py::iter(py::make_tuple(self.attr("name"), self.attr("shape"), self.attr("dtype")));
           })
      .def("__repr__", [](const vnpu::TensorInfo& t) {
        return "TensorInfo(name='" + t.name + "', shape=" + vnpu::shape_string(t.shape) + ", dtype=float32)";
      });

  py::class_<vnpu::RequestTimings>(m, "RequestTimings",
                                   "Where one request spent its time (ns). Host times on CLOCK_MONOTONIC; h2d_ns, "
                                   "compute_ns, d2h_ns are the device's modelled engine busy times.")
      .def_property_readonly("total_ns", [](const vnpu::RequestTimings& t) { return ns(t.total()); })
      .def_property_readonly("queue_ns", [](const vnpu::RequestTimings& t) { return ns(t.prep_start - t.enqueued); })
      .def_property_readonly("prep_ns", [](const vnpu::RequestTimings& t) { return ns(t.prep()); })
      .def_property_readonly("post_ns", [](const vnpu::RequestTimings& t) { return ns(t.resolved - t.completed); })
      .def_readonly("h2d_ns", &vnpu::RequestTimings::h2d_ns)
      .def_readonly("compute_ns", &vnpu::RequestTimings::compute_ns)
      .def_readonly("d2h_ns", &vnpu::RequestTimings::d2h_ns)
      .def_property_readonly("device_ns",
                             [](const vnpu::RequestTimings& t) -> py::object {
                               auto d = t.device();
                               return d ? py::object(py::int_(d->count())) : py::object(py::none());
                             })
      .def_readonly("device_index", &vnpu::RequestTimings::device_index)
      .def_readonly("prep_thread", &vnpu::RequestTimings::prep_thread)
      .def("as_dict",
           [](const py::object& self) {
             py::dict d;
             for (const char* k : {"total_ns", "queue_ns", "prep_ns", "post_ns", "h2d_ns", "compute_ns", "d2h_ns",
                                   "device_ns", "device_index", "prep_thread"})
               d[k] = self.attr(k);
             return d;
           })
      .def("__repr__", [](const vnpu::RequestTimings& t) {
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "RequestTimings(total=%.3f ms, prep=%.3f ms, h2d=%.3f ms, compute=%.3f ms, d2h=%.3f ms)",
                      ns(t.total()) / 1e6, ns(t.prep()) / 1e6, t.h2d_ns / 1e6, t.compute_ns / 1e6, t.d2h_ns / 1e6);
        return std::string(buf);
      });

  py::class_<PyModel>(m, "CompiledModel",
                      "A model ready to run: vnpu.CompiledModel(path) loads a .vnpu file; vnpu.compile_from_*() "
                      "make one. Immutable; shareable between runtimes and threads.")
      .def(py::init([](const py::object& path) { return model_arg(path); }), py::arg("path"))
      .def_static(
          "load", [](const py::object& path) { return model_arg(path); }, py::arg("path"),
          "Load a .vnpu file (vnpu.Error NOT_FOUND / INVALID_ARGUMENT)")
      .def_static(
          "from_bytes",
          [](const py::bytes& b) {
            std::string_view v = b;
            return model_from_bytes(std::vector<uint8_t>(v.begin(), v.end()), "bytes");
          },
          py::arg("data"), "Parse .vnpu bytes")
      .def_static(
          "synthetic",
          [](double prep_ms, uint64_t input_bytes, double compute_ms, uint64_t output_bytes) {
            vnpu::SyntheticSpec s;
            s.host_prep = std::chrono::nanoseconds(static_cast<int64_t>(prep_ms * 1e6));
            s.input_bytes = input_bytes;
            s.compute = std::chrono::nanoseconds(static_cast<int64_t>(compute_ms * 1e6));
            s.output_bytes = output_bytes;
            return PyModel{vnpu::CompiledModel::synthetic(s), nullptr};
          },
          py::kw_only(), py::arg("prep_ms") = 0.0, py::arg("input_bytes") = 4, py::arg("compute_ms") = 0.001,
          py::arg("output_bytes") = 4,
          "A synthetic model (input x, output y, f32[1]) with known stage times, as vnpu-bench --synthetic")
      .def_property_readonly("inputs", [](const PyModel& p) { return p.model.inputs(); })
      .def_property_readonly("outputs", [](const PyModel& p) { return p.model.outputs(); })
      .def_property_readonly("kind", [](const PyModel& p) { return std::string(p.model.kind()); })
      .def_property_readonly("device_bytes_per_request",
                             [](const PyModel& p) { return p.model.device_bytes_per_request(); })
      .def_property_readonly("device_bytes_shared", [](const PyModel& p) { return p.model.device_bytes_shared(); })
      .def("describe", [](const PyModel& p) { return p.model.describe(); })
      .def("to_bytes",
           [](const PyModel& p) {
             if (!p.bytes)
               raise(vnpu::ErrorCode::kUnsupported, "a " + std::string(p.model.kind()) + " model has no .vnpu form");
             return py::bytes(reinterpret_cast<const char*>(p.bytes->data()), p.bytes->size());
           })
      .def(
          "save",
          [](const PyModel& p, const py::object& path_obj) {
            if (!p.bytes)
              raise(vnpu::ErrorCode::kUnsupported,
                    "a " + std::string(p.model.kind()) + " model has no .vnpu form to save");
            const std::string path = py::str(py::module_::import("os").attr("fspath")(path_obj));
            const std::string tmp = path + ".tmp";
            {
              std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
              if (!f)
                raise(vnpu::ErrorCode::kIo, "cannot write '" + tmp + "'");
              f.write(reinterpret_cast<const char*>(p.bytes->data()), static_cast<std::streamsize>(p.bytes->size()));
              if (!f.flush())
                raise(vnpu::ErrorCode::kIo, "writing '" + tmp + "' failed (disk full?)");
            }
            if (std::rename(tmp.c_str(), path.c_str()) != 0)
              raise(vnpu::ErrorCode::kIo, "cannot rename '" + tmp + "' to '" + path + "'");
          },
          py::arg("path"), "Write the model as a .vnpu file (atomically: temp file + rename)")
      .def("__repr__", [](const PyModel& p) {
        std::string s = "CompiledModel(" + std::string(p.model.kind()) + ", inputs=[";
        for (size_t i = 0; i < p.model.inputs().size(); ++i)
          s += (i ? ", " : "") + p.model.inputs()[i].name + vnpu::shape_string(p.model.inputs()[i].shape);
        s += "], outputs=[";
        for (size_t i = 0; i < p.model.outputs().size(); ++i)
          s += (i ? ", " : "") + p.model.outputs()[i].name + vnpu::shape_string(p.model.outputs()[i].shape);
        return s + "])";
      });

  m.def(
      "_compile_onnx",
      [](const py::bytes& onnx, const std::vector<std::pair<std::string, std::vector<int64_t>>>& inputs) {
        std::string_view v = onnx;
        vnpu::CompileOptions opt;
        for (const auto& [name, shape] : inputs) {
          for (int64_t d : shape)
            if (d < 1)
              raise(vnpu::ErrorCode::kInvalidArgument, "input_info: input '" + name + "' has shape " +
                                                           vnpu::shape_string(shape) +
                                                           "; every dimension must be >= 1");
          opt.inputs.push_back({name, shape, 0});
        }
        std::vector<uint8_t> bytes;
        {
          py::gil_scoped_release nogil;
          vnpu::ModelFile f =
              vnpu::compile_onnx(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size()), opt);
          bytes = f.serialize();
        }
        return model_from_bytes(std::move(bytes), "compiled model");
      },
      py::arg("onnx"), py::arg("inputs"));
  m.def("supported_onnx_ops", &vnpu::supported_onnx_ops, "ONNX op types the compiler accepts");

  py::class_<PyTask>(m, "Task",
                     "One request of AsyncRuntime.run(): wait(timeout=None), done(), cancel(), "
                     "add_done_callback(fn), timings. Any thread.")
      .def(
          "wait", [](PyTask& t, std::optional<double> timeout) { return task_wait(t, timeout, false); },
          py::arg("timeout") = py::none(),
          "Block (GIL released) until done; return the outputs or raise vnpu.Error. Raises vnpu.TimeoutError if "
          "not done within `timeout` s (the request keeps running). May be called again.")
      .def(
          "result", [](PyTask& t, std::optional<double> timeout) { return task_wait(t, timeout, false); },
          py::arg("timeout") = py::none(), "wait()")
      .def(
          "exception", [](PyTask& t, std::optional<double> timeout) { return task_wait(t, timeout, true); },
          py::arg("timeout") = py::none(), "Wait, then return the request's vnpu.Error or None")
      .def("done", &task_done, "True once the result (or error) is available; never blocks")
      .def(
          "cancel",
          [](PyTask& t) {
            auto cancel = t.core->cancel;
            py::gil_scoped_release nogil;
            return cancel ? cancel() : false;
          },
          "Best-effort cancel: True if the request will fail with ErrorCode.CANCELLED")
      .def("cancelled",
           [](PyTask& t) {
             std::lock_guard lock(t.core->mu);
             return t.core->done && t.core->error && t.core->error->code() == vnpu::ErrorCode::kCancelled;
           })
      .def(
          "add_done_callback",
          [](const py::object& self, const py::object& fn) {
            auto& t = self.cast<PyTask&>();
            {
              std::lock_guard lock(t.core->mu);
              if (!t.core->done) {
                t.core->callbacks.emplace_back(fn, self);
                t.core->wants_dispatch = true;
                return;
              }
            }
            convert(*t.core);
            call_callback(fn, self);
          },
          py::arg("fn"),
          "Call fn(task) once the request is done: on the binding's 'vnpu-py-callback' thread, or right here if "
          "it is done already. Exceptions fn raises are reported with sys.unraisablehook.")
      .def_property_readonly("timings",
                             [](PyTask& t) {
                               std::lock_guard lock(t.core->mu);
                               return timings_or_none(t.core->timings);
                             })
      .def("__repr__", [](PyTask& t) {
        std::lock_guard lock(t.core->mu);
        if (!t.core->done)
          return std::string("<vnpu.Task pending>");
        if (t.core->error)
          return std::string("<vnpu.Task failed: ") + vnpu::error_code_name(t.core->error->code()) + ">";
        return std::string("<vnpu.Task done>");
      });

  py::class_<PyAsyncRuntime>(m, "AsyncRuntime",
                             "Runs a model with several requests in flight (vnpu::AsyncRuntime). "
                             "AsyncRuntime(model_or_path, **options): every RuntimeOptions field as a keyword, "
                             "plus tensor_type=\"np\"|\"pt\".")
      .def(py::init([](const py::object& m, const py::kwargs& kw) { return new PyAsyncRuntime(m, kw); }),
           py::arg("model_or_path"))
      .def(
          "run",
          [](const py::object& self, const py::args& args) {
            auto& r = self.cast<PyAsyncRuntime&>();
            auto rt = r.get();
            dispatcher().drain_decrefs();
            return make_task(self, start_request(*rt, to_inputs(args, rt->model()), r.torch));
          },
          "Start one inference; returns a vnpu.Task. Raises vnpu.Error at once for wrong inputs.")
      .def("async_run", &async_run,
           "Start one inference; returns an asyncio future of the running loop (await it). Cancelling the future "
           "cancels the request.")
      .def("close", &PyAsyncRuntime::close,
           "Stop: requests not yet started fail with CANCELLED, those on the device finish; waits for them (GIL "
           "released). Idempotent.")
      .def_property_readonly("closed", [](const PyAsyncRuntime& r) { return !r.rt; })
      .def_property_readonly("model", [](const PyAsyncRuntime& r) { return r.model; })
      .def_property_readonly("options",
                             [](const PyAsyncRuntime& r) { return options_to_dict(r.get()->options(), r.torch); })
      .def_property_readonly("device_name", [](const PyAsyncRuntime& r) { return r.get()->device_info().name; })
      .def_property_readonly("backend", [](const PyAsyncRuntime& r) { return r.get()->device_info().backend; })
      .def_property_readonly(
          "device_info", [](const PyAsyncRuntime& r) { return device_info_dict(r.get()->device_info()); },
          "The first device: backend, name, timing model (vnpu::DeviceInfo) as a dict")
      .def("__enter__", [](const py::object& self) { return self; })
      .def("__exit__", [](PyAsyncRuntime& r, const py::args&) { r.close(); });

  py::class_<PyRuntime>(m, "Runtime",
                        "The synchronous runtime (vnpu::Runtime): run(*inputs) returns the outputs. Options as "
                        "AsyncRuntime (parallel and max_in_flight are ignored). Thread-safe (calls serialised).")
      .def(py::init([](const py::object& m, const py::kwargs& kw) { return new PyRuntime(m, kw); }),
           py::arg("model_or_path"))
      .def(
          "run",
          [](PyRuntime& r, const py::args& args) {
            if (!r.rt)
              raise_closed("vnpu.Runtime");
            auto rt = r.rt;
            dispatcher().drain_decrefs();
            auto inputs = to_inputs(args, rt->model());
            std::optional<vnpu::Outputs> out;
            {
              py::gil_scoped_release nogil;
              out.emplace(rt->run(std::move(inputs)));
            }
            dispatcher().drain_decrefs();
            r.last_timings = out->timings;
            return outputs_to_python(std::move(*out), r.torch);
          },
          "Run one inference (GIL released) and return its outputs; raises vnpu.Error.")
      .def_property_readonly("last_timings", [](const PyRuntime& r) { return timings_or_none(r.last_timings); })
      .def("close", &PyRuntime::close)
      .def_property_readonly("closed", [](const PyRuntime& r) { return !r.rt; })
      .def_property_readonly("model", [](const PyRuntime& r) { return r.model; })
      .def_property_readonly("device_name",
                             [](const PyRuntime& r) {
                               if (!r.rt)
                                 raise_closed("vnpu.Runtime");
                               return r.rt->device_info().name;
                             })
      .def("__enter__", [](const py::object& self) { return self; })
      .def("__exit__", [](PyRuntime& r, const py::args&) { r.close(); });

  m.def(
      "_make_error", [](vnpu::ErrorCode code, const std::string& msg) { return make_error(code, msg); },
      py::arg("code"), py::arg("message"), "A vnpu.Error (vnpu.TimeoutError for TIMEOUT) instance");
  m.def("_set_future_class", [](py::object cls) { g_future_cls = cls.release(); });
  m.def("_resolve_batch", [](const py::list& batch) {
    for (auto item : batch) {
      auto t = item.cast<py::tuple>();
      py::object fut = t[0];
      if (fut.attr("done")().cast<bool>())
        continue;  // cancelled by the caller meanwhile
      if (t[2].cast<bool>())
        fut.attr("set_exception")(t[1]);
      else
        fut.attr("set_result")(t[1]);
    }
  });
  m.def("_shutdown", [] {
    // atexit: close every runtime (their requests finish), then stop the callback thread, before the
    // interpreter starts tearing down.
    for (auto* r : std::vector<PyAsyncRuntime*>(g_async_runtimes.begin(), g_async_runtimes.end()))
      r->close();
    for (auto* r : std::vector<PyRuntime*>(g_runtimes.begin(), g_runtimes.end()))
      r->close();
    dispatcher().stop();
  });
  m.def("_on_callback_thread", [] { return dispatcher().on_callback_thread(); });
  m.def("_after_fork_in_child", [] {
    // Only the forking thread survives fork(): the parent's runtimes have lost their threads (and their
    // devices' state), so they are abandoned — leaked, never destroyed, reported as closed — and the callback
    // thread is started afresh.
    for (auto* r : g_async_runtimes)
      new std::shared_ptr<vnpu::AsyncRuntime>(std::move(r->rt));  // NOLINT: intentional leak
    for (auto* r : g_runtimes)
      new std::shared_ptr<vnpu::Runtime>(std::move(r->rt));  // NOLINT: intentional leak
    py::object resolve = g_dispatcher->resolve_batch_fn;
    g_dispatcher = new Dispatcher;
    g_dispatcher->resolve_batch_fn = resolve;
    g_dispatcher->start();
  });

  dispatcher().resolve_batch_fn = m.attr("_resolve_batch");
  dispatcher().start();
  py::module_::import("atexit").attr("register")(m.attr("_shutdown"));
  py::module_::import("os").attr("register_at_fork")(py::arg("after_in_child") = m.attr("_after_fork_in_child"));
}
