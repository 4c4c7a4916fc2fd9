// SPDX-License-Identifier: MIT
#include "session.h"

#include <algorithm>

#include <vnpu/compiled_model.h>
#include <vnpu/error.h>

namespace vnpu::examples {

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
  ro.timing_only = options.timing_only;
  impl_->runtime = std::make_unique<AsyncRuntime>(std::move(model), ro);
}

Session::~Session() = default;

std::string Session::backend() const {
  return impl_->runtime->device_info().backend;
}
std::string Session::device_name() const {
  return impl_->runtime->device_info().name;
}
int Session::compute_cores() const {
  return int(std::max(1u, impl_->runtime->device_info().compute_cores));
}
int64_t Session::device_clock_offset_ns() const {
  return impl_->runtime->device_clock_offset_ns(0);
}
Task<Outputs> Session::run(Tensor x) {
  return impl_->runtime->run(std::move(x));
}

}  // namespace vnpu::examples
