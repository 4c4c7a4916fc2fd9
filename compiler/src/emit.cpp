// SPDX-License-Identifier: MIT
// Memory planning (weights layout, liveness-based scratch reuse) and program serialization.
#include <algorithm>
#include <cstring>

#include "graph.h"

namespace vnpu::detail {
namespace {

constexpr uint64_t kAlign = 64;

uint64_t align_up(uint64_t v) {
  return (v + kAlign - 1) / kAlign * kAlign;
}
uint64_t bytes_of(const Shape& s) {
  return static_cast<uint64_t>(numel(s)) * 4;
}

struct Location {
  uint32_t binding = UINT32_MAX;
  uint64_t offset = 0;
};

template <class T>
void put(std::vector<uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

}  // namespace

ModelFile emit_model(Graph& g, const CompileOptions& opt) {
  // 1. Every graph output gets its own value, produced by an op, not a view or constant or input.
  std::vector<bool> claimed(g.values.size(), false);
  for (size_t j = 0; j < g.outputs.size(); j++) {
    int v = g.outputs[j];
    Value& val = g.values[v];
    if (val.is_const || val.alias_of >= 0 || val.graph_input || claimed[v]) {
      Value copy;
      copy.shape = val.shape;
      copy.name = g.output_names[j];
      int w = g.add_value(std::move(copy));
      Op op;
      op.opcode = VNPU_ISA_OP_COPY;
      op.in = {v};
      op.out = {w};
      op.node = "output '" + g.output_names[j] + "'";
      g.ops.push_back(std::move(op));
      g.outputs[j] = w;
      v = w;
      claimed.resize(g.values.size(), false);
    }
    claimed[v] = true;
    g.values[v].graph_output = true;
  }

  std::vector<const Op*> ops;
  for (const Op& op : g.ops)
    if (!op.dead)
      ops.push_back(&op);
  g.stats.program_ops = static_cast<uint32_t>(ops.size());

  // 2. Bindings: weights, inputs, outputs, scratch.
  std::vector<vnpu_isa_binding> bindings;
  std::vector<Location> loc(g.values.size());
  bindings.push_back({VNPU_ISA_BIND_WEIGHTS, 0, 0});
  ModelFile model;
  for (size_t j = 0; j < g.inputs.size(); j++) {
    int v = g.inputs[j];
    loc[v] = {static_cast<uint32_t>(bindings.size()), 0};
    bindings.push_back({VNPU_ISA_BIND_INPUT, 0, bytes_of(g.values[v].shape)});
    model.add_input(
        {g.input_names[j], VNPU_DTYPE_F32, g.values[v].shape, loc[v].binding, 0, bytes_of(g.values[v].shape)});
  }
  for (size_t j = 0; j < g.outputs.size(); j++) {
    int v = g.outputs[j];
    loc[v] = {static_cast<uint32_t>(bindings.size()), 0};
    bindings.push_back({VNPU_ISA_BIND_OUTPUT, 0, bytes_of(g.values[v].shape)});
    model.add_output(
        {g.output_names[j], VNPU_DTYPE_F32, g.values[v].shape, loc[v].binding, 0, bytes_of(g.values[v].shape)});
  }
  uint32_t scratch_binding = static_cast<uint32_t>(bindings.size());

  // 3. Weights: every constant an op reads, 64-byte aligned, in first-use order.
  std::vector<uint8_t> weights;
  for (const Op* op : ops)
    for (int v : op->in) {
      const Value& val = g.values[v];
      if (!val.is_const || loc[v].binding != UINT32_MAX)
        continue;
      loc[v] = {0, weights.size()};
      const auto* p = reinterpret_cast<const uint8_t*>(val.c.f.data());
      weights.insert(weights.end(), p, p + val.c.f.size() * 4);
      weights.resize(align_up(weights.size()), 0);
    }
  bindings[0].size = weights.size();
  g.stats.weights_bytes = weights.size();

  // 4. Scratch: intermediate storage roots live from their producing op to their last reader.
  struct Interval {
    int root;
    size_t first, last;
    uint64_t size, offset;
  };
  std::vector<int> first(g.values.size(), -1), last(g.values.size(), -1);
  for (size_t i = 0; i < ops.size(); i++) {
    for (int v : ops[i]->out) {
      int r = g.root(v);
      if (first[r] < 0)
        first[r] = static_cast<int>(i);
      last[r] = std::max(last[r], static_cast<int>(i));
    }
    for (int v : ops[i]->in) {
      int r = g.root(v);
      last[r] = std::max(last[r], static_cast<int>(i));
    }
  }
  std::vector<Interval> iv;
  for (size_t r = 0; r < g.values.size(); r++) {
    const Value& val = g.values[r];
    if (first[r] < 0 || val.alias_of >= 0 || val.is_const || val.graph_input || val.graph_output)
      continue;
    iv.push_back({static_cast<int>(r), static_cast<size_t>(first[r]), static_cast<size_t>(last[r]),
                  align_up(bytes_of(val.shape)), 0});
  }
  std::sort(iv.begin(), iv.end(), [](const Interval& a, const Interval& b) {
    return a.size != b.size ? a.size > b.size : a.first < b.first;
  });
  uint64_t scratch = 0, unplanned = 0;
  std::vector<const Interval*> placed;
  for (Interval& it : iv) {
    unplanned += it.size;
    uint64_t off = 0;
    if (opt.plan_memory) {
      // First fit among buffers whose lifetimes overlap this one.
      std::vector<std::pair<uint64_t, uint64_t>> busy;
      for (const Interval* p : placed)
        if (!(p->last < it.first || it.last < p->first))
          busy.emplace_back(p->offset, p->offset + p->size);
      std::sort(busy.begin(), busy.end());
      for (auto [b, e] : busy) {
        if (off + it.size <= b)
          break;
        off = std::max(off, e);
      }
    } else {
      off = scratch;
    }
    it.offset = off;
    scratch = std::max(scratch, off + it.size);
    placed.push_back(&it);
    loc[it.root] = {scratch_binding, off};
  }
  g.stats.scratch_bytes = scratch;
  g.stats.scratch_unplanned = unplanned;
  if (!iv.empty())
    bindings.push_back({VNPU_ISA_BIND_SCRATCH, 0, scratch});

  // 5. Tensor table: one entry per value an op touches; views share their root's location.
  std::vector<int> tensor_of(g.values.size(), -1);
  std::vector<vnpu_isa_tensor> tensors;
  auto tensor = [&](int v) {
    if (tensor_of[v] >= 0)
      return static_cast<uint32_t>(tensor_of[v]);
    const Value& val = g.values[v];
    Location l = val.is_const ? loc[v] : loc[g.root(v)];
    if (l.binding == UINT32_MAX)
      fail("internal: value '" + val.name + "' has no storage");
    vnpu_isa_tensor t{};
    t.binding = l.binding;
    t.dtype = VNPU_DTYPE_F32;
    t.rank = static_cast<uint8_t>(val.shape.size());
    t.offset = l.offset;
    for (size_t d = 0; d < val.shape.size(); d++)
      t.dims[d] = static_cast<uint32_t>(val.shape[d]);
    tensor_of[v] = static_cast<int>(tensors.size());
    tensors.push_back(t);
    return static_cast<uint32_t>(tensors.size() - 1);
  };

  std::vector<uint8_t> stream;
  for (const Op* op : ops) {
    vnpu_isa_op rec{};
    rec.opcode = static_cast<uint16_t>(op->opcode);
    rec.num_inputs = static_cast<uint8_t>(op->in.size());
    rec.num_outputs = static_cast<uint8_t>(op->out.size());
    rec.attr_size = static_cast<uint32_t>(vnpu_isa_attr_size(op->opcode));
    size_t nops = op->in.size() + op->out.size();
    size_t operand_bytes = (nops * 4 + 7) / 8 * 8;
    rec.size = static_cast<uint32_t>(sizeof(rec) + operand_bytes + rec.attr_size);
    put(stream, rec);
    for (int v : op->in)
      put(stream, tensor(v));
    for (int v : op->out)
      put(stream, tensor(v));
    if (nops % 2)
      put(stream, uint32_t{0});
    const auto* a = reinterpret_cast<const uint8_t*>(&op->attr);
    stream.insert(stream.end(), a, a + rec.attr_size);
  }

  vnpu_isa_program hdr{};
  hdr.magic = VNPU_ISA_PROGRAM_MAGIC;
  hdr.version_major = VNPU_ISA_VERSION_MAJOR;
  hdr.version_minor = VNPU_ISA_VERSION_MINOR;
  hdr.header_size = sizeof(hdr);
  hdr.num_bindings = static_cast<uint32_t>(bindings.size());
  hdr.num_tensors = static_cast<uint32_t>(tensors.size());
  hdr.num_ops = static_cast<uint32_t>(ops.size());
  hdr.bindings_offset = sizeof(hdr);
  hdr.tensors_offset = hdr.bindings_offset + bindings.size() * sizeof(vnpu_isa_binding);
  hdr.ops_offset = hdr.tensors_offset + tensors.size() * sizeof(vnpu_isa_tensor);
  hdr.ops_size = stream.size();
  hdr.total_size = hdr.ops_offset + hdr.ops_size;
  if (hdr.total_size > VNPU_PROG_MAX_LEN)
    fail("the program is larger than the device's limit (VNPU_PROG_MAX_LEN)");
  if (bindings.size() > VNPU_ISA_MAX_BINDINGS)
    fail("the model has " + std::to_string(g.inputs.size()) + " inputs and " + std::to_string(g.outputs.size()) +
         " outputs; the device supports at most " + std::to_string(VNPU_ISA_MAX_BINDINGS - 2) + " together");
  std::vector<uint8_t> prog;
  prog.reserve(hdr.total_size);
  put(prog, hdr);
  for (const auto& b : bindings)
    put(prog, b);
  for (const auto& t : tensors)
    put(prog, t);
  prog.insert(prog.end(), stream.begin(), stream.end());

  // The device's own validator must accept what we emit.
  uint32_t bad = 0;
  if (vnpu_program_validate(prog.data(), prog.size(), hdr.num_bindings, &bad) != VNPU_CPL_OK)
    fail("internal: emitted program fails device validation at op " + std::to_string(bad) +
         (bad < ops.size() ? " (" + ops[bad]->node + ")" : std::string()));
  model.set_program(std::move(prog));
  model.set_weights(std::move(weights));
  return model;
}

}  // namespace vnpu::detail
