// SPDX-License-Identifier: MIT
#include "conformance.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

extern "C" {
#include "vnpu_ops.h"
#include "vnpu_program.h"
}

namespace vnpu::conformance {
namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in)
    throw std::runtime_error("cannot read " + p.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Inputs that are parameters of the op rather than data: in real models they are initializers (constants),
// and vnpu programs take them at compile time. The runner turns such graph inputs into initializers.
bool is_parameter_input(const std::string& op, int index) {
  static const std::map<std::string, std::set<int>> kParams = {
      {"Clip", {1, 2}},
      {"Resize", {1, 2, 3}},
      {"Upsample", {1}},
      {"Slice", {1, 2, 3, 4}},
      {"Reshape", {1}},
      {"Expand", {1}},
      {"Split", {1}},
      {"Squeeze", {1}},
      {"Unsqueeze", {1}},
      {"Gather", {1}},
      {"BatchNormalization", {1, 2, 3, 4}},
      {"ConstantOfShape", {0}},
      {"Range", {0, 1, 2}},
      {"Dropout", {1, 2}},
      {"Pad", {1, 2, 3}},
      {"Tile", {1}},
      {"ReduceSum", {1}},
      {"ReduceMean", {1}},
      {"ReduceMax", {1}},
      {"ReduceMin", {1}},
      {"ReduceProd", {1}},
      {"ReduceL1", {1}},
      {"ReduceL2", {1}},
      {"ReduceSumSquare", {1}},
      {"ReduceLogSum", {1}},
      {"ReduceLogSumExp", {1}},
      {"ScatterND", {1}},
  };
  auto it = kParams.find(op);
  return it != kParams.end() && it->second.count(index);
}

HostTensor to_host(const onnx::TensorProto& t) {
  HostTensor h;
  for (auto d : t.dims())
    h.shape.push_back(d);
  size_t n = 1;
  for (auto d : h.shape)
    n *= static_cast<size_t>(d);
  if (t.data_type() != onnx::TensorProto::FLOAT)
    throw std::runtime_error("expected f32 tensor " + t.name());
  if (t.has_raw_data()) {
    if (t.raw_data().size() != n * 4)
      throw std::runtime_error("bad raw size in " + t.name());
    h.data.resize(n);
    if (n > 0)  // an empty tensor: data() may be null, and memcpy(NULL, ..., 0) is undefined
      std::memcpy(h.data.data(), t.raw_data().data(), n * 4);
  } else {
    h.data.assign(t.float_data().begin(), t.float_data().end());
  }
  return h;
}

bool close(float got, float want) {
  if (std::isnan(want))
    return std::isnan(got);
  if (std::isinf(want))
    return got == want;
  return std::fabs(static_cast<double>(got) - want) <= kAtol + kRtol * std::fabs(static_cast<double>(want));
}

constexpr uint64_t kSlotStride = uint64_t{1} << 36;  // binding i lives at device address (i + 1) << 36

void* flat_map(void* opaque, uint64_t addr, uint64_t len, int) {
  auto* slots = static_cast<std::vector<std::vector<uint8_t>>*>(opaque);
  uint64_t i = addr / kSlotStride;
  if (i == 0 || i > slots->size())
    return nullptr;
  uint64_t off = addr % kSlotStride;
  auto& s = (*slots)[i - 1];
  if (off > s.size() || len > s.size() - off)
    return nullptr;  // strict: catches any out-of-range operand
  return s.data() + off;
}

void flat_unmap(void*, void*, uint64_t, uint64_t, int) {}

}  // namespace

FlatDevice::FlatDevice(const ModelFile& m) : m_(m) {
  for (const auto& b : m.bindings())
    slots_.emplace_back(b.size, 0xA5);  // poison: scratch is undefined
  auto w = m.weights();
  std::copy(w.begin(), w.end(), slots_[m.weights_binding()].begin());
}

void FlatDevice::write_inputs(const std::vector<HostTensor>& inputs) {
  if (inputs.size() != m_.inputs().size())
    throw std::runtime_error("wrong number of inputs");
  for (size_t k = 0; k < inputs.size(); k++) {
    const TensorSpec& s = m_.inputs()[k];
    if (inputs[k].data.size() * 4 != s.size_bytes)
      throw std::runtime_error("input " + s.name + " has " + std::to_string(inputs[k].data.size()) + " elements");
    if (s.size_bytes)
      std::memcpy(slots_[s.binding].data() + s.offset, inputs[k].data.data(), s.size_bytes);
  }
}

