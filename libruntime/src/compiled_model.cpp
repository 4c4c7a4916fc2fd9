// SPDX-License-Identifier: MIT
// CompiledModel: .vnpu files through the compiler's container reader (compiler/format), and in-memory models.
#include <sys/stat.h>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <vnpu/compiled_model.h>
#include <vnpu/error.h>
#include <vnpu/model.h>

#include "model_data.h"
#include "vnpu_hw.h"

#include <vnpu/model_file.h>

namespace vnpu {

namespace {

uint64_t round4(uint64_t bytes) {
  return (bytes + 3) / 4 * 4;
}

}  // namespace

static std::shared_ptr<detail::ModelData> convert(const ModelFile& f, std::string_view what) {
  auto d = std::make_shared<detail::ModelData>();
  d->kind = "exec";
  d->compute = detail::ComputeKind::kExec;
  for (const BindingSpec& b : f.bindings())
    d->bindings.push_back(detail::BindingSlot{static_cast<detail::SlotKind>(b.kind), b.size});
  auto add = [&](const TensorSpec& t, std::vector<TensorInfo>& infos, std::vector<detail::IoPlace>& places) {
    if (t.dtype != VNPU_DTYPE_F32)
      throw Error(ErrorCode::kUnsupported, std::string(what) + ": tensor '" + t.name + "' has dtype " +
                                               std::to_string(t.dtype) + "; this runtime supports f32 only");
    for (int64_t dim : t.shape)
      if (dim < 1)
        throw Error(ErrorCode::kUnsupported, std::string(what) + ": tensor '" + t.name + "' has an empty dimension");
    infos.push_back(TensorInfo{t.name, DType::kF32, t.shape, t.size_bytes});
    places.push_back(detail::IoPlace{t.binding, t.offset});
  };
  for (const TensorSpec& t : f.inputs())
    add(t, d->inputs, d->input_places);
  for (const TensorSpec& t : f.outputs())
    add(t, d->outputs, d->output_places);
  d->weights.assign(f.weights().begin(), f.weights().end());
  d->program.assign(f.program().begin(), f.program().end());
  d->producer = f.producer();
  d->op_count = f.op_count();
  return d;
}

CompiledModel CompiledModel::load(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    throw Error(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                "cannot open model '" + path + "': " + std::strerror(err));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(ErrorCode::kIo, "cannot read model '" + path + "'");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return from_memory(bytes, path);
}

CompiledModel CompiledModel::from_memory(std::span<const uint8_t> bytes, std::string_view what) {
  try {
    ModelFile f = ModelFile::parse(bytes, what);
    return CompiledModel(convert(f, what));
  } catch (const FormatError& e) {
    throw Error(ErrorCode::kInvalidArgument, std::string(e.what()) + " (recompile the model with vnpuc)");
  }
}

CompiledModel CompiledModel::from_matmul(const MatmulModel& model) {
  auto d = std::make_shared<detail::ModelData>();
  d->kind = "matmul";
  d->compute = detail::ComputeKind::kMatmul;
  d->m = static_cast<uint32_t>(model.m());
  d->k = static_cast<uint32_t>(model.k());
  d->n = static_cast<uint32_t>(model.n());
  const uint64_t x = uint64_t{d->m} * d->k * 4, w = uint64_t{d->k} * d->n * 4, y = uint64_t{d->m} * d->n * 4;
  d->bindings = {{detail::SlotKind::kWeights, w}, {detail::SlotKind::kInput, x}, {detail::SlotKind::kOutput, y}};
  d->inputs.push_back(TensorInfo{"x", DType::kF32, model.input_shape(), x});
  d->input_places.push_back({1, 0});
  d->outputs.push_back(TensorInfo{"y", DType::kF32, model.output_shape(), y});
  d->output_places.push_back({2, 0});
  const auto wd = model.weights().data();
  d->weights.resize(w);
  std::memcpy(d->weights.data(), wd.data(), w);
  d->op_count = 1;
  return CompiledModel(std::move(d));
}

CompiledModel CompiledModel::synthetic(const SyntheticSpec& spec) {
  if (spec.input_bytes == 0 || spec.output_bytes == 0)
    throw Error(ErrorCode::kInvalidArgument, "synthetic model needs input and output sizes > 0");
  if (spec.input_bytes > (1ull << 30) || spec.output_bytes > (1ull << 30))
    throw Error(ErrorCode::kInvalidArgument, "synthetic model transfers are limited to 1 GiB");
  if (spec.compute.count() < 1 || static_cast<uint64_t>(spec.compute.count()) > VNPU_SYNTH_MAX_NS)
    throw Error(ErrorCode::kInvalidArgument, "synthetic compute time must be 1 ns..10 s");
  if (spec.host_prep.count() < 0 || spec.host_prep > std::chrono::seconds(10))
    throw Error(ErrorCode::kInvalidArgument, "synthetic host prep time must be 0..10 s");
  auto d = std::make_shared<detail::ModelData>();
  d->kind = "synthetic";
  d->compute = detail::ComputeKind::kSynth;
  d->synth_ns = static_cast<uint64_t>(spec.compute.count());
  d->host_prep = spec.host_prep;
  // The tensors are one f32 each; the bindings (what H2D and D2H move) have the requested sizes. So the host
  // side costs exactly host_prep (no hidden copy of a large input), and the DMA engines exactly their time.
  const uint64_t in = round4(spec.input_bytes), out = round4(spec.output_bytes);
  d->bindings = {{detail::SlotKind::kInput, in}, {detail::SlotKind::kOutput, out}};
  d->inputs.push_back(TensorInfo{"x", DType::kF32, {1}, 4});
  d->input_places.push_back({0, 0});
  d->outputs.push_back(TensorInfo{"y", DType::kF32, {1}, 4});
  d->output_places.push_back({1, 0});
  return CompiledModel(std::move(d));
}

const std::vector<TensorInfo>& CompiledModel::inputs() const noexcept {
  return d_->inputs;
}
const std::vector<TensorInfo>& CompiledModel::outputs() const noexcept {
  return d_->outputs;
}

std::optional<size_t> CompiledModel::input_index(std::string_view name) const noexcept {
  for (size_t i = 0; i < d_->inputs.size(); ++i)
    if (d_->inputs[i].name == name)
      return i;
  return std::nullopt;
}
std::optional<size_t> CompiledModel::output_index(std::string_view name) const noexcept {
  for (size_t i = 0; i < d_->outputs.size(); ++i)
    if (d_->outputs[i].name == name)
      return i;
  return std::nullopt;
}

uint64_t CompiledModel::device_bytes_per_request() const noexcept {
  uint64_t n = 0;
  for (const auto& b : d_->bindings)
    if (b.kind != detail::SlotKind::kWeights)
      n += b.size;
  return n + 8 * d_->bindings.size();
}
uint64_t CompiledModel::device_bytes_shared() const noexcept {
  return d_->weights.size() + d_->program.size();
}
std::string_view CompiledModel::kind() const noexcept {
  return d_->kind;
}

std::string CompiledModel::describe() const {
  std::ostringstream os;
  os << "model: " << d_->kind;
  if (!d_->producer.empty())
    os << " (" << d_->producer << ")";
  os << ", " << d_->op_count << " ops\n";
  for (const auto& t : d_->inputs)
    os << "  input  " << t.name << ": " << dtype_name(t.dtype) << shape_string(t.shape) << " (" << t.size_bytes
       << " B)\n";
  for (const auto& t : d_->outputs)
    os << "  output " << t.name << ": " << dtype_name(t.dtype) << shape_string(t.shape) << " (" << t.size_bytes
       << " B)\n";
  static const char* const kKinds[] = {"?", "weights", "input", "output", "scratch"};
  for (size_t i = 0; i < d_->bindings.size(); ++i) {
    const auto k = static_cast<uint32_t>(d_->bindings[i].kind);
    os << "  binding " << i << ": " << (k <= 4 ? kKinds[k] : "?") << ", " << d_->bindings[i].size << " B\n";
  }
  os << "  device memory: " << device_bytes_shared() << " B shared + " << device_bytes_per_request()
     << " B per in-flight request\n";
  return os.str();
}

}  // namespace vnpu
