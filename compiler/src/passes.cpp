// SPDX-License-Identifier: MIT
// Graph rewrites on the ISA-level IR: SiLU, GELU and LayerNorm recognition, padding and BatchNorm/bias
// folding into convolutions, activation fusion, dead-op elimination.
#include <cmath>
#include <cstring>
#include <memory>

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
    case VNPU_ISA_OP_NORM:
      *alpha = &op.attr.norm.act_alpha;
      *beta = &op.attr.norm.act_beta;
      return &op.attr.norm.act;
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

// Add(Conv(x), r) with r of the convolution's output shape (a residual connection): the convolution adds r
// itself (F_RESIDUAL) and the Add disappears; an activation after the Add then fuses into the convolution too.
// r must be computed before the convolution runs (it is then read there instead of at the Add).
bool device_accepts(const Graph& g, const Op& op);

void fuse_residual(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (size_t ai = 0; ai < g.ops.size(); ai++) {
    Op& add = g.ops[ai];
    if (add.dead || add.opcode != VNPU_ISA_OP_BINARY || add.attr.binary.kind != VNPU_ISA_BIN_ADD ||
        add.attr.binary.act != VNPU_ISA_ACT_NONE)
      continue;
    for (int side = 0; side < 2; side++) {
      int cv = add.in[side], r = add.in[1 - side];
      const Shape& ys = g.values[add.out[0]].shape;
      if (g.values[cv].shape != ys || g.values[r].shape != ys || g.values[r].is_const || cv == r)
        continue;
      if (g.values[cv].alias_of >= 0 || prod[cv] < 0 || uses[cv] != 1)
        continue;
      size_t ci = static_cast<size_t>(prod[cv]);
      Op& c = g.ops[ci];
      if (c.dead || c.opcode != VNPU_ISA_OP_CONV || c.attr.conv.act != VNPU_ISA_ACT_NONE ||
          (c.attr.conv.flags & VNPU_ISA_CONV_F_RESIDUAL))
        continue;
      int rp = prod[g.root(r)];
      if (rp >= 0 && static_cast<size_t>(rp) >= ci)
        continue;  // r is computed after the convolution
      Op fused = c;
      fused.attr.conv.flags |= VNPU_ISA_CONV_F_RESIDUAL;
      fused.in.push_back(r);
      fused.out[0] = add.out[0];
      if (!device_accepts(g, fused))
        continue;
      c = fused;
      add.dead = true;
      g.stats.fused_nodes++;
      uses = count_uses(g);
      prod = producers(g);
      break;
    }
  }
}

// The single value of a one-element constant, if v is one.
bool scalar_of(const Graph& g, int v, float* out) {
  const Value& val = g.values[v];
  if (!val.is_const || !val.c.is_float || val.c.f.size() != 1)
    return false;
  *out = val.c.f[0];
  return true;
}

bool is_binary(const Op& op, uint32_t kind) {
  return !op.dead && op.opcode == VNPU_ISA_OP_BINARY && op.attr.binary.kind == kind && !op.attr.binary.act;
}

// The producer of v when v is an op's own (non-view) output used by exactly `want` readers, else null.
Op* sole_producer(Graph& g, const std::vector<int>& prod, const std::vector<int>& uses, int v, int want = 1) {
  if (g.values[v].alias_of >= 0 || prod[v] < 0 || uses[v] != want)
    return nullptr;
  Op* p = &g.ops[prod[v]];
  return p->dead ? nullptr : p;
}

// The REDUCE MEAN over the trailing dims >= some axis of x; returns the axis or -1.
int64_t mean_over_trailing(const Graph& g, const Op* r, int x) {
  if (!r || r->opcode != VNPU_ISA_OP_REDUCE || r->attr.reduce.kind != VNPU_ISA_REDUCE_MEAN || r->in[0] != x)
    return -1;
  const Shape& xs = g.values[x].shape;
  uint32_t mask = r->attr.reduce.axes;
  if (!mask || xs.empty())
    return -1;
  int64_t ax = static_cast<int64_t>(xs.size());
  while (ax > 0 && (mask & (1u << (ax - 1))))
    ax--;
  return mask == static_cast<uint32_t>(((uint64_t{1} << xs.size()) - 1) & ~((uint64_t{1} << ax) - 1)) ? ax : -1;
}

