// SPDX-License-Identifier: MIT
// Compiler IR: values (tensors with static shapes; some known at compile time) and ISA-level ops.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <vnpu/compiler.h>

extern "C" {
#include "vnpu_ops.h"
#include "vnpu_program.h"
}

namespace vnpu::detail {

using Shape = std::vector<int64_t>;

/// A tensor known at compile time: f32 data, or int64 for shape arithmetic (bool and int types map to int64).
struct Const {
  bool is_float = true;
  Shape shape;
  std::vector<float> f;
  std::vector<int64_t> i;

  [[nodiscard]] size_t count() const { return is_float ? f.size() : i.size(); }
  [[nodiscard]] double at(size_t k) const { return is_float ? f[k] : static_cast<double>(i[k]); }
  [[nodiscard]] int64_t int_at(size_t k) const { return is_float ? static_cast<int64_t>(f[k]) : i[k]; }
};

struct Value {
  std::string name;
  Shape shape;
  bool is_const = false;
  Const c;
  int alias_of = -1;  ///< a reshaped view of another (non-constant) value: shares its storage
  bool graph_input = false;
  bool graph_output = false;
};

struct Op {
  uint32_t opcode = 0;
  std::vector<int> in, out;
  VnpuOpAttr attr{};
  std::string node;  ///< "name (OpType)" of the ONNX node it came from, for messages
  bool dead = false;
};

struct Graph {
  std::vector<Value> values;
  std::vector<Op> ops;
  std::map<std::string, int> by_name;  ///< ONNX tensor name -> value
  std::vector<int> inputs, outputs;    ///< graph inputs/outputs in ONNX order (value ids)
  std::vector<std::string> input_names, output_names;
  std::set<std::string> consumed;  ///< ONNX tensor names some compiled node or an output reads
  CompileStats stats;

  int add_value(Value v) {
    values.push_back(std::move(v));
    return static_cast<int>(values.size()) - 1;
  }
  int add_const(Const c, std::string name = {}) {
    Value v;
    v.name = std::move(name);
    v.shape = c.shape;
    v.is_const = true;
    v.c = std::move(c);
    return add_value(std::move(v));
  }
  int root(int v) const {
    while (values[v].alias_of >= 0)
      v = values[v].alias_of;
    return v;
  }
};

[[noreturn]] void fail(const std::string& msg);
int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);

// const_eval.cpp
Const reshape_const(const Const& c, const Shape& shape);
Const binary_const(const std::string& op, const Const& a, const Const& b);
Shape broadcast_shapes(const Shape& a, const Shape& b, const std::string& where);
Const gather_elems(const Const& in, const Shape& out_shape, const std::vector<size_t>& src);
std::vector<size_t> strides_of(const Shape& s);

// lower.cpp: one ONNX node at a time; passes.cpp: graph rewrites; emit.cpp: planning + program bytes.
int emit_op(Graph& g, uint32_t opcode, const std::vector<int>& in, const std::vector<Shape>& out_shapes,
            const VnpuOpAttr& attr, const std::string& node, std::vector<int>* outs = nullptr);
int make_alias(Graph& g, int v, const Shape& shape, const std::string& node);
void run_passes(Graph& g, const CompileOptions& opt);
ModelFile emit_model(Graph& g, const CompileOptions& opt);

}  // namespace vnpu::detail
