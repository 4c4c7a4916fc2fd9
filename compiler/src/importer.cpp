// SPDX-License-Identifier: MIT
// vnpu::compile_onnx: parse the ModelProto, bind inputs and initializers, lower node by node, run the passes,
// plan memory and emit the container.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include <onnx/checker.h>
#include <onnx/shape_inference/implementation.h>

#include "lower.h"

namespace vnpu {

InputOverride parse_input_override(const std::string& text) {
  // NAME:SHAPE[:DTYPE]; NAME may itself contain ':' (tf2onnx names like "x:0"), so split from the right.
  InputOverride o;
  auto bad = [&](const std::string& why) -> CompileError {
    return CompileError("--input '" + text + "': " + why + " (expected NAME:1x3x640x640[:f32])");
  };
  size_t last = text.rfind(':');
  if (last == std::string::npos)
    throw bad("missing shape");
  std::string tail = text.substr(last + 1), head = text.substr(0, last);
  std::string shape = tail;
  if (tail == "f32" || tail == "float32" || tail == "float") {
    size_t prev = head.rfind(':');
    if (prev == std::string::npos)
      throw bad("missing shape");
    shape = head.substr(prev + 1);
    head = head.substr(0, prev);
  } else if (!tail.empty() && !std::isdigit(static_cast<unsigned char>(tail[0]))) {
    throw bad("unsupported element type '" + tail + "' (only f32)");
  }
  if (head.empty())
    throw bad("empty name");
  o.name = head;
  size_t pos = 0;
  while (pos < shape.size()) {
    size_t x = shape.find('x', pos);
    std::string d = shape.substr(pos, x == std::string::npos ? std::string::npos : x - pos);
    if (d.empty() || d.find_first_not_of("0123456789") != std::string::npos || d.size() > 12)
      throw bad("bad dimension '" + d + "'");
    int64_t v = std::stoll(d);
    if (v < 1)
      throw bad("dimensions must be >= 1");
    o.shape.push_back(v);
    if (x == std::string::npos)
      break;
    pos = x + 1;
    if (pos == shape.size())
      throw bad("trailing 'x'");
  }
  return o;
}

std::vector<std::string> supported_onnx_ops() {
  auto v = detail::lowered_ops();
  std::sort(v.begin(), v.end());
  return v;
}

namespace {

onnx::ModelProto parse_model(std::span<const uint8_t> bytes) {
  onnx::ModelProto model;
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    detail::fail("the model is " + std::to_string(bytes.size() >> 20) +
                 " MiB; protobuf (and ONNX) cannot hold more than 2 GiB in one file: save the weights as external "
                 "data, which vnpuc does not read yet");
  if (!model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    detail::fail("not a valid ONNX model (protobuf parse failed; is the file complete?)");
  return model;
}

// Nodes the requested outputs depend on (all nodes when there is no cut). Throws for unknown names.
std::vector<bool> needed_nodes(const onnx::GraphProto& gp, const std::vector<std::string>& outs) {
  std::vector<bool> need(static_cast<size_t>(gp.node_size()), outs.empty());
  if (outs.empty())
    return need;
  std::map<std::string, int> producer;
  for (int i = 0; i < gp.node_size(); i++)
    for (const auto& o : gp.node(i).output())
      if (!o.empty())
        producer[o] = i;
  std::set<std::string> known;
  for (const auto& in : gp.input())
    known.insert(in.name());
  for (const auto& t : gp.initializer())
    known.insert(t.name());
  std::vector<std::string> todo;
  for (const auto& o : outs) {
    if (!producer.count(o) && !known.count(o))
      detail::fail("--output '" + o + "': no node produces a tensor of that name");
    todo.push_back(o);
  }
  std::set<std::string> seen;
  while (!todo.empty()) {
    std::string t = todo.back();
    todo.pop_back();
    if (!seen.insert(t).second)
      continue;
    auto it = producer.find(t);
    if (it == producer.end() || need[static_cast<size_t>(it->second)])
      continue;
    need[static_cast<size_t>(it->second)] = true;
    for (const auto& in : gp.node(it->second).input())
      if (!in.empty())
        todo.push_back(in);
  }
  return need;
}

// Every tensor for which ONNX shape inference found a fully static shape must have that shape in vnpuc's IR
// too: a disagreement is a compiler (or model) error, reported with the node that produces the tensor.
void cross_check_shapes(const onnx::GraphProto& gp, const detail::Graph& g) {
  std::map<std::string, const onnx::NodeProto*> producer;
  for (const auto& n : gp.node())
    for (const auto& o : n.output())
      producer[o] = &n;
  auto check = [&](const onnx::ValueInfoProto& vi) {
    if (!vi.type().has_tensor_type() || !vi.type().tensor_type().has_shape())
      return;
    detail::Shape want;
    for (const auto& d : vi.type().tensor_type().shape().dim()) {
      if (!d.has_dim_value())
        return;  // symbolic or unknown: nothing to compare
      want.push_back(d.dim_value());
    }
    auto it = g.by_name.find(vi.name());
    auto pn = producer.find(vi.name());
    if (it == g.by_name.end() || pn == producer.end())
      return;  // not compiled (after an --output cut) or a graph input
    const detail::Shape& got = g.values[it->second].shape;
    if (got != want) {
      const onnx::NodeProto& n = *pn->second;
      detail::fail("node '" + (n.name().empty() ? vi.name() : n.name()) + "' (" + n.op_type() + "): output '" +
                   vi.name() + "' is " + detail::shape_str(got) + " in vnpuc but " + detail::shape_str(want) +
                   " by ONNX shape inference");
    }
  };
  for (const auto& vi : gp.value_info())
    check(vi);
  for (const auto& vi : gp.output())
    check(vi);
}

}  // namespace

std::vector<OpUse> onnx_op_uses(std::span<const uint8_t> bytes) {
  onnx::ModelProto model = parse_model(bytes);
  auto sup = detail::lowered_ops();
  std::set<std::string> ok(sup.begin(), sup.end());
  std::vector<OpUse> uses;
  std::map<std::string, size_t> at;
  for (const auto& n : model.graph().node()) {
    bool def = n.domain().empty() || n.domain() == "ai.onnx";
    std::string key = def ? n.op_type() : n.domain() + "::" + n.op_type();
    auto it = at.find(key);
    if (it == at.end()) {
      at[key] = uses.size();
      uses.push_back({key, 0, def && ok.count(n.op_type()) > 0, n.name()});
      it = at.find(key);
    }
    uses[it->second].count++;
  }
  return uses;
}

ModelFile compile_onnx(std::span<const uint8_t> bytes, const CompileOptions& options, CompileStats* stats) {
  using namespace detail;
  onnx::ModelProto model = parse_model(bytes);
  if (!model.has_graph())
    fail("the ONNX model has no graph");
  int64_t opset = -1;
  for (const auto& o : model.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx")
      opset = o.version();
  if (opset < 0)
    opset = 1;
  if (opset > 18)
    fail("opset " + std::to_string(opset) + " is newer than vnpuc supports (<= 18)");
  bool onnx_checks = opset <= 17 && options.onnx_checks;
  const auto& gp = model.graph();
  Graph g;
  std::set<std::string> init_names;
  for (const auto& t : gp.initializer()) {
    init_names.insert(t.name());
    g.by_name[t.name()] = g.add_const(const_from_proto(t, "initializer"), t.name());
  }
  std::set<std::string> used_overrides;
  {
    std::set<std::string> real;
    std::string names;
    for (const auto& in : gp.input())
      if (!init_names.count(in.name())) {
        real.insert(in.name());
        names += (names.empty() ? "" : ", ") + in.name();
      }
    for (const auto& o : options.inputs)
      if (!real.count(o.name))
        fail("--input names '" + o.name + "', which is not a graph input (inputs: " + names + ")");
  }
  for (const auto& in : gp.input()) {
    if (init_names.count(in.name()))
      continue;  // IR < 4 lists initializers as inputs too
    const auto* ov = [&]() -> const InputOverride* {
      for (const auto& o : options.inputs)
        if (o.name == in.name())
          return &o;
      return nullptr;
    }();
    Value v;
    v.name = in.name();
    v.graph_input = true;
    if (!in.type().has_tensor_type())
      fail("input '" + in.name() + "' is not a tensor");
    const auto& tt = in.type().tensor_type();
    if (tt.elem_type() != onnx::TensorProto::FLOAT)
      fail("input '" + in.name() + "' has element type " + std::to_string(tt.elem_type()) +
           "; vnpu programs take f32 inputs only");
    if (ov) {
      used_overrides.insert(ov->name);
      if (tt.has_shape() && tt.shape().dim_size() != static_cast<int>(ov->shape.size()))
        fail("--input " + ov->name + ": rank " + std::to_string(ov->shape.size()) + " but the model says " +
             std::to_string(tt.shape().dim_size()));
      v.shape = ov->shape;
    } else {
      if (!tt.has_shape())
        fail("input '" + in.name() + "' has no shape; give it with --input " + in.name() + ":DIMS");
      for (const auto& d : tt.shape().dim()) {
        if (!d.has_dim_value() || d.dim_value() < 0)
          fail("input '" + in.name() + "' has a dynamic dimension" +
               (d.has_dim_param() ? " '" + d.dim_param() + "'" : std::string()) + "; give its shape with --input " +
               in.name() + ":1x3x640x640 (for example)");
        v.shape.push_back(d.dim_value());
      }
    }
    int64_t elems = 1;
    for (int64_t d : v.shape) {
      if (d > UINT32_MAX || (d && elems > (int64_t{1} << 40) / d))
        fail("input '" + in.name() + "' shape " + shape_str(v.shape) + " is too large");
      elems *= d;
    }
    int id = g.add_value(std::move(v));
    g.by_name[in.name()] = id;
    g.inputs.push_back(id);
    g.input_names.push_back(in.name());
  }
  g.stats.onnx_nodes = static_cast<uint32_t>(gp.node_size());
  std::vector<bool> need = needed_nodes(gp, options.outputs);
  for (int ni = 0; ni < gp.node_size(); ni++)
    if (need[static_cast<size_t>(ni)])
      for (const auto& in : gp.node(ni).input())
        g.consumed.insert(in);
  if (options.outputs.empty())
    for (const auto& out : gp.output())
      g.consumed.insert(out.name());
  for (const auto& name : options.outputs)
    g.consumed.insert(name);
  for (int ni = 0; ni < gp.node_size(); ni++) {
    const auto& node = gp.node(ni);
    if (!need[static_cast<size_t>(ni)])
      continue;  // after the --output cut
    try {
      lower_node(g, node, opset);
    } catch (const CompileError&) {
      throw;
    } catch (const std::bad_alloc&) {
      fail("node '" + node.name() + "' (" + node.op_type() + "): out of memory");
    } catch (const std::exception& e) {  // a malformed model that slipped past a check: still a clear error
      fail("node '" + node.name() + "' (" + node.op_type() + "): malformed (" + e.what() + ")");
    }
  }
  std::vector<std::string> out_names = options.outputs;
  if (out_names.empty())
    for (const auto& out : gp.output())
      out_names.push_back(out.name());
  for (const auto& name : out_names) {
    auto it = g.by_name.find(name);
    if (it == g.by_name.end())
      fail("graph output '" + name + "' is never produced");
    if (std::find(g.output_names.begin(), g.output_names.end(), name) != g.output_names.end())
      fail("output '" + name + "' is named twice");
    g.outputs.push_back(it->second);
    g.output_names.push_back(name);
  }
  if (g.outputs.empty())
    fail("the graph has no outputs");
  // libonnx's own checker and shape inference (Debian's libonnx 1.12 knows opsets <= 17), with the --input
  // shapes in place; every inferred static shape is cross-checked against vnpuc's. Only after vnpuc's own
  // lowering accepted every node: libonnx 1.12's inference crashes on some malformed nodes (e.g. a Conv whose
  // attributes disagree with its weights, convPoolShapeInference), which vnpuc rejects with a clear error.
  if (onnx_checks) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      fail(std::string("the ONNX checker rejects the model: ") + e.what());
    }
    for (auto& in : *model.mutable_graph()->mutable_input())
      for (const auto& o : options.inputs)
        if (o.name == in.name() && in.type().has_tensor_type()) {
          auto* shp = in.mutable_type()->mutable_tensor_type()->mutable_shape();
          shp->clear_dim();
          for (int64_t d : o.shape)
            shp->add_dim()->set_dim_value(d);
        }
    try {
      onnx::ShapeInferenceOptions sio(false, 0, true);  // data propagation: shapes computed by Shape arithmetic
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), sio);
    } catch (const std::exception& e) {
      fail(std::string("ONNX shape inference rejects the model: ") + e.what());
    }
    cross_check_shapes(model.graph(), g);
  }
  run_passes(g, options);
  ModelFile m = emit_model(g, options);
  std::string producer = "vnpuc " + std::string(VNPU_COMPILER_VERSION) + "; onnx opset " + std::to_string(opset);
  if (!model.producer_name().empty())
    producer += "; exported by " + model.producer_name() + " " + model.producer_version();
  m.set_producer(producer);
  m.validate();
  if (stats)
    *stats = g.stats;
  return m;
}

ModelFile compile_onnx_file(const std::string& path, const CompileOptions& options, CompileStats* stats) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw CompileError(path + ": cannot open: " + std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return compile_onnx(bytes, options, stats);
  } catch (const CompileError& e) {
    throw CompileError(path + ": " + e.what());
  } catch (const FormatError& e) {
    throw CompileError(path + ": internal: " + e.what());
  }
}

}  // namespace vnpu