void FlatDevice::execute() {
  std::vector<uint64_t> addrs;
  for (size_t i = 0; i < slots_.size(); i++)
    addrs.push_back((i + 1) * kSlotStride);
  VnpuProgramMem pm{&slots_, flat_map, flat_unmap, nullptr, nullptr};
  VnpuComputeModel cm{1000000000000ull, 100000000000ull, 100};
  volatile int cancel = 0;
  VnpuProgramRun run{};
  run.code = m_.program().data();
  run.code_len = m_.program().size();
  run.bindings = addrs.data();
  run.num_bindings = static_cast<uint32_t>(addrs.size());
  run.cancel = &cancel;
  run.model = &cm;
  run.weights_cache_max = weights_cache_max;
  VnpuProgramCost cost;
  uint32_t fail_op = 0;
  int rc = vnpu_program_execute(&run, &pm, &cost, &fail_op);
  if (rc != VNPU_CPL_OK)
    throw std::runtime_error("program failed with status " + std::to_string(rc) + " at op " + std::to_string(fail_op));
}

std::vector<HostTensor> FlatDevice::read_outputs() const {
  std::vector<HostTensor> outs;
  for (const auto& s : m_.outputs()) {
    HostTensor h;
    h.shape = s.shape;
    h.data.resize(s.size_bytes / 4);
    if (s.size_bytes)
      std::memcpy(h.data.data(), slots_[s.binding].data() + s.offset, s.size_bytes);
    outs.push_back(std::move(h));
  }
  return outs;
}

Executor flat_executor(bool reference_only) {
  return [reference_only](const ModelFile& m, const std::vector<HostTensor>& inputs) {
    FlatDevice dev(m);
    dev.write_inputs(inputs);
    VnpuKernelMode saved = vnpu_ops_default_mode();
    vnpu_ops_set_default_mode(reference_only ? VNPU_KERNELS_REFERENCE : VNPU_KERNELS_AUTO);
    try {
      dev.execute();
    } catch (...) {
      vnpu_ops_set_default_mode(saved);
      throw;
    }
    vnpu_ops_set_default_mode(saved);
    return dev.read_outputs();
  };
}

const std::map<std::string, std::string>& out_of_scope() {
  static const std::map<std::string, std::string> kList = {
#include "out_of_scope.inc"
  };
  return kList;
}