// LayerNorm as PyTorch < opset 17 exports it: d = x - ReduceMean(x); y = d / Sqrt(ReduceMean(Pow(d, 2)) + eps)
// over the trailing dims -> one NORM op (scale 1, bias 0; a following Mul/Add by constants folds into them).
void fuse_layernorm(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (size_t i = 0; i < g.ops.size(); i++) {
    Op& div = g.ops[i];
    if (!is_binary(div, VNPU_ISA_BIN_DIV))
      continue;
    int d = div.in[0];
    Op* sq = sole_producer(g, prod, uses, div.in[1]);
    Op* sub = sole_producer(g, prod, uses, d, uses[d] == 3 ? 3 : 2);  // 3 when the square is Mul(d, d)
    if (!sq || !sub || sq->opcode != VNPU_ISA_OP_UNARY || sq->attr.unary.act != VNPU_ISA_ACT_SQRT ||
        !is_binary(*sub, VNPU_ISA_BIN_SUB))
      continue;
    int x = sub->in[0];
    if (g.values[x].shape != g.values[d].shape || g.values[d].shape != g.values[div.out[0]].shape)
      continue;
    Op* m1 = sole_producer(g, prod, uses, sub->in[1]);
    int64_t ax = mean_over_trailing(g, m1, x);
    if (ax < 0)
      continue;
    Op* add = sole_producer(g, prod, uses, sq->in[0]);
    float eps;
    if (!add || !is_binary(*add, VNPU_ISA_BIN_ADD) || !scalar_of(g, add->in[1], &eps) || !(eps >= 0.0f))
      continue;
    Op* m2 = sole_producer(g, prod, uses, add->in[0]);
    if (!m2 || mean_over_trailing(g, m2, m2->in[0]) != ax)
      continue;
    Op* pw = sole_producer(g, prod, uses, m2->in[0]);
    float two;
    bool square =
        pw && ((is_binary(*pw, VNPU_ISA_BIN_POW) && pw->in[0] == d && scalar_of(g, pw->in[1], &two) && two == 2.0f) ||
               (is_binary(*pw, VNPU_ISA_BIN_MUL) && pw->in[0] == d && pw->in[1] == d));
    if (!square || g.values[m2->in[0]].shape != g.values[x].shape)
      continue;
    const Shape& xs = g.values[x].shape;
    int64_t inner = 1;
    for (size_t k = static_cast<size_t>(ax); k < xs.size(); k++)
      inner *= xs[k];
    Const one, zero;
    one.shape = zero.shape = {inner};
    one.f.assign(static_cast<size_t>(inner), 1.0f);
    zero.f.assign(static_cast<size_t>(inner), 0.0f);
    for (Op* o : {m1, sub, pw, m2, add, sq})
      o->dead = true;
    int s = g.add_const(std::move(one)), b = g.add_const(std::move(zero));
    Op& nd = g.ops[i];  // the vector of ops does not grow here; values may have
    nd.opcode = VNPU_ISA_OP_NORM;
    std::memset(&nd.attr, 0, sizeof nd.attr);
    nd.attr.norm.axis = static_cast<uint32_t>(ax);
    nd.attr.norm.epsilon = eps;
    nd.in = {x, s, b};
    g.stats.fused_nodes += 6;
    uses = count_uses(g);
    prod = producers(g);
  }
}

// NORM followed by Mul / Add with a constant over the normalised dims: fold into its scale and shift.
void fold_norm_affine(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& f : g.ops) {
    bool mul = is_binary(f, VNPU_ISA_BIN_MUL), add = is_binary(f, VNPU_ISA_BIN_ADD);
    if (!mul && !add)
      continue;
    for (int side = 0; side < 2; side++) {
      int v = f.in[side], k = f.in[1 - side];
      Op* nm = sole_producer(g, prod, uses, v);
      if (!nm || nm->opcode != VNPU_ISA_OP_NORM || nm->attr.norm.act || !g.values[k].is_const ||
          !g.values[k].c.is_float || !g.values[nm->in[1]].is_const || !g.values[nm->in[2]].is_const)
        continue;
      const Shape& ys = g.values[v].shape;
      if (g.values[f.out[0]].shape != ys)
        continue;
      Shape inner(ys.begin() + nm->attr.norm.axis, ys.end()), ks = g.values[k].shape;
      while (!ks.empty() && ks[0] == 1)
        ks.erase(ks.begin());
      if (ks.size() > inner.size())
        continue;
      bool fits = true;  // every constant dim is 1 or the normalised dim it lines up with
      for (size_t j = 0; j < ks.size(); j++)
        fits = fits && (ks[j] == 1 || ks[j] == inner[inner.size() - ks.size() + j]);
      if (!fits)
        continue;
      Const kc = reshape_const(g.values[k].c, ks);
      Const s = reshape_const(g.values[nm->in[1]].c, inner), b = reshape_const(g.values[nm->in[2]].c, inner);
      int64_t cnt = numel(inner);
      if (mul) {
        s = binary_const("Mul", s, kc);
        b = binary_const("Mul", b, kc);
      } else {
        b = binary_const("Add", b, kc);
      }
      if (numel(s.shape) != cnt || numel(b.shape) != cnt)
        continue;
      nm->in[1] = g.add_const(reshape_const(s, {cnt}));
      nm->in[2] = g.add_const(reshape_const(b, {cnt}));
      nm->out[0] = f.out[0];
      f.dead = true;
      g.stats.fused_nodes++;
      uses = count_uses(g);
      prod = producers(g);
      break;
    }
  }
}

