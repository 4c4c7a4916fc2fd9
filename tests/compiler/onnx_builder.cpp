// SPDX-License-Identifier: MIT
#include "onnx_builder.h"

#include <onnx/shape_inference/implementation.h>

namespace vnpu::test {

OnnxBuilder::OnnxBuilder(int64_t opset) {
  m_.set_ir_version(8);
  m_.set_producer_name("vnpu-test");
  auto* o = m_.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m_.mutable_graph()->set_name("test");
}

OnnxBuilder& OnnxBuilder::input(const std::string& name, const std::vector<int64_t>& shape) {
  auto* vi = m_.mutable_graph()->add_input();
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  auto* sh = tt->mutable_shape();
  for (int64_t d : shape) {
    auto* dim = sh->add_dim();
    if (d < 0)
      dim->set_dim_param("N");
    else
      dim->set_dim_value(d);
  }
  return *this;
}

OnnxBuilder& OnnxBuilder::output(const std::string& name, int rank) {
  auto* vi = m_.mutable_graph()->add_output();
  vi->set_name(name);  // type and shape: from shape inference in bytes(), unless the rank is given
  if (rank >= 0) {
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    auto* sh = tt->mutable_shape();
    for (int k = 0; k < rank; k++)
      sh->add_dim()->set_dim_param("d" + std::to_string(k));
  }
  return *this;
}

OnnxBuilder& OnnxBuilder::init(const std::string& name, const std::vector<int64_t>& shape,
                               const std::vector<float>& data) {
  auto* t = m_.mutable_graph()->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : shape)
    t->add_dims(d);
  for (float v : data)
    t->add_float_data(v);
  return *this;
}

OnnxBuilder& OnnxBuilder::init_i64(const std::string& name, const std::vector<int64_t>& shape,
                                   const std::vector<int64_t>& data) {
  auto* t = m_.mutable_graph()->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::INT64);
  for (int64_t d : shape)
    t->add_dims(d);
  for (int64_t v : data)
    t->add_int64_data(v);
  return *this;
}

onnx::NodeProto& OnnxBuilder::node(const std::string& op, const std::vector<std::string>& in,
                                   const std::vector<std::string>& out, const std::string& name) {
  auto* n = m_.mutable_graph()->add_node();
  n->set_op_type(op);
  n->set_name(name.empty() ? op + "_" + std::to_string(m_.graph().node_size()) : name);
  for (const auto& s : in)
    n->add_input(s);
  for (const auto& s : out)
    n->add_output(s);
  return *n;
}

void OnnxBuilder::attr(onnx::NodeProto& n, const std::string& name, int64_t v) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void OnnxBuilder::attr(onnx::NodeProto& n, const std::string& name, float v) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

void OnnxBuilder::attr(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v)
    a->add_ints(x);
}

void OnnxBuilder::attr(onnx::NodeProto& n, const std::string& name, const std::string& v) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(v);
}

std::vector<uint8_t> OnnxBuilder::bytes() const {
  // Graph outputs get their type and shape from libonnx's shape inference, as exporters write them (the ONNX
  // checker requires both). Where inference cannot tell (a test of a malformed node), they stay untyped.
  onnx::ModelProto m = m_;
  try {
    onnx::ShapeInferenceOptions opt(false, 0, true);  // with data propagation (Reshape of Shape arithmetic)
    onnx::shape_inference::InferShapes(m, onnx::OpSchemaRegistry::Instance(), opt);
  } catch (const std::exception&) {
    m = m_;
  }
  for (auto& o : *m.mutable_graph()->mutable_output())
    if (!o.has_type())
      o.mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  m.mutable_graph()->clear_value_info();
  std::string s;
  m.SerializeToString(&s);
  return {s.begin(), s.end()};
}

}  // namespace vnpu::test
