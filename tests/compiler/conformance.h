// SPDX-License-Identifier: MIT
// ONNX node conformance over Debian's libonnx-testdata: compile each case's model.onnx with vnpu::compile_onnx,
// run the program (flat in-process memory, or the runtime's sim backend = the device's engine library), and
// compare with the expected outputs. Shared by conformance_test.cpp and the vnpu-conformance tool.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <vnpu/compiler.h>

namespace vnpu::conformance {

/// Where the test data lives (Debian package libonnx-testdata).
inline constexpr const char* kNodeDir = "/usr/share/libonnx-testdata/data/node";

/// Tolerance: |got - want| <= kAtol + kRtol * |want| (NaN matches NaN). See docs/compiler.md.
inline constexpr double kRtol = 1e-3;
inline constexpr double kAtol = 1e-5;

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

/// Thrown by an executor when its backend rejects a case by design (reported as out of scope with the reason).
struct BackendLimit : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Runs a compiled model on inputs (in model input order) and returns outputs (model output order).
/// Throws std::exception with a message on failure.
using Executor = std::function<std::vector<HostTensor>(const ModelFile&, const std::vector<HostTensor>&)>;

/// A compiled model's bindings in flat host memory (weights loaded), for running its program repeatedly.
class FlatDevice {
 public:
  explicit FlatDevice(const ModelFile& m);
  void write_inputs(const std::vector<HostTensor>& inputs);
  /// vnpu_program_execute with the current default kernel mode; throws on a non-OK status.
  void execute();
  std::vector<HostTensor> read_outputs() const;
  /// VnpuProgramRun::weights_cache_max of execute(): 0 (convert the weights on every run) unless set.
  uint64_t weights_cache_max = 0;

 private:
  const ModelFile& m_;
  std::vector<std::vector<uint8_t>> slots_;
};

/// The interpreter on flat host memory (vnpu_program_execute with a bounds-checked VnpuProgramMem).
/// `reference_only`: reference kernels only (no oneDNN).
Executor flat_executor(bool reference_only);

enum class Outcome { kPass, kOutOfScope, kFail };

struct CaseResult {
  std::string name;  ///< test directory, e.g. test_conv_with_strides_padding
  std::string op;    ///< ONNX op the case tests
  Outcome outcome = Outcome::kFail;
  std::string detail;  ///< failure or out-of-scope reason
};

/// Runs every case whose ops are all accepted by the compiler. `only` (may be empty) restricts to cases whose
/// name contains it.
std::vector<CaseResult> run_all(const Executor& exec, const std::string& only = {});

/// Per-op table + every non-passing case with its reason. Returns the text.
std::string report(const std::vector<CaseResult>& results);

/// Cases listed as out of scope, with the reason (checked: a listed case must fail with a CompileError).
const std::map<std::string, std::string>& out_of_scope();

}  // namespace vnpu::conformance