// GELU as PyTorch exports nn.GELU(): Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5) -> one GELU activation.
void fuse_gelu(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& half : g.ops) {
    float c;
    if (!is_binary(half, VNPU_ISA_BIN_MUL) || !scalar_of(g, half.in[1], &c) || c != 0.5f)
      continue;
    Op* m = sole_producer(g, prod, uses, half.in[0]);
    if (!m || !is_binary(*m, VNPU_ISA_BIN_MUL))
      continue;
    for (int side = 0; side < 2; side++) {
      int x = m->in[side];
      Op* add = sole_producer(g, prod, uses, m->in[1 - side]);
      if (!add || !is_binary(*add, VNPU_ISA_BIN_ADD) || !scalar_of(g, add->in[1], &c) || c != 1.0f)
        continue;
      Op* erf = sole_producer(g, prod, uses, add->in[0]);
      if (!erf || erf->opcode != VNPU_ISA_OP_UNARY || erf->attr.unary.act != VNPU_ISA_ACT_ERF)
        continue;
      Op* sc = sole_producer(g, prod, uses, erf->in[0]);
      bool scaled =
          sc && sc->in[0] == x &&
          ((is_binary(*sc, VNPU_ISA_BIN_DIV) && scalar_of(g, sc->in[1], &c) && std::fabs(c - 1.41421356f) < 1e-6f) ||
           (is_binary(*sc, VNPU_ISA_BIN_MUL) && scalar_of(g, sc->in[1], &c) && std::fabs(c - 0.70710678f) < 1e-6f));
      if (!scaled || g.values[x].shape != g.values[half.out[0]].shape)
        continue;
      for (Op* o : {sc, erf, add, m})
        o->dead = true;
      half.opcode = VNPU_ISA_OP_UNARY;
      std::memset(&half.attr, 0, sizeof half.attr);
      half.attr.unary.act = VNPU_ISA_ACT_GELU;
      half.in = {x};
      g.stats.fused_nodes += 4;
      uses = count_uses(g);
      prod = producers(g);
      break;
    }
  }
}

// Checks an op with the device's rules after a rewrite (shapes come from the values).
bool device_accepts(const Graph& g, const Op& op) {
  auto args = std::make_unique<VnpuOpArgs>();
  std::memset(args.get(), 0, sizeof(VnpuOpArgs));
  args->opcode = op.opcode;
  args->num_inputs = static_cast<uint32_t>(op.in.size());
  args->num_outputs = static_cast<uint32_t>(op.out.size());
  args->attr = op.attr;
  size_t k = 0;
  for (const auto* list : {&op.in, &op.out})
    for (int v : *list) {
      VnpuTensor& t = args->t[k++];
      const Shape& s = g.values[v].shape;
      t.rank = static_cast<uint32_t>(s.size());
      t.count = 1;
      for (size_t d = 0; d < s.size(); d++) {
        t.dims[d] = static_cast<uint64_t>(s[d]);
        t.count *= t.dims[d];
      }
    }
  return vnpu_ops_check(args.get()) == 0;
}

// Zero padding of H and W right before a convolution (or an average pooling that counts padding): becomes the
// op's own padding, so the padded tensor is never materialised.
void fold_pad(Graph& g) {
  auto uses = count_uses(g);
  auto prod = producers(g);
  for (Op& c : g.ops) {
    bool conv = !c.dead && c.opcode == VNPU_ISA_OP_CONV;
    bool avg = !c.dead && c.opcode == VNPU_ISA_OP_POOL && c.attr.pool.kind == VNPU_ISA_POOL_AVG;
    if (!conv && !avg)
      continue;
    Op* p = sole_producer(g, prod, uses, c.in[0]);
    if (!p || p->opcode != VNPU_ISA_OP_PAD || p->attr.pad.mode != VNPU_ISA_PAD_CONSTANT || p->attr.pad.value != 0.0f)
      continue;
    const auto& pa = p->attr.pad;
    if (g.values[p->in[0]].shape.size() != 4 || pa.begin[0] || pa.end[0] || pa.begin[1] || pa.end[1])
      continue;
    if (avg) {
      bool own_pad =
          c.attr.pool.pad_begin[0] || c.attr.pool.pad_begin[1] || c.attr.pool.pad_end[0] || c.attr.pool.pad_end[1];
      if (own_pad && !(c.attr.pool.flags & VNPU_ISA_POOL_F_COUNT_PAD))
        continue;  // its own padding is not counted, the explicit zeros are
    }
    Op trial = c;
    trial.in[0] = p->in[0];
    uint32_t* pb = conv ? trial.attr.conv.pad_begin : trial.attr.pool.pad_begin;
    uint32_t* pe = conv ? trial.attr.conv.pad_end : trial.attr.pool.pad_end;
    for (int d = 0; d < 2; d++) {
      pb[d] += pa.begin[2 + d];
      pe[d] += pa.end[2 + d];
    }
    if (avg)
      trial.attr.pool.flags |= VNPU_ISA_POOL_F_COUNT_PAD;
    if (!device_accepts(g, trial))
      continue;
    c = trial;
    p->dead = true;
    g.stats.fused_nodes++;
    uses = count_uses(g);
    prod = producers(g);
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
  fuse_gelu(g);
  fuse_layernorm(g);
  fold_norm_affine(g);
  fold_pad(g);
  if (opt.fold_batchnorm)
    fold_into_conv(g);
  if (opt.fuse_activations) {
    fuse_residual(g);
    fuse_activations(g);
  }
  eliminate_dead(g);
}

}  // namespace vnpu::detail