std::vector<CaseResult> run_all(const Executor& exec, const std::string& only) {
  std::vector<CaseResult> results;
  if (!fs::is_directory(kNodeDir))
    return results;
  auto supported = supported_onnx_ops();
  std::set<std::string> ops(supported.begin(), supported.end());
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(kNodeDir))
    dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& dir : dirs) {
    std::string name = dir.filename().string();
    if (!only.empty() && name.find(only) == std::string::npos)
      continue;
    onnx::ModelProto model;
    std::string bytes;
    try {
      bytes = read_file(dir / "model.onnx");
    } catch (...) {
      continue;
    }
    if (!model.ParseFromString(bytes))
      continue;
    bool all = model.graph().node_size() > 0;
    for (const auto& n : model.graph().node())
      all = all && n.domain().empty() && ops.count(n.op_type());
    if (!all)
      continue;  // uses an op vnpuc does not accept: not a case of a supported op
    CaseResult r;
    r.name = name;
    r.op = model.graph().node(model.graph().node_size() - 1).op_type();
    auto listed = out_of_scope().find(name);
    try {
      // Non-f32 outputs: vnpu programs produce f32 only.
      for (const auto& o : model.graph().output())
        if (o.type().tensor_type().elem_type() != onnx::TensorProto::FLOAT)
          throw CompileError("output '" + o.name() + "' has element type " +
                             std::to_string(o.type().tensor_type().elem_type()) + "; vnpu programs compute f32 only");
      for (const auto& in : model.graph().input())
        if (in.type().tensor_type().elem_type() == onnx::TensorProto::BFLOAT16)
          throw CompileError("input '" + in.name() +
                             "' has element type 16 (bfloat16); vnpu programs compute f32 only");
      int sets = 0;
      for (int s = 0;; s++) {
        fs::path ds = dir / ("test_data_set_" + std::to_string(s));
        if (!fs::is_directory(ds))
          break;
        sets++;
        // Inputs: parameters become initializers; the rest are run-time inputs.
        onnx::ModelProto m = model;
        auto* g = m.mutable_graph();
        std::set<std::string> inits;
        for (const auto& t : g->initializer())
          inits.insert(t.name());
        std::vector<std::string> graph_inputs;
        for (const auto& in : g->input())
          if (!inits.count(in.name()))
            graph_inputs.push_back(in.name());
        std::vector<HostTensor> run_inputs;
        google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> kept;
        for (size_t k = 0; k < graph_inputs.size(); k++) {
          onnx::TensorProto t;
          if (!t.ParseFromString(read_file(ds / ("input_" + std::to_string(k) + ".pb"))))
            throw std::runtime_error("bad input_" + std::to_string(k) + ".pb");
          bool param = t.data_type() != onnx::TensorProto::FLOAT;
          for (const auto& n : g->node())
            for (int j = 0; j < n.input_size(); j++)
              if (n.input(j) == graph_inputs[k] && is_parameter_input(n.op_type(), j))
                param = true;
          const auto& vi = *std::find_if(g->input().begin(), g->input().end(),
                                         [&](const auto& v) { return v.name() == graph_inputs[k]; });
          if (param) {
            t.set_name(graph_inputs[k]);
            *g->add_initializer() = t;
          } else {
            *kept.Add() = vi;
            run_inputs.push_back(to_host(t));
          }
        }
        // Drop inputs turned into initializers (keep order of the rest).
        g->mutable_input()->Clear();
        for (const auto& v : kept)
          *g->add_input() = v;
        std::string mb;
        m.SerializeToString(&mb);
        ModelFile compiled = compile_onnx({reinterpret_cast<const uint8_t*>(mb.data()), mb.size()});
        std::vector<HostTensor> outs = exec(compiled, run_inputs);
        for (int k = 0; k < model.graph().output_size(); k++) {
          onnx::TensorProto t;
          if (!t.ParseFromString(read_file(ds / ("output_" + std::to_string(k) + ".pb"))))
            throw std::runtime_error("bad output_" + std::to_string(k) + ".pb");
          HostTensor want = to_host(t);
          const HostTensor& got = outs.at(static_cast<size_t>(k));
          if (want.shape != got.shape) {
            std::ostringstream os;
            os << "output " << k << " shape mismatch: got [";
            for (auto d : got.shape)
              os << d << ",";
            os << "] want [";
            for (auto d : want.shape)
              os << d << ",";
            os << "]";
            throw std::runtime_error(os.str());
          }
          for (size_t e = 0; e < want.data.size(); e++)
            if (!close(got.data[e], want.data[e]))
              throw std::runtime_error("output " + std::to_string(k) + " element " + std::to_string(e) + ": got " +
                                       std::to_string(got.data[e]) + ", want " + std::to_string(want.data[e]));
        }
      }
      if (!sets)
        throw std::runtime_error("no test data sets");
      r.outcome = Outcome::kPass;
    } catch (const CompileError& e) {
      // A clear rejection by the compiler is out of scope when listed (or when it is about element types).
      std::string what = e.what();
      bool dtype = what.find("element type") != std::string::npos || what.find("integer tensors") != std::string::npos;
      if (listed != out_of_scope().end() || dtype) {
        r.outcome = Outcome::kOutOfScope;
        r.detail = (listed != out_of_scope().end() ? listed->second + " — " : std::string()) + what;
      } else {
        r.outcome = Outcome::kFail;
        r.detail = "compile error: " + what;
      }
    } catch (const BackendLimit& e) {
      r.outcome = Outcome::kOutOfScope;
      r.detail = std::string("backend limit: ") + e.what();
    } catch (const std::exception& e) {
      // A listed "numerics:" case is a documented deviation from the test's expected data (vnpu follows
      // PyTorch and ONNX Runtime there); any other mismatch fails.
      if (listed != out_of_scope().end() && listed->second.rfind("numerics:", 0) == 0) {
        r.outcome = Outcome::kOutOfScope;
        r.detail = listed->second + " — " + e.what();
      } else {
        r.outcome = Outcome::kFail;
        r.detail = e.what();
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

std::string report(const std::vector<CaseResult>& results) {
  struct Row {
    int cases = 0, pass = 0, oos = 0, fail = 0;
  };
  std::map<std::string, Row> rows;
  for (const auto& r : results) {
    Row& row = rows[r.op];
    row.cases++;
    if (r.outcome == Outcome::kPass)
      row.pass++;
    else if (r.outcome == Outcome::kOutOfScope)
      row.oos++;
    else
      row.fail++;
  }
  std::ostringstream os;
  char line[160];
  std::snprintf(line, sizeof line, "%-22s %6s %6s %12s %6s\n", "op", "cases", "pass", "out-of-scope", "fail");
  os << line;
  Row total;
  for (const auto& [op, row] : rows) {
    std::snprintf(line, sizeof line, "%-22s %6d %6d %12d %6d\n", op.c_str(), row.cases, row.pass, row.oos, row.fail);
    os << line;
    total.cases += row.cases;
    total.pass += row.pass;
    total.oos += row.oos;
    total.fail += row.fail;
  }
  std::snprintf(line, sizeof line, "%-22s %6d %6d %12d %6d\n", "TOTAL", total.cases, total.pass, total.oos, total.fail);
  os << line;
  for (const auto& r : results)
    if (r.outcome != Outcome::kPass)
      os << (r.outcome == Outcome::kFail ? "FAIL " : "out of scope ") << r.name << ": " << r.detail << "\n";
  return os.str();
}

}  // namespace vnpu::conformance
