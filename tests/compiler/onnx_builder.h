// SPDX-License-Identifier: MIT
// Small helper to build ONNX models in tests (onnx::ModelProto through libonnx_proto).
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vnpu::test {

class OnnxBuilder {
 public:
  explicit OnnxBuilder(int64_t opset = 13);
  /// Graph input (f32); a negative dim is dynamic ("N").
  OnnxBuilder& input(const std::string& name, const std::vector<int64_t>& shape);
  /// Graph output; its type and shape come from ONNX shape inference, or give its rank (symbolic dims) where
  /// inference cannot tell.
  OnnxBuilder& output(const std::string& name, int rank = -1);
  OnnxBuilder& init(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& data);
  OnnxBuilder& init_i64(const std::string& name, const std::vector<int64_t>& shape, const std::vector<int64_t>& data);
  /// Adds a node; returns it for attributes.
  onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& in, const std::vector<std::string>& out,
                        const std::string& name = {});
  static void attr(onnx::NodeProto& n, const std::string& name, int64_t v);
  static void attr(onnx::NodeProto& n, const std::string& name, float v);
  static void attr(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v);
  static void attr(onnx::NodeProto& n, const std::string& name, const std::string& v);
  [[nodiscard]] std::vector<uint8_t> bytes() const;

 private:
  onnx::ModelProto m_;
};

}  // namespace vnpu::test
