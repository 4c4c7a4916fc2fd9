// SPDX-License-Identifier: MIT
/// \file
/// vnpu::compile_onnx: ONNX model → `.vnpu` container (vnpu::ModelFile). See docs/compiler.md.
///
/// Link with meson `vnpu_compiler_dep` (static library; depends on libonnx_proto/protobuf and vnpu_format_dep).
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <vnpu/model_file.h>

namespace vnpu {

/// Thrown when a model cannot be compiled. what() names the node (name and op type) and the reason, e.g.
/// "node 'Conv_12' (Conv): 3-D convolution is not supported (kernel_shape has 3 dims)".
class CompileError : public std::runtime_error {
 public:
  explicit CompileError(const std::string& message) : std::runtime_error(message) {}
};

/// Overrides the shape (and element type) of one graph input — the seed's `input_info`.
struct InputOverride {
  std::string name;            ///< graph input name
  std::vector<int64_t> shape;  ///< static shape; every dim >= 1
  uint32_t dtype = 0;          ///< enum vnpu_dtype; only 0 (f32) in format 1.0
};

/// Parses "NAME:1x3x640x640:f32" (dtype optional, default f32; "NAME:" alone is a scalar). Throws CompileError.
[[nodiscard]] InputOverride parse_input_override(const std::string& text);

/// Knobs of one compilation.
struct CompileOptions {
  std::vector<InputOverride> inputs;  ///< shapes for dynamic or to-be-overridden inputs
  bool fold_batchnorm = true;         ///< fold BatchNormalization into a preceding Conv
  bool fuse_activations = true;       ///< fuse bias/activation (Relu, Sigmoid, SiLU, Clip, ...) into producers
  bool plan_memory = true;            ///< liveness-based reuse of scratch (false: every tensor its own range)
  /// Cut the model: these tensors (by ONNX name) become the outputs instead of the graph's, and only the nodes
  /// they depend on are compiled (e.g. a detector up to its data-dependent post-processing). Empty: the graph's.
  std::vector<std::string> outputs;
  /// Run libonnx's checker and shape inference on the model (opsets <= 17) and cross-check every inferred
  /// static shape against vnpuc's; a mismatch is a CompileError naming the node.
  bool onnx_checks = true;
};

/// What the compiler did, for --info style reporting.
struct CompileStats {
  uint32_t onnx_nodes = 0;    ///< nodes in the source graph
  uint32_t folded_nodes = 0;  ///< nodes evaluated at compile time (constants, shape arithmetic)
  uint32_t fused_nodes = 0;   ///< nodes merged into another op (BatchNorm, activations, Reshape aliases)
  uint32_t program_ops = 0;   ///< ops in the emitted program
  uint64_t weights_bytes = 0;
  uint64_t scratch_bytes = 0;      ///< scratch binding size after planning
  uint64_t scratch_unplanned = 0;  ///< scratch if every intermediate had its own range (planning gain)
};

/// Compiles a serialized ONNX ModelProto. Throws CompileError (unsupported op names op and node; missing
/// shape names the input and suggests --input). Thread-safe (no shared state).
[[nodiscard]] ModelFile compile_onnx(std::span<const uint8_t> onnx_bytes, const CompileOptions& options = {},
                                     CompileStats* stats = nullptr);

/// Reads `path` and compiles it (CompileError also for I/O failures).
[[nodiscard]] ModelFile compile_onnx_file(const std::string& path, const CompileOptions& options = {},
                                          CompileStats* stats = nullptr);

/// One op type used by a model (`vnpuc --report`).
struct OpUse {
  std::string op;          ///< op type ("domain::op" outside the default domain)
  uint32_t count = 0;      ///< nodes of this type
  bool supported = false;  ///< vnpuc lowers this op type (some only with compile-time constant inputs)
  std::string first_node;  ///< name of the first such node
};

/// The op types of a serialized ONNX model in order of first use. Throws CompileError if it does not parse.
[[nodiscard]] std::vector<OpUse> onnx_op_uses(std::span<const uint8_t> onnx_bytes);

/// ONNX op types the importer accepts (sorted), for reports and tests.
[[nodiscard]] std::vector<std::string> supported_onnx_ops();

}  // namespace vnpu
