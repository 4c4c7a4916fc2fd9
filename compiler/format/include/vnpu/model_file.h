// SPDX-License-Identifier: MIT
/// \file
/// vnpu::ModelFile: the `.vnpu` container (include/vnpu_isa.h, docs/program-format.md) in memory — read with
/// full validation, or built and serialized. Used by the compiler (writer) and by the runtime (reader).
///
/// Link with meson `vnpu_format_dep` (static library, C++20, depends only on zlib).
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace vnpu {

/// Thrown when bytes are not a valid `.vnpu` file (damaged, truncated, foreign, wrong version, checksum
/// mismatch, out-of-range offsets, malformed program). what() says what is wrong and where; e.g.
/// "model.vnpu: checksum mismatch (file says 0x1234abcd, contents give 0x99aa0011): the file is damaged".
/// The runtime maps it to vnpu::Error(kInvalidArgument).
class FormatError : public std::runtime_error {
 public:
  explicit FormatError(const std::string& message) : std::runtime_error(message) {}
};

/// Role of a binding slot (mirrors enum vnpu_isa_binding_kind).
enum class BindingKind : uint32_t {
  kWeights = 1,  ///< the weights blob; read-only; exactly one per program
  kInput = 2,    ///< one model input
  kOutput = 3,   ///< one model output
  kScratch = 4,  ///< intermediate activations; the runtime allocates `size` bytes, contents undefined
};

/// One binding slot of the program: the runtime supplies a device address for each, in this order, as the
/// EXEC binding table.
struct BindingSpec {
  BindingKind kind;
  uint64_t size;  ///< bytes the slot must provide
};

/// A model input or output. Element type is f32 (dtype 0 = VNPU_DTYPE_F32) in format 1.0.
struct TensorSpec {
  std::string name;            ///< the ONNX graph input/output name
  uint32_t dtype = 0;          ///< enum vnpu_dtype
  std::vector<int64_t> shape;  ///< static shape; empty = scalar
  uint32_t binding = 0;        ///< index into bindings(): kInput slot for inputs, kOutput slot for outputs
  uint64_t offset = 0;         ///< byte offset inside that slot
  uint64_t size_bytes = 0;     ///< product(shape) * element size

  /// Number of elements (product of shape; 1 for a scalar).
  [[nodiscard]] uint64_t element_count() const noexcept;
};

/// A compiled model: tensor specs, binding slots, weights and program. A value type (copyable, movable);
/// const methods are safe from several threads.
class ModelFile {
 public:
  ModelFile() = default;

  /// Parses and validates `bytes` (copied). Checks magic, version (major must equal
  /// VNPU_FILE_VERSION_MAJOR), sizes, section table, CRC-32, tensor specs, and the program's structure: header,
  /// binding table, tensor table (every tensor inside its binding), op framing (known opcodes, attribute sizes,
  /// operand indices). `what` names the source in error messages (e.g. the path).
  /// Throws FormatError; never crashes or reads out of bounds on any input.
  [[nodiscard]] static ModelFile parse(std::span<const uint8_t> bytes, std::string_view what = "model");

  /// Reads and parses a file. Throws FormatError (also for I/O failures, with the errno text).
  [[nodiscard]] static ModelFile load(const std::string& path);

  /// The container bytes for this model (computes offsets and the CRC). Throws FormatError if the model is
  /// inconsistent (validate() fails).
  [[nodiscard]] std::vector<uint8_t> serialize() const;

  /// Writes serialize() to `path` (atomically: temp file + rename). Throws FormatError.
  void save(const std::string& path) const;

  /// Checks the in-memory model as parse() checks a file. Throws FormatError.
  void validate() const;

  [[nodiscard]] const std::vector<TensorSpec>& inputs() const noexcept { return inputs_; }
  [[nodiscard]] const std::vector<TensorSpec>& outputs() const noexcept { return outputs_; }
  /// Binding slots, in EXEC binding-table order (parsed from the program's binding table).
  [[nodiscard]] const std::vector<BindingSpec>& bindings() const noexcept { return bindings_; }
  /// Contents of the kWeights slot (its size equals that binding's size).
  [[nodiscard]] std::span<const uint8_t> weights() const noexcept { return weights_; }
  /// The program bytes, passed to EXEC unchanged (struct vnpu_isa_program ...).
  [[nodiscard]] std::span<const uint8_t> program() const noexcept { return program_; }
  /// Free text naming the producer (compiler version, source model); may be empty.
  [[nodiscard]] const std::string& producer() const noexcept { return producer_; }
  /// Number of ops in the program.
  [[nodiscard]] uint32_t op_count() const noexcept { return op_count_; }

  /// Index of the binding of kind kWeights (every valid model has exactly one).
  [[nodiscard]] uint32_t weights_binding() const;
  /// Finds an input/output by name; nullptr if absent.
  [[nodiscard]] const TensorSpec* find_input(std::string_view name) const noexcept;
  [[nodiscard]] const TensorSpec* find_output(std::string_view name) const noexcept;

  /// Human-readable summary (what `vnpuc --info` prints): versions, sizes, inputs, outputs, bindings, op
  /// histogram.
  [[nodiscard]] std::string describe() const;

  // ---- building (the compiler) ----
  /// Sets the program bytes; bindings() and op_count() are re-read from it. Throws FormatError if the program
  /// is structurally invalid.
  void set_program(std::vector<uint8_t> program);
  void set_weights(std::vector<uint8_t> weights) { weights_ = std::move(weights); }
  void add_input(TensorSpec spec) { inputs_.push_back(std::move(spec)); }
  void add_output(TensorSpec spec) { outputs_.push_back(std::move(spec)); }
  void set_producer(std::string producer) { producer_ = std::move(producer); }

 private:
  std::vector<TensorSpec> inputs_, outputs_;
  std::vector<BindingSpec> bindings_;
  std::vector<uint8_t> weights_, program_;
  std::string producer_;
  uint32_t op_count_ = 0;
};

/// Structural check of a program (as ModelFile::parse does for its program section): header, binding table,
/// tensor table, op framing. Returns an empty string if valid, else what is wrong (naming the op index).
/// Fills `bindings` and `op_count` when non-null and valid.
[[nodiscard]] std::string check_program(std::span<const uint8_t> program, std::vector<BindingSpec>* bindings,
                                        uint32_t* op_count);

/// Short name of an ISA opcode ("conv", "matmul", ...), "?" if unknown.
[[nodiscard]] const char* isa_op_name(uint32_t opcode) noexcept;

}  // namespace vnpu
