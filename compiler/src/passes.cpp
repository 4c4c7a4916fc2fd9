// SPDX-License-Identifier: MIT
// Graph rewrites on the ISA-level IR: SiLU recognition, BatchNorm and bias folding into convolutions,
// activation fusion, dead-op elimination.
#include <cstring>

#include "graph.h"

namespace vnpu::detail {
namespace {

// Uses of each storage root by live ops (through any alias view), plus one per graph output.
std::vector<int> count_uses(const Graph& g) {
  std::vector<int> uses(g.values.size(), 0);
  for (const Op& op : g.ops) {
    if (op.dead)
      continue;
    for (int v : op.in)
      uses[g.root(v)]++;
  }
  for (int v : g.outputs)
    uses[g.root(v)]++;
  return uses;
}

std::vector<int> producers(const Graph& g) {
  std::vector<int> prod(g.values.size(), -1);
  for (size_t i = 0; i < g.ops.size(); i++) {
    if (g.ops[i].dead)
      continue;
    for (int v : g.ops[i].out)
      prod[v] = static_cast<int>(i);
  }
  return prod;
}

uint32_t* act_field(Op& op, float** alpha, float** beta) {
  switch (op.opcode) {
    case VNPU_ISA_OP_CONV:
    case VNPU_ISA_OP_CONV_TRANSPOSE:
      *alpha = &op.attr.conv.act_alpha;
      *beta = &op.attr.conv.act_beta;
      return &op.attr.conv.act;
    case VNPU_ISA_OP_MATMUL:
      *alpha = &op.attr.matmul.act_alpha;
      *beta = &op.attr.matmul.act_beta;
      return &op.attr.matmul.act;
    case VNPU_ISA_OP_BINARY:
      *alpha = &op.attr.binary.act_alpha;
      *beta = &op.attr.binary.act_beta;
      return &op.attr.binary.act;
    case VNPU_ISA_OP_CHANNEL_AFFINE:
      *alpha = &op.attr.affine.act_alpha;
      *beta = &op.attr.affine.act_beta;
      return &op.attr.affine.act;
    default: return nullptr;
  }
}

// x * sigmoid(x) -> UNARY SILU (how PyTorch exports nn.SiLU before opset 14 has no HardSwish-like op).
void fuse_silu(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& m : g.ops) {
    if (m.dead || m.opcode != VNPU_ISA_OP_BINARY || m.attr.binary.kind != VNPU_ISA_BIN_MUL || m.attr.binary.act)
      continue;
    for (int side = 0; side < 2; side++) {
      int s = m.in[side], x = m.in[1 - side];
      if (g.values[s].alias_of >= 0 || prod[s] < 0 || uses[s] != 1)
        continue;
      Op& sg = g.ops[prod[s]];
      if (sg.opcode != VNPU_ISA_OP_UNARY || sg.attr.unary.act != VNPU_ISA_ACT_SIGMOID || sg.in[0] != x)
        continue;
      if (g.values[x].shape != g.values[m.out[0]].shape)
        continue;
      sg.dead = true;
      VnpuOpAttr a;
      std::memset(&a, 0, sizeof a);
      a.unary.act = VNPU_ISA_ACT_SILU;
      m.opcode = VNPU_ISA_OP_UNARY;
      m.attr = a;
      m.in = {x};
      g.stats.fused_nodes++;
      break;
    }
  }
}

// Conv -> CHANNEL_AFFINE (BatchNorm) or Conv -> Add(per-channel constant): fold into weights and bias.
void fold_into_conv(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& f : g.ops) {
    if (f.dead)
      continue;
    bool affine = f.opcode == VNPU_ISA_OP_CHANNEL_AFFINE && f.attr.affine.act == VNPU_ISA_ACT_NONE;
    bool add = f.opcode == VNPU_ISA_OP_BINARY && f.attr.binary.kind == VNPU_ISA_BIN_ADD && !f.attr.binary.act;
    if (!affine && !add)
      continue;
    int side = 0;
    if (add)
      side = g.values[f.in[0]].is_const ? 1 : 0;
    int v = f.in[side];
    if (g.values[v].alias_of >= 0 || prod[v] < 0 || uses[v] != 1)
      continue;
    Op& c = g.ops[prod[v]];
    if (c.opcode != VNPU_ISA_OP_CONV || c.attr.conv.act || !g.values[c.in[1]].is_const)
      continue;
    bool has_bias = c.attr.conv.flags & VNPU_ISA_CONV_F_BIAS;
    if (has_bias && !g.values[c.in[2]].is_const)
      continue;
    const Shape& ys = g.values[v].shape;
    size_t m = static_cast<size_t>(ys[1]);
    std::vector<float> scale(m, 1.0f), shift(m, 0.0f);
    if (affine) {
      const Const &s = g.values[f.in[1]].c, &t = g.values[f.in[2]].c;
      if (!g.values[f.in[1]].is_const || !g.values[f.in[2]].is_const)
        continue;
      scale = s.f;
      shift = t.f;
    } else {
      int k = f.in[1 - side];
      if (!g.values[k].is_const)
        continue;
      // The constant must vary only along the channel axis of the 4-D output: shape [M,1,1], [1,M,1,1], ...
      const Shape& ks = g.values[k].shape;
      if (ks.size() > 4 || numel(ks) != static_cast<int64_t>(m) || g.values[f.out[0]].shape != ys)
        continue;
      bool channel_only = ks.size() >= 3 && ks[ks.size() - 3] == static_cast<int64_t>(m);
      if (m == 1)
        channel_only = true;
      if (!channel_only)
        continue;
      shift = g.values[k].c.f;
    }
    const Const& w = g.values[c.in[1]].c;
    Const nw = w;
    size_t per = w.f.size() / m;
    for (size_t o = 0; o < m; o++)
      for (size_t j = 0; j < per; j++)
        nw.f[o * per + j] = w.f[o * per + j] * scale[o];
    Const nb;
    nb.shape = {static_cast<int64_t>(m)};
    for (size_t o = 0; o < m; o++) {
      float b = has_bias ? g.values[c.in[2]].c.f[o] : 0.0f;
      nb.f.push_back(b * scale[o] + shift[o]);
    }
    c.in[1] = g.add_const(std::move(nw));
    int bias = g.add_const(std::move(nb));
    if (has_bias)
      c.in[2] = bias;
    else
      c.in.push_back(bias);
    c.attr.conv.flags |= VNPU_ISA_CONV_F_BIAS;
    c.out[0] = f.out[0];
    f.dead = true;
    g.stats.fused_nodes++;
    // values vector may have grown; refresh the per-value tables.
    uses = count_uses(g);
    prod = producers(g);
  }
}

