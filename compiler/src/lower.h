// SPDX-License-Identifier: MIT
// ONNX node -> compiler IR.
#pragma once

#include <onnx/onnx_pb.h>

#include "graph.h"

namespace vnpu::detail {

/// Converts a TensorProto (initializer or Constant value) into a Const. `where` names it in errors.
Const const_from_proto(const onnx::TensorProto& t, const std::string& where);

/// Lowers one node of the default domain at `opset`: evaluates it at compile time when its inputs are known,
/// or emits ISA ops (or an alias view). Throws CompileError naming the node.
void lower_node(Graph& g, const onnx::NodeProto& node, int64_t opset);

/// ONNX op types lower_node accepts (some only with constant inputs).
const std::vector<std::string>& lowered_ops();

}  // namespace vnpu::detail
