// SPDX-License-Identifier: MIT
#include "session.h"

#include <vnpu/error.h>

#if __has_include(<vnpu/compiled_model.h>)
#include <vnpu/compiled_model.h>
#define VNPU_EXAMPLES_HAVE_COMPILED_MODEL 1
#endif

namespace vnpu::examples {

#ifdef VNPU_EXAMPLES_HAVE_COMPILED_MODEL

struct Session::Impl {
  std::unique_ptr<AsyncRuntime> runtime;
};

Session::Session(const std::string& model_path, const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
  CompiledModel model = CompiledModel::load(model_path);
  if (model.inputs().size() != 1 || model.outputs().size() != 1)
    throw Error(ErrorCode::kInvalidArgument, model_path + ": the examples expect one input and one output");
  input_shape_ = model.inputs()[0].shape;
  output_shape_ = model.outputs()[0].shape;
  RuntimeOptions ro;
  ro.backend = options.backend;
  ro.parallel = options.parallel;
  ro.max_in_flight = options.max_in_flight;
  // Generic lambdas: only the branch matching this runtime's API is instantiated.
  [&](auto& o) {
    if constexpr (requires { o.timing_only; }) {
      o.timing_only = options.timing_only;
    } else if (options.timing_only) {
      throw Error(ErrorCode::kUnsupported, "--timing-only: this libvnpu-runtime has no timing-only option");
    }
  }(ro);
  impl_->runtime = std::make_unique<AsyncRuntime>(std::move(model), ro);
}

Session::~Session() = default;

std::string Session::backend() const { return impl_->runtime->device_info().backend; }
std::string Session::device_name() const { return impl_->runtime->device_info().name; }
Task<Outputs> Session::run(Tensor x) { return impl_->runtime->run(std::move(x)); }
int64_t Session::device_clock_offset_ns() const {
  return [](auto& r) -> int64_t {
    if constexpr (requires { r.device_clock_offset_ns(0); }) {
      return r.device_clock_offset_ns(0);
    } else {
      return 0;
    }
  }(*impl_->runtime);
}

#else  // the runtime in this tree cannot load compiled models yet

struct Session::Impl {};

Session::Session(const std::string& model_path, const SessionOptions&) {
  throw Error(ErrorCode::kUnsupported, model_path +
                                           ": this libvnpu-runtime has no vnpu::CompiledModel (compiled .vnpu "
                                           "models cannot be loaded); build the examples against a runtime that has it");
}
Session::~Session() = default;
std::string Session::backend() const { return {}; }
std::string Session::device_name() const { return {}; }
int64_t Session::device_clock_offset_ns() const { return 0; }
Task<Outputs> Session::run(Tensor) { throw Error(ErrorCode::kUnsupported, "no CompiledModel support"); }

#endif

}  // namespace vnpu::examples