// UNARY activation right after an op that can apply it on its output.
void fuse_activations(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& u : g.ops) {
    if (u.dead || u.opcode != VNPU_ISA_OP_UNARY)
      continue;
    int v = u.in[0];
    if (g.values[v].alias_of >= 0 || prod[v] < 0 || uses[v] != 1)
      continue;
    if (g.values[v].shape != g.values[u.out[0]].shape)
      continue;
    Op& p = g.ops[prod[v]];
    float *alpha, *beta;
    uint32_t* act = act_field(p, &alpha, &beta);
    if (!act || *act != VNPU_ISA_ACT_NONE)
      continue;
    *act = u.attr.unary.act;
    *alpha = u.attr.unary.act_alpha;
    *beta = u.attr.unary.act_beta;
    p.out[0] = u.out[0];
    u.dead = true;
    g.stats.fused_nodes++;
  }
}

void eliminate_dead(Graph& g) {
  std::vector<bool> live(g.values.size(), false);
  for (int v : g.outputs)
    live[g.root(v)] = true;
  for (size_t i = g.ops.size(); i-- > 0;) {
    Op& op = g.ops[i];
    if (op.dead)
      continue;
    bool any = false;
    for (int v : op.out)
      any = any || live[g.root(v)];
    if (!any) {
      op.dead = true;
      continue;
    }
    for (int v : op.in)
      live[g.root(v)] = true;
  }
}

}  // namespace

void run_passes(Graph& g, const CompileOptions& opt) {
  eliminate_dead(g);
  fuse_silu(g);
  if (opt.fold_batchnorm)
    fold_into_conv(g);
  if (opt.fuse_activations)
    fuse_activations(g);
  eliminate_dead(g);
}

}  // namespace vnpu::detail
