// SPDX-License-Identifier: MIT
// What the runtime needs to know about a model, independent of where it came from (a .vnpu file, the matmul
// convenience model, a synthetic benchmark model).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <vnpu/compiled_model.h>

namespace vnpu::detail {

enum class SlotKind : uint32_t { kWeights = 1, kInput = 2, kOutput = 3, kScratch = 4 };

struct BindingSlot {
  SlotKind kind;
  uint64_t size;
};

// Where a model input/output lives: binding slot + byte offset.
struct IoPlace {
  uint32_t binding = 0;
  uint64_t offset = 0;
};

enum class ComputeKind { kExec, kMatmul, kSynth };

struct ModelData {
  std::string kind;  // "exec", "matmul", "synthetic"
  std::vector<TensorInfo> inputs, outputs;
  std::vector<IoPlace> input_places, output_places;
  std::vector<BindingSlot> bindings;  // EXEC binding-table order
  std::vector<uint8_t> weights;       // contents of the kWeights slot (may be empty: no weights slot)
  std::vector<uint8_t> program;       // kExec
  std::string producer;
  uint32_t op_count = 0;
  ComputeKind compute = ComputeKind::kExec;
  uint32_t m = 0, n = 0, k = 0;           // kMatmul: x = input binding, W = weights, y = output
  uint64_t synth_ns = 0;                  // kSynth
  std::chrono::nanoseconds host_prep{0};  // synthetic host prep time per request
};

}  // namespace vnpu::detail
