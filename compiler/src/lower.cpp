// SPDX-License-Identifier: MIT
// Lowering of ONNX nodes to ISA ops. Shapes are inferred here, one node at a time, and every emitted op is
// checked with the device's own vnpu_ops_check(): a model that compiles is a program the device accepts.
#include "lower.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>

namespace vnpu::detail {
namespace {

float half_to_float(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

// Reads element k of a raw little-endian buffer of `size`-byte elements.
template <class T>
T raw_at(const std::string& raw, size_t k) {
  T v;
  std::memcpy(&v, raw.data() + k * sizeof(T), sizeof(T));
  return v;
}

class Node {
 public:
  Node(Graph& g, const onnx::NodeProto& p, int64_t opset) : g_(g), p_(p), opset_(opset) {
    where_ = "node '" + (p.name().empty() ? (p.output_size() ? p.output(0) : std::string("?")) : p.name()) + "' (" +
             p.op_type() + ")";
  }
  const std::string& where() const { return where_; }
  const std::string& type() const { return p_.op_type(); }
  int64_t opset() const { return opset_; }
  [[noreturn]] void error(const std::string& msg) const { fail(where_ + ": " + msg); }

  const onnx::AttributeProto* attr(const std::string& name) const {
    for (const auto& a : p_.attribute())
      if (a.name() == name)
        return &a;
    return nullptr;
  }
  bool has(const std::string& name) const { return attr(name) != nullptr; }
  int64_t i(const std::string& name, int64_t def) const {
    auto a = attr(name);
    return a ? a->i() : def;
  }
  float f(const std::string& name, float def) const {
    auto a = attr(name);
    return a ? a->f() : def;
  }
  std::string s(const std::string& name, const std::string& def) const {
    auto a = attr(name);
    return a ? a->s() : def;
  }
  std::vector<int64_t> ints(const std::string& name) const {
    auto a = attr(name);
    return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : std::vector<int64_t>{};
  }
  std::vector<float> floats(const std::string& name) const {
    auto a = attr(name);
    return a ? std::vector<float>(a->floats().begin(), a->floats().end()) : std::vector<float>{};
  }

  size_t nin() const { return static_cast<size_t>(p_.input_size()); }
  size_t nout() const { return static_cast<size_t>(p_.output_size()); }
  /// Value id of input k, or -1 when absent (missing or empty name).
  int in(size_t k) const {
    if (k >= nin() || p_.input(static_cast<int>(k)).empty())
      return -1;
    auto it = g_.by_name.find(p_.input(static_cast<int>(k)));
    if (it == g_.by_name.end())
      error("input '" + p_.input(static_cast<int>(k)) + "' is not defined before use");
    return it->second;
  }
  int need(size_t k) const {
    int v = in(k);
    if (v < 0)
      error("required input " + std::to_string(k) + " is missing");
    return v;
  }
  const Value& val(int v) const { return g_.values[v]; }
  /// By value: lowering adds values, which may move the vector (no references into it survive).
  Shape shape(int v) const { return g_.values[v].shape; }
  /// Input k as a compile-time constant (error if it is computed at run time).
  const Const& cst(size_t k, const char* what) const {
    int v = need(k);
    if (!val(v).is_const)
      error(std::string("input '") + what + "' must be a compile-time constant (it is computed at run time)");
    return val(v).c;
  }
  std::vector<int64_t> cst_ints(size_t k, const char* what) const {
    const Const& c = cst(k, what);
    std::vector<int64_t> r(c.count());
    for (size_t j = 0; j < r.size(); j++)
      r[j] = c.int_at(j);
    return r;
  }
  bool all_const() const {
    for (size_t k = 0; k < nin(); k++) {
      int v = in(k);
      if (v >= 0 && !val(v).is_const)
        return false;
    }
    return true;
  }
  std::string out_name(size_t k) const { return k < nout() ? p_.output(static_cast<int>(k)) : std::string(); }
  /// Output k is read by a compiled node or is a model output. Used to reject optional outputs we do not
  /// compute (PyTorch names Dropout's mask even when nothing reads it).
  bool out_used(size_t k) const {
    return k < nout() && !p_.output(static_cast<int>(k)).empty() && g_.consumed.count(p_.output(static_cast<int>(k)));
  }
  void bind(size_t k, int v) const {
    if (k >= nout() || p_.output(static_cast<int>(k)).empty())
      return;
    if (g_.values[v].name.empty())
      g_.values[v].name = p_.output(static_cast<int>(k));
    g_.by_name[p_.output(static_cast<int>(k))] = v;
  }
  int64_t axis(int64_t a, size_t rank, const char* what = "axis") const {
    int64_t r = static_cast<int64_t>(rank);
    if (a < -r || a >= r)
      error(std::string(what) + " " + std::to_string(a) + " out of range for rank " + std::to_string(rank));
    return a < 0 ? a + r : a;
  }

 private:
  Graph& g_;
  const onnx::NodeProto& p_;
  int64_t opset_;
  std::string where_;
};

// Compile-time tensors are materialised in memory: keep them to a sane size (1 GiB of f32).
constexpr int64_t kMaxConstElems = int64_t{1} << 28;

void check_const_size(const Node& n, const Shape& s) {
  int64_t e = 1;
  for (int64_t d : s) {
    if (d < 0)
      n.error("negative dimension " + std::to_string(d));
    if (d && e > kMaxConstElems / d)
      n.error("tensor " + shape_str(s) + " is too large");
    e *= d;
  }
  if (e > kMaxConstElems)
    n.error("tensor " + shape_str(s) + " is too large");
}

VnpuOpAttr zero_attr() {
  VnpuOpAttr a;
  std::memset(&a, 0, sizeof a);
  return a;
}

int emit1(Graph& g, uint32_t opcode, const std::vector<int>& in, const Shape& out, const VnpuOpAttr& attr,
          const Node& n) {
  return emit_op(g, opcode, in, {out}, attr, n.where());
}

// ---- elementwise ----

struct ActInfo {
  uint32_t act;
  float alpha, beta;
};

// The elementwise ONNX ops that are one device activation: name, activation, and the defaults of the
// alpha/beta attributes where the op has them (attribute names are "alpha" and "beta").
struct UnaryOp {
  const char* name;
  uint32_t act;
  bool has_alpha, has_beta;
  float alpha, beta;
};
constexpr UnaryOp kUnaryOps[] = {
    {"Relu", VNPU_ISA_ACT_RELU, false, false, 0.0f, 0.0f},
    {"Sigmoid", VNPU_ISA_ACT_SIGMOID, false, false, 0.0f, 0.0f},
    {"Tanh", VNPU_ISA_ACT_TANH, false, false, 0.0f, 0.0f},
    {"Exp", VNPU_ISA_ACT_EXP, false, false, 0.0f, 0.0f},
    {"Log", VNPU_ISA_ACT_LOG, false, false, 0.0f, 0.0f},
    {"Sqrt", VNPU_ISA_ACT_SQRT, false, false, 0.0f, 0.0f},
    {"Neg", VNPU_ISA_ACT_NEG, false, false, 0.0f, 0.0f},
    {"Abs", VNPU_ISA_ACT_ABS, false, false, 0.0f, 0.0f},
    {"Reciprocal", VNPU_ISA_ACT_RECIPROCAL, false, false, 0.0f, 0.0f},
    {"LeakyRelu", VNPU_ISA_ACT_LEAKY_RELU, true, false, 0.01f, 0.0f},
    {"HardSigmoid", VNPU_ISA_ACT_HARD_SIGMOID, true, true, 0.2f, 0.5f},
    {"Elu", VNPU_ISA_ACT_ELU, true, false, 1.0f, 0.0f},
    {"Floor", VNPU_ISA_ACT_FLOOR, false, false, 0.0f, 0.0f},
    {"Ceil", VNPU_ISA_ACT_CEIL, false, false, 0.0f, 0.0f},
    {"Round", VNPU_ISA_ACT_ROUND, false, false, 0.0f, 0.0f},
    {"Erf", VNPU_ISA_ACT_ERF, false, false, 0.0f, 0.0f},
    {"Softplus", VNPU_ISA_ACT_SOFTPLUS, false, false, 0.0f, 0.0f},
    {"Softsign", VNPU_ISA_ACT_SOFTSIGN, false, false, 0.0f, 0.0f},
    {"HardSwish", VNPU_ISA_ACT_HARD_SWISH, false, false, 0.0f, 0.0f},
    {"Sin", VNPU_ISA_ACT_SIN, false, false, 0.0f, 0.0f},
    {"Cos", VNPU_ISA_ACT_COS, false, false, 0.0f, 0.0f},
    {"Tan", VNPU_ISA_ACT_TAN, false, false, 0.0f, 0.0f},
    {"Asin", VNPU_ISA_ACT_ASIN, false, false, 0.0f, 0.0f},
    {"Acos", VNPU_ISA_ACT_ACOS, false, false, 0.0f, 0.0f},
    {"Atan", VNPU_ISA_ACT_ATAN, false, false, 0.0f, 0.0f},
    {"Sinh", VNPU_ISA_ACT_SINH, false, false, 0.0f, 0.0f},
    {"Cosh", VNPU_ISA_ACT_COSH, false, false, 0.0f, 0.0f},
    {"Asinh", VNPU_ISA_ACT_ASINH, false, false, 0.0f, 0.0f},
    {"Acosh", VNPU_ISA_ACT_ACOSH, false, false, 0.0f, 0.0f},
    {"Atanh", VNPU_ISA_ACT_ATANH, false, false, 0.0f, 0.0f},
    {"Sign", VNPU_ISA_ACT_SIGN, false, false, 0.0f, 0.0f},
    {"Celu", VNPU_ISA_ACT_CELU, true, false, 1.0f, 0.0f},
    {"ThresholdedRelu", VNPU_ISA_ACT_THRESHOLDED_RELU, true, false, 1.0f, 0.0f},
};

ActInfo unary_act(const Node& n) {
  for (const UnaryOp& u : kUnaryOps)
    if (n.type() == u.name)
      return {u.act, u.has_alpha ? n.f("alpha", u.alpha) : 0.0f, u.has_beta ? n.f("beta", u.beta) : 0.0f};
  n.error("not an elementwise activation op");
}

void lower_unary(Graph& g, const Node& n, ActInfo act) {
  int x = n.need(0);
  if (!n.val(x).c.is_float && n.val(x).is_const) {
    if (act.act == VNPU_ISA_ACT_NEG || act.act == VNPU_ISA_ACT_ABS) {
      Const c = n.val(x).c;
      for (auto& v : c.i)
        v = act.act == VNPU_ISA_ACT_NEG ? -v : std::llabs(v);
      n.bind(0, g.add_const(std::move(c)));
      return;
    }
    n.error("integer constant input is not supported");
  }
  VnpuOpAttr a = zero_attr();
  a.unary.act = act.act;
  a.unary.act_alpha = act.alpha;
  a.unary.act_beta = act.beta;
  n.bind(0, emit1(g, VNPU_ISA_OP_UNARY, {x}, n.shape(x), a, n));
}

void lower_clip(Graph& g, const Node& n) {
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (n.opset() < 11) {
    lo = n.f("min", lo);
    hi = n.f("max", hi);
  } else {
    if (n.in(1) >= 0)
      lo = static_cast<float>(n.cst(1, "min").at(0));
    if (n.in(2) >= 0)
      hi = static_cast<float>(n.cst(2, "max").at(0));
  }
  lower_unary(g, n, {VNPU_ISA_ACT_CLIP, lo, hi});
}

void lower_binary(Graph& g, const Node& n) {
  int a = n.need(0), b = n.need(1);
  const std::string& t = n.type();
  if (n.has("broadcast") && n.i("broadcast", 0) && n.has("axis"))
    n.error("legacy broadcasting with an axis attribute (opset < 7) is not supported");
  if (n.val(a).is_const && n.val(b).is_const) {
    n.bind(0, g.add_const(binary_const(t, n.val(a).c, n.val(b).c)));
    return;
  }
  if ((n.val(a).is_const && !n.val(a).c.is_float) || (n.val(b).is_const && !n.val(b).c.is_float))
    n.error("integer tensors are not supported at run time (only f32)");
  static const std::map<std::string, uint32_t> kinds = {
      {"Add", VNPU_ISA_BIN_ADD}, {"Sub", VNPU_ISA_BIN_SUB}, {"Mul", VNPU_ISA_BIN_MUL}, {"Div", VNPU_ISA_BIN_DIV},
      {"Max", VNPU_ISA_BIN_MAX}, {"Min", VNPU_ISA_BIN_MIN}, {"Pow", VNPU_ISA_BIN_POW}, {"Mod", VNPU_ISA_BIN_FMOD}};
  if (t == "Mod" && !n.i("fmod", 0))
    n.error("floating-point Mod requires fmod=1 (ONNX spec)");
  auto it = kinds.find(t);
  if (it == kinds.end())
    n.error("this comparison/logic op needs constant inputs");
  VnpuOpAttr at = zero_attr();
  at.binary.kind = it->second;
  Shape out = broadcast_shapes(n.shape(a), n.shape(b), n.where());
  n.bind(0, emit1(g, VNPU_ISA_OP_BINARY, {a, b}, out, at, n));
}

// Mod: integer constants fold with the fmod attribute's semantics (C's truncated % for fmod = 1, the
// divisor's sign for 0); float operands need fmod = 1 (ONNX) and become BINARY FMOD, which emit_op folds with
// the device's own kernel when both are constants.
void lower_mod(Graph& g, const Node& n) {
  int a = n.need(0), b = n.need(1);
  const Value &va = n.val(a), &vb = n.val(b);
  bool ia = va.is_const && !va.c.is_float, ib = vb.is_const && !vb.c.is_float;
  if (ia && ib) {
    if (n.i("fmod", 0)) {
      Const q = binary_const("Div", va.c, vb.c), m = binary_const("Mul", q, vb.c);
      n.bind(0, g.add_const(binary_const("Sub", va.c, m)));  // x - trunc(x / y) * y: C's %
    } else {
      n.bind(0, g.add_const(binary_const("Mod", va.c, vb.c)));
    }
    return;
  }
  if (ia || ib)
    n.error("integer tensors are not supported at run time (only f32)");
  if (!n.i("fmod", 0))
    n.error("floating-point Mod requires fmod=1 (ONNX spec)");
  VnpuOpAttr at = zero_attr();
  at.binary.kind = VNPU_ISA_BIN_FMOD;
  n.bind(0, emit1(g, VNPU_ISA_OP_BINARY, {a, b}, broadcast_shapes(n.shape(a), n.shape(b), n.where()), at, n));
}

// Max/Min/Sum/Mean with any number of inputs: a left-to-right chain of binary ops (Mean divides at the end).
void lower_variadic(Graph& g, const Node& n) {
  const std::string& t = n.type();
  int acc = n.need(0);
  if (n.val(acc).is_const && !n.val(acc).c.is_float)
    n.error("integer tensors are not supported (only f32)");
  uint32_t kind = t == "Max" ? VNPU_ISA_BIN_MAX : t == "Min" ? VNPU_ISA_BIN_MIN : VNPU_ISA_BIN_ADD;
  for (size_t k = 1; k < n.nin(); k++) {
    int b = n.need(k);
    if (n.val(b).is_const && !n.val(b).c.is_float)
      n.error("integer tensors are not supported (only f32)");
    VnpuOpAttr a = zero_attr();
    a.binary.kind = kind;
    acc = emit1(g, VNPU_ISA_OP_BINARY, {acc, b}, broadcast_shapes(n.shape(acc), n.shape(b), n.where()), a, n);
  }
  if (t == "Mean" && n.nin() > 1) {
    Const c;
    c.f = {static_cast<float>(n.nin())};
    VnpuOpAttr a = zero_attr();
    a.binary.kind = VNPU_ISA_BIN_DIV;
    acc = emit1(g, VNPU_ISA_OP_BINARY, {acc, g.add_const(std::move(c))}, n.shape(acc), a, n);
  }
  n.bind(0, n.nin() == 1 && !n.val(acc).is_const ? make_alias(g, acc, n.shape(acc), n.where()) : acc);
}

// ---- shape ops (views) ----

void lower_reshape(Graph& g, const Node& n) {
  int x = n.need(0);
  std::vector<int64_t> spec = n.opset() < 5 ? n.ints("shape") : n.cst_ints(1, "shape");
  bool allowzero = n.i("allowzero", 0) != 0;
  const Shape& in = n.shape(x);
  Shape out(spec.size());
  int infer = -1;
  int64_t known = 1;
  for (size_t k = 0; k < spec.size(); k++) {
    if (spec[k] == -1) {
      if (infer >= 0)
        n.error("more than one -1 in the target shape");
      infer = static_cast<int>(k);
      continue;
    }
    if (spec[k] == 0 && !allowzero) {
      if (k >= in.size())
        n.error("0 in the target shape refers to a missing input dimension");
      out[k] = in[k];
    } else if (spec[k] < 0) {
      n.error("negative dimension " + std::to_string(spec[k]) + " in the target shape");
    } else {
      out[k] = spec[k];
    }
    known *= out[k];
  }
  if (infer >= 0) {
    if (known == 0 || numel(in) % known)
      n.error("cannot infer -1 of " + shape_str(spec) + " from " + shape_str(in));
    out[infer] = numel(in) / known;
  }
  if (numel(out) != numel(in))
    n.error("target shape " + shape_str(out) + " does not match input " + shape_str(in));
  n.bind(0, make_alias(g, x, out, n.where()));
}

void lower_flatten(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  int64_t ax = n.i("axis", 1);
  int64_t r = static_cast<int64_t>(in.size());
  if (ax < -r || ax > r)
    n.error("axis out of range");
  if (ax < 0)
    ax += r;
  int64_t outer = 1;
  for (int64_t k = 0; k < ax; k++)
    outer *= in[k];
  n.bind(0, make_alias(g, x, {outer, outer ? numel(in) / outer : 0}, n.where()));
}

void lower_squeeze(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  std::vector<int64_t> axes =
      n.opset() < 13 ? n.ints("axes") : (n.in(1) >= 0 ? n.cst_ints(1, "axes") : std::vector<int64_t>{});
  std::vector<bool> drop(in.size(), false);
  if (axes.empty()) {
    for (size_t k = 0; k < in.size(); k++)
      drop[k] = in[k] == 1;
  }
  for (int64_t a : axes) {
    int64_t k = n.axis(a, in.size());
    if (in[k] != 1)
      n.error("cannot squeeze dimension " + std::to_string(k) + " of size " + std::to_string(in[k]));
    drop[k] = true;
  }
  Shape out;
  for (size_t k = 0; k < in.size(); k++)
    if (!drop[k])
      out.push_back(in[k]);
  n.bind(0, make_alias(g, x, out, n.where()));
}

void lower_unsqueeze(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  std::vector<int64_t> axes = n.opset() < 13 ? n.ints("axes") : n.cst_ints(1, "axes");
  size_t r = in.size() + axes.size();
  std::vector<bool> ins(r, false);
  for (int64_t a : axes) {
    int64_t k = n.axis(a, r);
    if (ins[k])
      n.error("duplicate axis");
    ins[k] = true;
  }
  Shape out;
  size_t j = 0;
  for (size_t k = 0; k < r; k++)
    out.push_back(ins[k] ? 1 : in[j++]);
  n.bind(0, make_alias(g, x, out, n.where()));
}

// ---- data movement ----

void lower_transpose(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  std::vector<int64_t> perm = n.ints("perm");
  if (perm.empty())
    for (size_t k = 0; k < in.size(); k++)
      perm.push_back(static_cast<int64_t>(in.size() - 1 - k));
  if (perm.size() != in.size())
    n.error("perm has " + std::to_string(perm.size()) + " entries for rank " + std::to_string(in.size()));
  Shape out(in.size());
  std::vector<bool> seen(in.size(), false);
  bool identity = true;
  for (size_t k = 0; k < perm.size(); k++) {
    int64_t p = n.axis(perm[k], in.size(), "perm entry");
    if (seen[p])
      n.error("perm is not a permutation");
    seen[p] = true;
    perm[k] = p;
    out[k] = in[p];
    identity = identity && p == static_cast<int64_t>(k);
  }
  if (identity) {
    n.bind(0, make_alias(g, x, out, n.where()));
    return;
  }
  if (n.val(x).is_const) {
    auto st = strides_of(in);
    std::vector<size_t> src(static_cast<size_t>(numel(out)));
    for (size_t k = 0; k < src.size(); k++) {
      size_t rem = k, off = 0;
      for (size_t d = out.size(); d-- > 0;) {
        size_t coord = rem % static_cast<size_t>(out[d]);
        rem /= static_cast<size_t>(out[d]);
        off += coord * st[perm[d]];
      }
      src[k] = off;
    }
    n.bind(0, g.add_const(gather_elems(n.val(x).c, out, src)));
    return;
  }
  VnpuOpAttr a = zero_attr();
  for (size_t k = 0; k < perm.size(); k++)
    a.transpose.perm[k] = static_cast<uint32_t>(perm[k]);
  n.bind(0, emit1(g, VNPU_ISA_OP_TRANSPOSE, {x}, out, a, n));
}

// Emits (or evaluates) Y = X[start + i*step] with out_shape.
int slice_value(Graph& g, const Node& n, int x, const std::vector<int64_t>& start, const std::vector<int64_t>& step,
                const Shape& out) {
  const Shape& in = n.shape(x);
  bool identity = true;
  for (size_t d = 0; d < in.size(); d++)
    identity = identity && start[d] == 0 && step[d] == 1 && out[d] == in[d];
  if (identity)
    return make_alias(g, x, out, n.where());
  if (n.val(x).is_const) {
    auto st = strides_of(in);
    std::vector<size_t> src(static_cast<size_t>(numel(out)));
    for (size_t k = 0; k < src.size(); k++) {
      size_t rem = k;
      int64_t off = 0;
      for (size_t d = out.size(); d-- > 0;) {
        int64_t coord = static_cast<int64_t>(rem % static_cast<size_t>(out[d]));
        rem /= static_cast<size_t>(out[d]);
        off += (start[d] + coord * step[d]) * static_cast<int64_t>(st[d]);
      }
      src[k] = static_cast<size_t>(off);
    }
    return g.add_const(gather_elems(n.val(x).c, out, src));
  }
  VnpuOpAttr a = zero_attr();
  for (size_t d = 0; d < in.size(); d++) {
    a.slice.start[d] = out[d] ? start[d] : 0;
    a.slice.step[d] = step[d];
  }
  return emit_op(g, VNPU_ISA_OP_SLICE, {x}, {out}, a, n.where());
}

void lower_slice(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  std::vector<int64_t> starts, ends, axes, steps;
  if (n.opset() < 10) {
    starts = n.ints("starts");
    ends = n.ints("ends");
    axes = n.ints("axes");
  } else {
    starts = n.cst_ints(1, "starts");
    ends = n.cst_ints(2, "ends");
    if (n.in(3) >= 0)
      axes = n.cst_ints(3, "axes");
    if (n.in(4) >= 0)
      steps = n.cst_ints(4, "steps");
  }
  if (axes.empty())
    for (size_t k = 0; k < starts.size(); k++)
      axes.push_back(static_cast<int64_t>(k));
  if (steps.empty())
    steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    n.error("starts, ends, axes and steps must have equal lengths");
  size_t r = in.size();
  std::vector<int64_t> st(r, 0), sp(r, 1);
  Shape out = in;
  std::vector<bool> seen(r, false);
  for (size_t k = 0; k < starts.size(); k++) {
    int64_t ax = n.axis(axes[k], r);
    if (seen[ax])
      n.error("axis repeated");
    seen[ax] = true;
    int64_t dim = in[ax], s = starts[k], e = ends[k], step = steps[k];
    if (step == 0)
      n.error("step 0");
    if (s < 0)
      s += dim;
    if (e < 0)
      e += dim;
    int64_t cnt;
    if (step > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      cnt = e > s ? (e - s + step - 1) / step : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      cnt = s > e ? (s - e + (-step) - 1) / (-step) : 0;
    }
    st[ax] = s;
    sp[ax] = step;
    out[ax] = cnt;
  }
  n.bind(0, slice_value(g, n, x, st, sp, out));
}

void lower_split(Graph& g, const Node& n) {
  int x = n.need(0);
  const Shape& in = n.shape(x);
  int64_t ax = n.axis(n.i("axis", 0), in.size());
  std::vector<int64_t> sizes =
      n.opset() < 13 ? n.ints("split") : (n.in(1) >= 0 ? n.cst_ints(1, "split") : std::vector<int64_t>{});
  size_t parts = n.nout();
  if (sizes.empty()) {
    int64_t num = n.has("num_outputs") ? n.i("num_outputs", 1) : static_cast<int64_t>(parts);
    if (num < 1)
      n.error("no outputs");
    int64_t chunk = (in[ax] + num - 1) / num;  // opset 18: the last chunk may be smaller
    if (!n.has("num_outputs") && in[ax] % num)
      n.error("dimension " + std::to_string(in[ax]) + " does not split evenly into " + std::to_string(num));
    for (int64_t k = 0; k < num; k++)
      sizes.push_back(std::min(chunk, in[ax] - k * chunk));
  }
  if (sizes.size() != parts)
    n.error("split has " + std::to_string(sizes.size()) + " sizes for " + std::to_string(parts) + " outputs");
  if (std::accumulate(sizes.begin(), sizes.end(), int64_t{0}) != in[ax])
    n.error("split sizes do not add up to the dimension");
  int64_t pos = 0;
  for (size_t k = 0; k < parts; k++) {
    std::vector<int64_t> st(in.size(), 0), sp(in.size(), 1);
    Shape out = in;
    st[ax] = pos;
    out[ax] = sizes[k];
    if (sizes[k] < 0)
      n.error("negative split size");
    pos += sizes[k];
    if (n.out_used(k))
      n.bind(k, slice_value(g, n, x, st, sp, out));
  }
}

void lower_concat(Graph& g, const Node& n) {
  std::vector<int> ins;
  for (size_t k = 0; k < n.nin(); k++)
    ins.push_back(n.need(k));
  if (ins.empty())
    n.error("no inputs");
  const Shape& s0 = n.shape(ins[0]);
  int64_t ax = n.axis(n.i("axis", n.opset() < 4 ? 1 : 0), s0.size());
  Shape out = s0;
  out[ax] = 0;
  bool all_const = true, any_int = false;
  for (int v : ins) {
    const Shape& s = n.shape(v);
    if (s.size() != s0.size())
      n.error("inputs have different ranks");
    for (size_t d = 0; d < s.size(); d++)
      if (static_cast<int64_t>(d) != ax && s[d] != s0[d])
        n.error("input shapes " + shape_str(s0) + " and " + shape_str(s) + " differ outside the axis");
    out[ax] += s[ax];
    all_const = all_const && n.val(v).is_const;
    any_int = any_int || (n.val(v).is_const && !n.val(v).c.is_float);
  }
  if (all_const) {
    Const r;
    r.is_float = !any_int;
    r.shape = out;
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < ax; d++)
      outer *= out[d];
    for (size_t d = ax + 1; d < out.size(); d++)
      inner *= out[d];
    for (int64_t o = 0; o < outer; o++)
      for (int v : ins) {
        const Const& c = n.val(v).c;
        int64_t chunk = n.shape(v)[ax] * inner;
        for (int64_t j = 0; j < chunk; j++) {
          size_t idx = static_cast<size_t>(o * chunk + j);
          if (r.is_float)
            r.f.push_back(c.f[idx]);
          else
            r.i.push_back(c.int_at(idx));
        }
      }
    n.bind(0, g.add_const(std::move(r)));
    return;
  }
  if (any_int)
    n.error("integer tensors are not supported at run time (only f32)");
  if (ins.size() == 1) {
    n.bind(0, make_alias(g, ins[0], out, n.where()));
    return;
  }
  if (ins.size() >= VNPU_ISA_MAX_OPERANDS)
    n.error("more than " + std::to_string(VNPU_ISA_MAX_OPERANDS - 1) + " inputs");
  VnpuOpAttr a = zero_attr();
  a.axis.axis = static_cast<uint32_t>(ax);
  n.bind(0, emit1(g, VNPU_ISA_OP_CONCAT, ins, out, a, n));
}

void lower_gather(Graph& g, const Node& n) {
  int x = n.need(0);
  const Const& idx = n.cst(1, "indices");
  const Shape& in = n.shape(x);
  int64_t ax = n.axis(n.i("axis", 0), in.size());
  std::vector<int64_t> ind(idx.count());
  for (size_t k = 0; k < ind.size(); k++) {
    int64_t v = idx.int_at(k);
    if (v < -in[ax] || v >= in[ax])
      n.error("index " + std::to_string(v) + " out of range");
    ind[k] = v < 0 ? v + in[ax] : v;
  }
  Shape out;
  for (int64_t d = 0; d < ax; d++)
    out.push_back(in[d]);
  for (int64_t d : idx.shape)
    out.push_back(d);
  for (size_t d = ax + 1; d < in.size(); d++)
    out.push_back(in[d]);
  if (n.val(x).is_const) {
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < ax; d++)
      outer *= in[d];
    for (size_t d = ax + 1; d < in.size(); d++)
      inner *= in[d];
    std::vector<size_t> src;
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j : ind)
        for (int64_t i = 0; i < inner; i++)
          src.push_back(static_cast<size_t>((o * in[ax] + j) * inner + i));
    n.bind(0, g.add_const(gather_elems(n.val(x).c, out, src)));
    return;
  }
  // Run-time data with constant indices: one strided slice when the indices form an arithmetic progression,
  // else a slice per index joined by a concat.
  if (ind.empty())
    n.error("empty indices");
  int64_t step = ind.size() > 1 ? ind[1] - ind[0] : 1;
  bool progression = step != 0;
  for (size_t k = 1; k < ind.size(); k++)
    progression = progression && ind[k] - ind[k - 1] == step;
  std::vector<int64_t> st(in.size(), 0), sp(in.size(), 1);
  Shape sl = in;
  int s;
  if (progression) {
    st[ax] = ind[0];
    sp[ax] = step;
    sl[ax] = static_cast<int64_t>(ind.size());
    s = slice_value(g, n, x, st, sp, sl);
  } else {
    if (ind.size() >= VNPU_ISA_MAX_OPERANDS)
      n.error("more than " + std::to_string(VNPU_ISA_MAX_OPERANDS - 1) + " scattered indices");
    std::vector<int> parts;
    sl[ax] = 1;
    for (int64_t j : ind) {
      st[ax] = j;
      parts.push_back(slice_value(g, n, x, st, sp, sl));
    }
    sl[ax] = static_cast<int64_t>(ind.size());
    VnpuOpAttr a = zero_attr();
    a.axis.axis = static_cast<uint32_t>(ax);
    s = emit1(g, VNPU_ISA_OP_CONCAT, parts, sl, a, n);
  }
  n.bind(0, make_alias(g, s, out, n.where()));
}

// ---- compute ----

struct Spatial {
  std::vector<int64_t> kernel, stride, dil, pb, pe;
};

// Fills pads from auto_pad / pads for a forward window op; returns the output spatial dims.
std::vector<int64_t> window_out(const Node& n, const Shape& in_sp, Spatial& s, bool ceil_mode) {
  size_t k = in_sp.size();
  for (size_t i = 0; i < k; i++)
    if (s.stride.at(i) < 1 || s.dil.at(i) < 1 || s.kernel.at(i) < 1 || s.stride[i] > (1 << 20) ||
        s.dil[i] > (1 << 20) || s.kernel[i] > (1 << 20))
      n.error("kernel_shape, strides and dilations must be >= 1 (and sane)");
  std::string ap = n.s("auto_pad", "NOTSET");
  std::vector<int64_t> pads = n.ints("pads");
  if (pads.empty())
    pads.assign(2 * k, 0);
  if (pads.size() != 2 * k)
    n.error("pads has " + std::to_string(pads.size()) + " entries, expected " + std::to_string(2 * k));
  s.pb.assign(pads.begin(), pads.begin() + static_cast<long>(k));
  s.pe.assign(pads.begin() + static_cast<long>(k), pads.end());
  std::vector<int64_t> out(k);
  for (size_t i = 0; i < k; i++) {
    int64_t span = s.dil[i] * (s.kernel[i] - 1) + 1;
    if (ap == "SAME_UPPER" || ap == "SAME_LOWER") {
      int64_t o = (in_sp[i] + s.stride[i] - 1) / s.stride[i];
      int64_t total = std::max<int64_t>(0, (o - 1) * s.stride[i] + span - in_sp[i]);
      s.pb[i] = ap == "SAME_UPPER" ? total / 2 : total - total / 2;
      s.pe[i] = total - s.pb[i];
      out[i] = o;
      continue;
    }
    if (ap == "VALID")
      s.pb[i] = s.pe[i] = 0;
    else if (ap != "NOTSET" && !ap.empty())
      n.error("auto_pad '" + ap + "' is not supported");
    if (s.pb[i] < 0 || s.pe[i] < 0)
      n.error("negative pads are not supported");
    int64_t padded = in_sp[i] + s.pb[i] + s.pe[i];
    if (padded < span)
      n.error("window (" + std::to_string(span) + ") larger than the padded input (" + std::to_string(padded) + ")");
    int64_t o = ceil_mode ? (padded - span + s.stride[i] - 1) / s.stride[i] + 1 : (padded - span) / s.stride[i] + 1;
    if (ceil_mode && (o - 1) * s.stride[i] >= in_sp[i] + s.pb[i])
      o--;  // last window must start inside
    out[i] = o;
  }
  return out;
}

// Views X (rank 3 or 4) as 4-D; returns the view and the spatial dims count.
int as_4d(Graph& g, const Node& n, int x, size_t* sp) {
  const Shape& s = n.shape(x);
  if (s.size() == 4) {
    *sp = 2;
    return x;
  }
  if (s.size() == 3) {
    *sp = 1;
    return make_alias(g, x, {s[0], s[1], 1, s[2]}, n.where());
  }
  n.error("input of rank " + std::to_string(s.size()) + " is not supported (1-D and 2-D spatial only)");
}

void fill2(uint32_t dst[2], const std::vector<int64_t>& v, size_t sp, uint32_t def) {
  // 1-D ops become 2-D with H = 1: the real dim is W (index 1).
  if (sp == 1) {
    dst[0] = def;
    dst[1] = static_cast<uint32_t>(v[0]);
  } else {
    dst[0] = static_cast<uint32_t>(v[0]);
    dst[1] = static_cast<uint32_t>(v[1]);
  }
}

void lower_conv(Graph& g, const Node& n, bool transpose) {
  size_t sp;
  int x0 = n.need(0), w0 = n.need(1), b = n.in(2);
  int x = as_4d(g, n, x0, &sp);
  const Shape& ws = n.shape(w0);
  if (ws.size() != sp + 2)
    n.error("weight rank " + std::to_string(ws.size()) + " does not match the input");
  int w = sp == 1 ? make_alias(g, w0, {ws[0], ws[1], 1, ws[2]}, n.where()) : w0;
  const Shape& xs = n.shape(x0);
  Shape in_sp(xs.begin() + 2, xs.end());
  Spatial s;
  s.kernel = n.ints("kernel_shape");
  if (s.kernel.empty())
    s.kernel.assign(ws.begin() + 2, ws.end());
  if (s.kernel.size() != sp || !std::equal(s.kernel.begin(), s.kernel.end(), ws.begin() + 2))
    n.error("kernel_shape does not match the weights");
  s.stride = n.ints("strides");
  if (s.stride.empty())
    s.stride.assign(sp, 1);
  s.dil = n.ints("dilations");
  if (s.dil.empty())
    s.dil.assign(sp, 1);
  if (s.stride.size() != sp || s.dil.size() != sp)
    n.error("strides/dilations length mismatch");
  int64_t group = n.i("group", 1);
  if (group < 1 || group > (1 << 20))
    n.error("group must be >= 1");
  for (size_t i = 0; i < sp; i++)
    if (s.stride[i] < 1 || s.dil[i] < 1 || s.stride[i] > (1 << 20) || s.dil[i] > (1 << 20))
      n.error("strides and dilations must be >= 1");
  VnpuOpAttr a = zero_attr();
  a.conv.group = static_cast<uint32_t>(group);
  std::vector<int64_t> out_sp(sp), opad(sp, 0);
  int64_t m;
  if (!transpose) {
    out_sp = window_out(n, in_sp, s, false);
    m = ws[0];
  } else {
    m = ws[1] * group;
    std::vector<int64_t> op = n.ints("output_padding");
    if (!op.empty())
      opad = op;
    if (opad.size() != sp)
      n.error("output_padding length mismatch");
    std::vector<int64_t> oshape = n.ints("output_shape");
    std::string ap = n.s("auto_pad", "NOTSET");
    std::vector<int64_t> pads = n.ints("pads");
    if (pads.empty())
      pads.assign(2 * sp, 0);
    if (pads.size() != 2 * sp)
      n.error("pads length mismatch");
    s.pb.assign(pads.begin(), pads.begin() + static_cast<long>(sp));
    s.pe.assign(pads.begin() + static_cast<long>(sp), pads.end());
    if (oshape.size() == sp + 2)
      oshape.erase(oshape.begin(), oshape.begin() + 2);
    if (oshape.empty() && (ap == "SAME_UPPER" || ap == "SAME_LOWER"))
      for (size_t i = 0; i < sp; i++)
        oshape.push_back(in_sp[i] * s.stride[i]);
    for (size_t i = 0; i < sp; i++) {
      int64_t span = s.dil[i] * (s.kernel[i] - 1) + 1;
      int64_t full = s.stride[i] * (in_sp[i] - 1) + opad[i] + span;
      if (!oshape.empty()) {
        if (oshape.size() != sp)
          n.error("output_shape length mismatch");
        int64_t total = full - oshape[i];
        if (total < 0) {  // the requested size is larger: extend at the end, like output_padding
          opad[i] -= total;
          total = 0;
        }
        if (ap == "SAME_UPPER") {
          s.pb[i] = total / 2;
          s.pe[i] = total - total / 2;
        } else {
          s.pb[i] = total - total / 2;
          s.pe[i] = total / 2;
        }
      } else if (ap == "VALID") {
        s.pb[i] = s.pe[i] = 0;
      }
      if (s.pb[i] < 0 || s.pe[i] < 0)
        n.error("negative pads are not supported");
      out_sp[i] = s.stride[i] * (in_sp[i] - 1) + opad[i] + span - s.pb[i] - s.pe[i];
      if (out_sp[i] < 1)
        n.error("output would be empty");
    }
  }
  fill2(a.conv.stride, s.stride, sp, 1);
  fill2(a.conv.dilation, s.dil, sp, 1);
  fill2(a.conv.pad_begin, s.pb, sp, 0);
  fill2(a.conv.pad_end, s.pe, sp, 0);
  fill2(a.conv.output_padding, opad, sp, 0);
  std::vector<int> ins = {x, w};
  if (b >= 0) {
    a.conv.flags |= VNPU_ISA_CONV_F_BIAS;
    ins.push_back(n.shape(b).size() == 1 ? b : make_alias(g, b, {numel(n.shape(b))}, n.where()));
  }
  Shape out4 = {xs[0], m, sp == 1 ? 1 : out_sp[0], sp == 1 ? out_sp[0] : out_sp[1]};
  int y = emit1(g, transpose ? VNPU_ISA_OP_CONV_TRANSPOSE : VNPU_ISA_OP_CONV, ins, out4, a, n);
  n.bind(0, sp == 1 ? make_alias(g, y, {xs[0], m, out_sp[0]}, n.where()) : y);
}

void lower_pool(Graph& g, const Node& n, bool is_max, bool global) {
  size_t sp;
  int x0 = n.need(0);
  if (n.out_used(1))
    n.error("the Indices output is not supported");
  int x = as_4d(g, n, x0, &sp);
  const Shape& xs = n.shape(x0);
  Shape in_sp(xs.begin() + 2, xs.end());
  Spatial s;
  VnpuOpAttr a = zero_attr();
  a.pool.kind = is_max ? VNPU_ISA_POOL_MAX : VNPU_ISA_POOL_AVG;
  std::vector<int64_t> out_sp;
  if (global) {
    s.kernel = in_sp;
    s.stride.assign(sp, 1);
    s.dil.assign(sp, 1);
    s.pb.assign(sp, 0);
    s.pe.assign(sp, 0);
    out_sp.assign(sp, 1);
  } else {
    s.kernel = n.ints("kernel_shape");
    if (s.kernel.size() != sp)
      n.error("kernel_shape must have " + std::to_string(sp) + " entries");
    s.stride = n.ints("strides");
    if (s.stride.empty())
      s.stride.assign(sp, 1);
    s.dil = n.ints("dilations");
    if (s.dil.empty())
      s.dil.assign(sp, 1);
    if (s.stride.size() != sp || s.dil.size() != sp)
      n.error("strides/dilations length mismatch");
    if (!is_max && std::any_of(s.dil.begin(), s.dil.end(), [](int64_t d) { return d != 1; }))
      n.error("dilated average pooling is not supported");
    out_sp = window_out(n, in_sp, s, n.i("ceil_mode", 0) != 0);
    if (!is_max && n.i("count_include_pad", 0))
      a.pool.flags |= VNPU_ISA_POOL_F_COUNT_PAD;
    for (size_t i = 0; i < sp; i++)
      if (s.pb[i] >= s.kernel[i] * s.dil[i] || s.pe[i] >= s.kernel[i] * s.dil[i])
        n.error("padding at least as large as the window is not supported");
  }
  fill2(a.pool.kernel, s.kernel, sp, 1);
  fill2(a.pool.stride, s.stride, sp, 1);
  fill2(a.pool.dilation, s.dil, sp, 1);
  fill2(a.pool.pad_begin, s.pb, sp, 0);
  fill2(a.pool.pad_end, s.pe, sp, 0);
  Shape out4 = {xs[0], xs[1], sp == 1 ? 1 : out_sp[0], sp == 1 ? out_sp[0] : out_sp[1]};
  int y = emit1(g, VNPU_ISA_OP_POOL, {x}, out4, a, n);
  n.bind(0, sp == 1 ? make_alias(g, y, {xs[0], xs[1], out_sp[0]}, n.where()) : y);
}

void lower_batchnorm(Graph& g, const Node& n) {
  int x = n.need(0);
  if (n.i("training_mode", 0))
    n.error("training mode is not supported");
  for (size_t k = 1; k < n.nout(); k++)
    if (n.out_used(k))
      n.error("running mean/var outputs (training) are not supported");
  const Const &sc = n.cst(1, "scale"), &bi = n.cst(2, "B"), &mean = n.cst(3, "mean"), &var = n.cst(4, "var");
  double eps = n.f("epsilon", 1e-5f);
  const Shape& xs = n.shape(x);
  if (xs.size() < 2)
    n.error("input rank must be at least 2");
  size_t c = static_cast<size_t>(xs[1]);
  if (sc.count() != c || bi.count() != c || mean.count() != c || var.count() != c)
    n.error("parameter sizes do not match the channel count");
  Const S, T;
  S.shape = T.shape = {static_cast<int64_t>(c)};
  for (size_t k = 0; k < c; k++) {
    double s = sc.at(k) / std::sqrt(var.at(k) + eps);
    S.f.push_back(static_cast<float>(s));
    T.f.push_back(static_cast<float>(bi.at(k) - mean.at(k) * s));
  }
  VnpuOpAttr a = zero_attr();
  int s = g.add_const(std::move(S)), t = g.add_const(std::move(T));
  n.bind(0, emit1(g, VNPU_ISA_OP_CHANNEL_AFFINE, {x, s, t}, xs, a, n));
}

void lower_matmul(Graph& g, const Node& n) {
  int a0 = n.need(0), b0 = n.need(1);
  Shape as = n.shape(a0), bs = n.shape(b0);
  if (as.empty() || bs.empty())
    n.error("scalar operands are not allowed");
  bool a1 = as.size() == 1, b1 = bs.size() == 1;
  int a = a1 ? make_alias(g, a0, {1, as[0]}, n.where()) : a0;
  int b = b1 ? make_alias(g, b0, {bs[0], 1}, n.where()) : b0;
  as = n.shape(a);
  bs = n.shape(b);
  if (as.back() != bs[bs.size() - 2])
    n.error("inner dimensions differ: " + shape_str(as) + " x " + shape_str(bs));
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  Shape out = broadcast_shapes(ab, bb, n.where());
  out.push_back(as[as.size() - 2]);
  out.push_back(bs.back());
  VnpuOpAttr at = zero_attr();
  at.matmul.alpha = 1.0f;
  at.matmul.beta = 1.0f;
  int y = emit1(g, VNPU_ISA_OP_MATMUL, {a, b}, out, at, n);
  Shape fin(out.begin(), out.end() - 2);
  if (!a1)
    fin.push_back(out[out.size() - 2]);
  if (!b1)
    fin.push_back(out.back());
  n.bind(0, (a1 || b1) ? make_alias(g, y, fin, n.where()) : y);
}

void lower_gemm(Graph& g, const Node& n) {
  int a = n.need(0), b = n.need(1), c = n.in(2);
  const Shape &as = n.shape(a), &bs = n.shape(b);
  if (as.size() != 2 || bs.size() != 2)
    n.error("A and B must be 2-D");
  VnpuOpAttr at = zero_attr();
  bool ta = n.i("transA", 0), tb = n.i("transB", 0);
  at.matmul.alpha = n.f("alpha", 1.0f);
  at.matmul.beta = n.f("beta", 1.0f);
  if (ta)
    at.matmul.flags |= VNPU_ISA_MATMUL_F_TRANS_A;
  if (tb)
    at.matmul.flags |= VNPU_ISA_MATMUL_F_TRANS_B;
  int64_t m = ta ? as[1] : as[0], k = ta ? as[0] : as[1], kb = tb ? bs[1] : bs[0], nn = tb ? bs[0] : bs[1];
  if (k != kb)
    n.error("inner dimensions differ");
  std::vector<int> ins = {a, b};
  if (c >= 0 && at.matmul.beta != 0.0f) {
    Shape cs = n.shape(c);
    while (cs.size() > 2 && cs[0] == 1)
      cs.erase(cs.begin());
    if (cs.size() > 2)
      n.error("C must broadcast to [M,N]");
    at.matmul.flags |= VNPU_ISA_MATMUL_F_BIAS;
    ins.push_back(cs == n.shape(c) ? c : make_alias(g, c, cs, n.where()));
  }
  n.bind(0, emit1(g, VNPU_ISA_OP_MATMUL, ins, {m, nn}, at, n));
}

void lower_softmax(Graph& g, const Node& n, bool log) {
  int x = n.need(0);
  const Shape& xs = n.shape(x);
  bool legacy = n.opset() < 13;
  int64_t ax = n.axis(n.i("axis", legacy ? 1 : -1), std::max<size_t>(xs.size(), 1));
  VnpuOpAttr a = zero_attr();
  a.softmax.axis = static_cast<uint32_t>(ax);
  if (log)
    a.softmax.flags |= VNPU_ISA_SOFTMAX_F_LOG;
  if (legacy)
    a.softmax.flags |= VNPU_ISA_SOFTMAX_F_FLATTEN;
  n.bind(0, emit1(g, VNPU_ISA_OP_SOFTMAX, {x}, xs, a, n));
}

void lower_resize(Graph& g, const Node& n, bool upsample) {
  int x = n.need(0);
  const Shape& xs = n.shape(x);
  size_t r = xs.size();
  std::string mode = n.s("mode", "nearest");
  std::string coord =
      upsample ? "asymmetric" : n.s("coordinate_transformation_mode", n.opset() < 11 ? "asymmetric" : "half_pixel");
  std::string nearest = upsample || n.opset() < 11 ? "floor" : n.s("nearest_mode", "round_prefer_floor");
  if (n.i("antialias", 0))
    n.error("antialias is not supported");
  if (n.s("keep_aspect_ratio_policy", "stretch") != "stretch")
    n.error("keep_aspect_ratio_policy other than stretch is not supported");
  std::vector<float> scales;
  std::vector<int64_t> sizes;
  if (upsample) {
    if (n.opset() < 9)
      scales = n.floats("scales");
    else {
      const Const& c = n.cst(1, "scales");
      for (size_t k = 0; k < c.count(); k++)
        scales.push_back(static_cast<float>(c.at(k)));
    }
  } else if (n.opset() < 11) {
    const Const& c = n.cst(1, "scales");
    for (size_t k = 0; k < c.count(); k++)
      scales.push_back(static_cast<float>(c.at(k)));
  } else {
    if (n.in(2) >= 0 && n.val(n.in(2)).is_const && n.val(n.in(2)).c.count()) {
      const Const& c = n.cst(2, "scales");
      for (size_t k = 0; k < c.count(); k++)
        scales.push_back(static_cast<float>(c.at(k)));
    }
    if (n.in(3) >= 0)
      sizes = n.cst_ints(3, "sizes");
    else if (n.in(2) >= 0 && !n.val(n.in(2)).is_const)
      n.error("scales must be a compile-time constant");
  }
  std::vector<int64_t> axes = n.ints("axes");
  if (!axes.empty()) {  // opset 18: scales/sizes for a subset of axes
    std::vector<float> fs(r, 1.0f);
    std::vector<int64_t> is(xs.begin(), xs.end());
    for (size_t k = 0; k < axes.size(); k++) {
      int64_t a = n.axis(axes[k], r);
      if (!scales.empty())
        fs[a] = scales.at(k);
      if (!sizes.empty())
        is[a] = sizes.at(k);
    }
    if (!scales.empty())
      scales = fs;
    if (!sizes.empty())
      sizes = is;
  }
  VnpuOpAttr a = zero_attr();
  if (mode == "nearest")
    a.resize.mode = VNPU_ISA_RESIZE_NEAREST;
  else if (mode == "linear" || mode == "bilinear")
    a.resize.mode = VNPU_ISA_RESIZE_LINEAR;
  else if (mode == "cubic")
    a.resize.mode = VNPU_ISA_RESIZE_CUBIC;
  else
    n.error("mode '" + mode + "' is not supported (nearest, linear and cubic are)");
  static const std::map<std::string, uint32_t> coords = {{"half_pixel", VNPU_ISA_COORD_HALF_PIXEL},
                                                         {"asymmetric", VNPU_ISA_COORD_ASYMMETRIC},
                                                         {"align_corners", VNPU_ISA_COORD_ALIGN_CORNERS},
                                                         {"pytorch_half_pixel", VNPU_ISA_COORD_PYTORCH_HALF_PIXEL},
                                                         {"tf_half_pixel_for_nn", VNPU_ISA_COORD_TF_HALF_PIXEL_FOR_NN}};
  static const std::map<std::string, uint32_t> nearests = {{"round_prefer_floor", VNPU_ISA_NEAREST_ROUND_PREFER_FLOOR},
                                                           {"round_prefer_ceil", VNPU_ISA_NEAREST_ROUND_PREFER_CEIL},
                                                           {"floor", VNPU_ISA_NEAREST_FLOOR},
                                                           {"ceil", VNPU_ISA_NEAREST_CEIL}};
  auto ci = coords.find(coord);
  if (ci == coords.end())
    n.error("coordinate_transformation_mode '" + coord + "' is not supported");
  auto ni = nearests.find(nearest);
  if (ni == nearests.end())
    n.error("nearest_mode '" + nearest + "' is not supported");
  a.resize.coord = ci->second;
  if (a.resize.mode == VNPU_ISA_RESIZE_CUBIC) {
    a.resize.cubic_a = n.f("cubic_coeff_a", -0.75f);
    if (!std::isfinite(a.resize.cubic_a))
      n.error("cubic_coeff_a must be finite");
    if (n.i("exclude_outside", 0))
      a.resize.flags |= VNPU_ISA_RESIZE_F_EXCLUDE_OUTSIDE;
  } else {
    a.resize.nearest = ni->second;
  }
  if (r > VNPU_ISA_MAX_RANK)
    n.error("rank too large");
  Shape out(r);
  if (!sizes.empty()) {
    if (sizes.size() != r)
      n.error("sizes has " + std::to_string(sizes.size()) + " entries for rank " + std::to_string(r));
    a.resize.flags |= VNPU_ISA_RESIZE_F_SIZES;
    for (size_t k = 0; k < r; k++) {
      out[k] = sizes[k];
      if (out[k] < 1)
        n.error("sizes must be positive");
      a.resize.scale[k] = static_cast<float>(static_cast<double>(sizes[k]) / static_cast<double>(xs[k]));
    }
  } else {
    if (scales.size() != r)
      n.error("scales has " + std::to_string(scales.size()) + " entries for rank " + std::to_string(r));
    for (size_t k = 0; k < r; k++) {
      if (!(scales[k] > 0.0f))
        n.error("scales must be positive");
      out[k] = static_cast<int64_t>(std::floor(static_cast<double>(xs[k]) * static_cast<double>(scales[k])));
      a.resize.scale[k] = scales[k];
    }
  }
  n.bind(0, emit1(g, VNPU_ISA_OP_RESIZE, {x}, out, a, n));
}

// ---- compile-time only ----

Const make_int(const Shape& shape, std::vector<int64_t> v) {
  Const c;
  c.is_float = false;
  c.shape = shape;
  c.i = std::move(v);
  return c;
}

void lower_cast(Graph& g, const Node& n) {
  int x = n.need(0);
  int64_t to = n.i("to", 1);
  bool to_float = to == onnx::TensorProto::FLOAT || to == onnx::TensorProto::DOUBLE || to == onnx::TensorProto::FLOAT16;
  if (n.val(x).is_const) {
    Const c = n.val(x).c, r;
    r.shape = c.shape;
    r.is_float = to_float;
    for (size_t k = 0; k < c.count(); k++) {
      if (to_float)
        r.f.push_back(static_cast<float>(c.at(k)));
      else if (to == onnx::TensorProto::BOOL)
        r.i.push_back(c.at(k) != 0);
      else
        r.i.push_back(c.is_float ? static_cast<int64_t>(c.f[k]) : c.i[k]);
    }
    n.bind(0, g.add_const(std::move(r)));
    return;
  }
  if (!to_float)
    n.error("casting a run-time tensor to a non-float type is not supported");
  n.bind(0, make_alias(g, x, n.shape(x), n.where()));
}

void lower_const_only(Graph& g, const Node& n) {
  const std::string& t = n.type();
  if (t == "Constant") {
    if (auto a = n.attr("value"))
      n.bind(0, g.add_const(const_from_proto(a->t(), n.where())));
    else if (auto fa = n.attr("value_float")) {
      Const c;
      c.f = {fa->f()};
      n.bind(0, g.add_const(c));
    } else if (auto fs = n.attr("value_floats")) {
      Const c;
      c.f.assign(fs->floats().begin(), fs->floats().end());
      c.shape = {static_cast<int64_t>(c.f.size())};
      n.bind(0, g.add_const(c));
    } else if (auto ia = n.attr("value_int"))
      n.bind(0, g.add_const(make_int({}, {ia->i()})));
    else if (auto is = n.attr("value_ints"))
      n.bind(0, g.add_const(make_int({is->ints_size()}, {is->ints().begin(), is->ints().end()})));
    else
      n.error("unsupported Constant value kind (sparse or string)");
    return;
  }
  if (t == "Shape") {
    const Shape& s = n.shape(n.need(0));
    int64_t r = static_cast<int64_t>(s.size());
    int64_t st = n.i("start", 0), en = n.i("end", r);
    if (st < 0)
      st += r;
    if (en < 0)
      en += r;
    st = std::clamp<int64_t>(st, 0, r);
    en = std::clamp<int64_t>(en, 0, r);
    std::vector<int64_t> v(s.begin() + st, s.begin() + std::max(st, en));
    n.bind(0, g.add_const(make_int({static_cast<int64_t>(v.size())}, v)));
    return;
  }
  if (t == "Size") {
    n.bind(0, g.add_const(make_int({}, {numel(n.shape(n.need(0)))})));
    return;
  }
  if (t == "ConstantOfShape") {
    std::vector<int64_t> shape = n.cst_ints(0, "input");
    check_const_size(n, shape);
    Const c;
    c.shape = shape;
    Const v;
    if (auto a = n.attr("value"))
      v = const_from_proto(a->t(), n.where());
    else
      v.f = {0.0f};
    c.is_float = v.is_float;
    size_t cnt = static_cast<size_t>(numel(shape));
    if (c.is_float)
      c.f.assign(cnt, v.f.at(0));
    else
      c.i.assign(cnt, v.i.at(0));
    n.bind(0, g.add_const(std::move(c)));
    return;
  }
  if (t == "Range") {
    const Const &s = n.cst(0, "start"), &l = n.cst(1, "limit"), &d = n.cst(2, "delta");
    Const c;
    c.is_float = s.is_float;
    double st = s.at(0), li = l.at(0), de = d.at(0);
    if (de == 0)
      n.error("delta 0");
    double want = std::ceil((li - st) / de);
    if (!(want < static_cast<double>(kMaxConstElems)))
      n.error("range too long for a constant");
    int64_t cnt = std::max<int64_t>(0, static_cast<int64_t>(want));
    for (int64_t k = 0; k < cnt; k++) {
      if (c.is_float)
        c.f.push_back(static_cast<float>(st + k * de));
      else
        c.i.push_back(s.i[0] + k * d.int_at(0));
    }
    c.shape = {cnt};
    n.bind(0, g.add_const(std::move(c)));
    return;
  }
  if (t == "Where") {
    const Const &c = n.cst(0, "condition"), &x = n.cst(1, "X"), &y = n.cst(2, "Y");
    Shape out = broadcast_shapes(broadcast_shapes(c.shape, x.shape, n.where()), y.shape, n.where());
    Const cb = binary_const("Add", reshape_const(c, c.shape),
                            make_int(out, std::vector<int64_t>(static_cast<size_t>(numel(out)), 0)));
    Const xb = binary_const("Add", x,
                            x.is_float ? Const{true, out, std::vector<float>(static_cast<size_t>(numel(out)), 0.0f), {}}
                                       : make_int(out, std::vector<int64_t>(static_cast<size_t>(numel(out)), 0)));
    Const yb = binary_const("Add", y,
                            y.is_float ? Const{true, out, std::vector<float>(static_cast<size_t>(numel(out)), 0.0f), {}}
                                       : make_int(out, std::vector<int64_t>(static_cast<size_t>(numel(out)), 0)));
    Const r;
    r.is_float = xb.is_float || yb.is_float;
    r.shape = out;
    for (size_t k = 0; k < static_cast<size_t>(numel(out)); k++) {
      bool sel = cb.int_at(k) != 0;
      if (r.is_float)
        r.f.push_back(static_cast<float>(sel ? xb.at(k) : yb.at(k)));
      else
        r.i.push_back(sel ? xb.i[k] : yb.i[k]);
    }
    n.bind(0, g.add_const(std::move(r)));
    return;
  }
  if (t == "Not") {
    Const c = n.cst(0, "X");
    Const r = make_int(c.shape, {});
    for (size_t k = 0; k < c.count(); k++)
      r.i.push_back(c.at(k) == 0);
    n.bind(0, g.add_const(std::move(r)));
    return;
  }
  // Comparisons, logic and Mod need constant inputs.
  const Const &a = n.cst(0, "A"), &b = n.cst(1, "B");
  n.bind(0, g.add_const(binary_const(t, a, b)));
}

void lower_expand(Graph& g, const Node& n) {
  int x = n.need(0);
  std::vector<int64_t> shape = n.cst_ints(1, "shape");
  check_const_size(n, shape);
  Shape out = broadcast_shapes(n.shape(x), shape, n.where());
  check_const_size(n, out);
  if (n.val(x).is_const) {
    const Const& c = n.val(x).c;
    Const zero = c.is_float ? Const{true, out, std::vector<float>(static_cast<size_t>(numel(out)), 0.0f), {}}
                            : make_int(out, std::vector<int64_t>(static_cast<size_t>(numel(out)), 0));
    n.bind(0, g.add_const(binary_const("Add", c, zero)));
    return;
  }
  if (out == n.shape(x)) {
    n.bind(0, make_alias(g, x, out, n.where()));
    return;
  }
  Const one;  // of the target shape, so that every output dim comes from an operand
  one.shape = shape;
  one.f.assign(static_cast<size_t>(numel(shape)), 1.0f);
  VnpuOpAttr a = zero_attr();
  a.binary.kind = VNPU_ISA_BIN_MUL;  // x * 1 is exact: a broadcast copy
  n.bind(0, emit1(g, VNPU_ISA_OP_BINARY, {x, g.add_const(std::move(one))}, out, a, n));
}

// ---- ISA 1.1: reductions, layer normalisation, padding, PRelu, ScatterND ----

struct ReduceOp {
  const char* name;
  uint32_t kind;
};
constexpr ReduceOp kReduceOps[] = {
    {"ReduceSum", VNPU_ISA_REDUCE_SUM},        {"ReduceMean", VNPU_ISA_REDUCE_MEAN},
    {"ReduceMax", VNPU_ISA_REDUCE_MAX},        {"ReduceMin", VNPU_ISA_REDUCE_MIN},
    {"ReduceProd", VNPU_ISA_REDUCE_PROD},      {"ReduceL1", VNPU_ISA_REDUCE_L1},
    {"ReduceL2", VNPU_ISA_REDUCE_L2},          {"ReduceSumSquare", VNPU_ISA_REDUCE_SUM_SQUARE},
    {"ReduceLogSum", VNPU_ISA_REDUCE_LOG_SUM}, {"ReduceLogSumExp", VNPU_ISA_REDUCE_LOG_SUM_EXP},
};

// Reduce*: axes from the attribute (opset < 13, and < 18 for all but ReduceSum) or the optional second input;
// keepdims; noop_with_empty_axes. One REDUCE op (reduced dims kept as 1) and a view when keepdims = 0.
void lower_reduce(Graph& g, const Node& n) {
  uint32_t kind = 0;
  for (const ReduceOp& r : kReduceOps)
    if (n.type() == r.name)
      kind = r.kind;
  int x = n.need(0);
  Shape xs = n.shape(x);
  bool axes_input = n.opset() >= 18 || (n.type() == "ReduceSum" && n.opset() >= 13);
  std::vector<int64_t> axes;
  if (axes_input) {
    if (n.has("axes"))
      n.error("the axes attribute was replaced by an input in this opset");
    if (n.in(1) >= 0)
      axes = n.cst_ints(1, "axes");
  } else {
    axes = n.ints("axes");
  }
  if (axes.empty() && n.i("noop_with_empty_axes", 0)) {
    n.bind(0, n.val(x).is_const ? x : make_alias(g, x, xs, n.where()));
    return;
  }
  uint32_t mask = 0;
  if (axes.empty())
    mask = xs.empty() ? 0 : static_cast<uint32_t>((uint64_t{1} << xs.size()) - 1);
  for (int64_t a : axes) {
    int64_t k = n.axis(a, xs.size());
    if (mask & (1u << k))
      n.error("axis " + std::to_string(a) + " repeated");
    mask |= 1u << k;
  }
  if (n.val(x).is_const && !n.val(x).c.is_float) {  // integer shape arithmetic: widen to f32 and fold
    Const c = n.val(x).c;
    c.is_float = true;
    for (int64_t v : c.i)
      c.f.push_back(static_cast<float>(v));
    c.i.clear();
    x = g.add_const(std::move(c));
  }
  Shape ys = xs, fin;
  for (size_t d = 0; d < xs.size(); d++) {
    if (mask & (1u << d))
      ys[d] = 1;
    if (!(mask & (1u << d)) || n.i("keepdims", 1))
      fin.push_back(ys[d]);
  }
  VnpuOpAttr a = zero_attr();
  a.reduce.kind = kind;
  a.reduce.axes = mask;
  int y = emit1(g, VNPU_ISA_OP_REDUCE, {x}, ys, a, n);
  n.bind(0, fin == ys ? y : make_alias(g, y, fin, n.where()));
}

// A constant of `shape` whose elements are all v.
int fill_const(Graph& g, const Shape& shape, float v) {
  Const c;
  c.shape = shape;
  c.f.assign(static_cast<size_t>(numel(shape)), v);
  return g.add_const(std::move(c));
}

// Scale/bias of a normalisation over xs[axis:]: a tensor with exactly those elements (any leading 1s), or a
// constant that broadcasts to them (expanded here).
int norm_param(Graph& g, const Node& n, int v, const Shape& inner, const char* what) {
  Shape s = n.shape(v);
  while (!s.empty() && s[0] == 1 && s.size() > inner.size())
    s.erase(s.begin());
  if (s == inner)
    return make_alias(g, v, {numel(inner)}, n.where());
  if (!n.val(v).is_const)
    n.error(std::string(what) + " " + shape_str(n.shape(v)) + " does not match the normalised dims " +
            shape_str(inner));
  Shape b = broadcast_shapes(inner, n.shape(v), n.where());
  if (b != inner)
    n.error(std::string(what) + " " + shape_str(n.shape(v)) + " does not broadcast to " + shape_str(inner));
  Const zero;
  zero.shape = inner;
  zero.f.assign(static_cast<size_t>(numel(inner)), 0.0f);
  Const e = binary_const("Add", n.val(v).c, zero);
  return g.add_const(reshape_const(e, {numel(inner)}));
}

// LayerNormalization's optional outputs Mean and InvStdDev (shape X.dims[:axis] + 1s), from REDUCE and
// elementwise ops; only emitted when the graph reads them.
void layernorm_stats(Graph& g, const Node& n, int x, int64_t ax, float eps) {
  Shape xs = n.shape(x), rs = xs;
  uint32_t mask = 0;
  for (size_t d = static_cast<size_t>(ax); d < xs.size(); d++) {
    mask |= 1u << d;
    rs[d] = 1;
  }
  VnpuOpAttr r = zero_attr();
  r.reduce.kind = VNPU_ISA_REDUCE_MEAN;
  r.reduce.axes = mask;
  int mean = emit1(g, VNPU_ISA_OP_REDUCE, {x}, rs, r, n);
  n.bind(1, mean);
  if (!n.out_used(2))
    return;
  VnpuOpAttr b = zero_attr();
  b.binary.kind = VNPU_ISA_BIN_SUB;
  int d = emit1(g, VNPU_ISA_OP_BINARY, {x, mean}, xs, b, n);
  b.binary.kind = VNPU_ISA_BIN_MUL;
  int sq = emit1(g, VNPU_ISA_OP_BINARY, {d, d}, xs, b, n);
  int var = emit1(g, VNPU_ISA_OP_REDUCE, {sq}, rs, r, n);
  Const e;
  e.f = {eps};
  b.binary.kind = VNPU_ISA_BIN_ADD;
  b.binary.act = VNPU_ISA_ACT_SQRT;
  int sd = emit1(g, VNPU_ISA_OP_BINARY, {var, g.add_const(std::move(e))}, rs, b, n);
  VnpuOpAttr u = zero_attr();
  u.unary.act = VNPU_ISA_ACT_RECIPROCAL;
  n.bind(2, emit1(g, VNPU_ISA_OP_UNARY, {sd}, rs, u, n));
}

void lower_layernorm(Graph& g, const Node& n) {
  if (n.i("stash_type", 1) != 1)
    n.error("stash_type other than float is not supported");
  int x = n.need(0);
  Shape xs = n.shape(x);
  if (xs.empty())
    n.error("input must have rank >= 1");
  int64_t ax = n.axis(n.i("axis", -1), xs.size());
  Shape inner(xs.begin() + ax, xs.end());
  int s = norm_param(g, n, n.need(1), inner, "Scale");
  int b = n.in(2) >= 0 ? norm_param(g, n, n.in(2), inner, "B") : fill_const(g, {numel(inner)}, 0.0f);
  VnpuOpAttr a = zero_attr();
  a.norm.axis = static_cast<uint32_t>(ax);
  a.norm.epsilon = n.f("epsilon", 1e-5f);
  n.bind(0, emit1(g, VNPU_ISA_OP_NORM, {x, s, b}, xs, a, n));
  if (n.out_used(1) || n.out_used(2))
    layernorm_stats(g, n, x, ax, a.norm.epsilon);
}

void lower_pad(Graph& g, const Node& n) {
  int x = n.need(0);
  Shape xs = n.shape(x);
  size_t r = xs.size();
  std::string mode = n.s("mode", "constant");
  std::vector<int64_t> pads;
  float value = 0.0f;
  std::vector<int64_t> axes;
  if (n.opset() < 11) {
    pads = n.ints(n.has("pads") ? "pads" : "paddings");
    value = n.f("value", 0.0f);
  } else {
    pads = n.cst_ints(1, "pads");
    if (n.in(2) >= 0) {
      const Const& v = n.cst(2, "constant_value");
      if (v.count())
        value = static_cast<float>(v.at(0));
    }
    if (n.in(3) >= 0)
      axes = n.cst_ints(3, "axes");
  }
  if (axes.empty())
    for (size_t d = 0; d < r; d++)
      axes.push_back(static_cast<int64_t>(d));
  if (pads.size() != 2 * axes.size())
    n.error("pads has " + std::to_string(pads.size()) + " entries for " + std::to_string(axes.size()) + " axes");
  std::vector<int64_t> begin(r, 0), end(r, 0);
  for (size_t k = 0; k < axes.size(); k++) {
    int64_t d = n.axis(axes[k], r);
    begin[d] = pads[k];
    end[d] = pads[k + axes.size()];
  }
  VnpuOpAttr a = zero_attr();
  if (mode == "constant") {
    a.pad.mode = VNPU_ISA_PAD_CONSTANT;
    a.pad.value = value;
  } else if (mode == "reflect") {
    a.pad.mode = VNPU_ISA_PAD_REFLECT;
  } else if (mode == "edge") {
    a.pad.mode = VNPU_ISA_PAD_EDGE;
  } else {
    n.error("mode '" + mode + "' is not supported (constant, reflect and edge are)");
  }
  // Negative pads crop: a slice first, then the (non-negative) padding.
  std::vector<int64_t> st(r, 0), sp(r, 1);
  Shape cropped = xs;
  bool crop = false;
  for (size_t d = 0; d < r; d++) {
    if (begin[d] < 0) {
      st[d] = -begin[d];
      cropped[d] += begin[d];
      begin[d] = 0;
      crop = true;
    }
    if (end[d] < 0) {
      cropped[d] += end[d];
      end[d] = 0;
      crop = true;
    }
    if (cropped[d] < 0)
      n.error("negative pads remove more than the dimension");
    if (begin[d] > (1 << 24) || end[d] > (1 << 24))
      n.error("pads too large");
  }
  if (crop) {
    for (size_t d = 0; d < r; d++)
      if (cropped[d] == 0)
        st[d] = 0;
    x = slice_value(g, n, x, st, sp, cropped);
  }
  Shape out = cropped;
  bool any = false;
  for (size_t d = 0; d < r; d++) {
    out[d] += begin[d] + end[d];
    a.pad.begin[d] = static_cast<uint32_t>(begin[d]);
    a.pad.end[d] = static_cast<uint32_t>(end[d]);
    any = any || begin[d] || end[d];
    if (a.pad.mode == VNPU_ISA_PAD_REFLECT && (begin[d] || end[d]) && (begin[d] >= cropped[d] || end[d] >= cropped[d]))
      n.error("reflect padding of " + std::to_string(std::max(begin[d], end[d])) + " needs a dimension larger than " +
              std::to_string(cropped[d]));
    if (a.pad.mode == VNPU_ISA_PAD_EDGE && (begin[d] || end[d]) && cropped[d] == 0)
      n.error("edge padding of an empty dimension");
  }
  if (!any) {
    n.bind(0, n.val(x).is_const ? x : make_alias(g, x, out, n.where()));
    return;
  }
  if (n.val(x).is_const && !n.val(x).c.is_float)
    n.error("integer tensors are not supported");
  n.bind(0, emit1(g, VNPU_ISA_OP_PAD, {x}, out, a, n));
}

void lower_prelu(Graph& g, const Node& n) {
  int x = n.need(0), s = n.need(1);
  Shape out = broadcast_shapes(n.shape(x), n.shape(s), n.where());
  if (out != n.shape(x))
    n.error("slope " + shape_str(n.shape(s)) + " does not broadcast to X " + shape_str(n.shape(x)));
  VnpuOpAttr a = zero_attr();
  a.binary.kind = VNPU_ISA_BIN_PRELU;
  n.bind(0, emit1(g, VNPU_ISA_OP_BINARY, {x, s}, out, a, n));
}

void lower_selu(Graph& g, const Node& n) {
  lower_unary(g, n,
              {VNPU_ISA_ACT_SELU, n.f("alpha", 1.67326319217681884765625f), n.f("gamma", 1.05070102214813232421875f)});
}

// ScatterND on compile-time data (exported models build masks and index tables with it).
void lower_scatternd(Graph& g, const Node& n) {
  if (!n.all_const())
    n.error("only supported on compile-time constants (its input is computed at run time)");
  std::string red = n.s("reduction", "none");
  Const data = n.cst(0, "data");
  const Const &idx = n.cst(1, "indices"), &upd = n.cst(2, "updates");
  if (idx.shape.empty())
    n.error("indices must have rank >= 1");
  size_t q = static_cast<size_t>(idx.shape.back());
  if (q > data.shape.size())
    n.error("index tuples longer than the data rank");
  auto st = strides_of(data.shape);
  size_t tuples = static_cast<size_t>(idx.count() / std::max<size_t>(q, 1)), slice = 1;
  for (size_t d = q; d < data.shape.size(); d++)
    slice *= static_cast<size_t>(data.shape[d]);
  if (q == 0)
    tuples = static_cast<size_t>(numel(idx.shape));
  if (upd.count() != tuples * slice)
    n.error("updates has " + std::to_string(upd.count()) + " elements, expected " + std::to_string(tuples * slice));
  if (data.is_float != upd.is_float) {
    n.error("data and updates have different element types");
  }
  for (size_t t = 0; t < tuples; t++) {
    size_t off = 0;
    for (size_t k = 0; k < q; k++) {
      int64_t v = idx.int_at(t * q + k), dim = data.shape[k];
      if (v < -dim || v >= dim)
        n.error("index " + std::to_string(v) + " out of range");
      off += static_cast<size_t>(v < 0 ? v + dim : v) * st[k];
    }
    for (size_t j = 0; j < slice; j++) {
      size_t o = off + j, u = t * slice + j;
      if (data.is_float) {
        float& d = data.f[o];
        float v = upd.f[u];
        d = red == "add"   ? d + v
            : red == "mul" ? d * v
            : red == "max" ? std::max(d, v)
            : red == "min" ? std::min(d, v)
                           : v;
      } else {
        int64_t& d = data.i[o];
        int64_t v = upd.i[u];
        d = red == "add"   ? d + v
            : red == "mul" ? d * v
            : red == "max" ? std::max(d, v)
            : red == "min" ? std::min(d, v)
                           : v;
      }
    }
  }
  n.bind(0, g.add_const(std::move(data)));
}

// Einsum of two operands that is a batched matrix product: "b..m k, b..k n -> b..m n" with any order of the
// two matrix labels in each operand and the output (the transposes become MATMUL flags or an operand swap).
void lower_einsum(Graph& g, const Node& n) {
  std::string eq;
  for (char ch : n.s("equation", ""))
    if (ch != ' ')
      eq += ch;
  auto bad = [&](const std::string& why) {
    n.error("equation '" + n.s("equation", "") + "': " + why + " (only batched matrix products are supported)");
  };
  size_t arrow = eq.find("->"), comma = eq.find(',');
  if (n.nin() != 2 || arrow == std::string::npos || comma == std::string::npos || comma > arrow)
    bad("needs two operands and an explicit output");
  std::string la = eq.substr(0, comma), lb = eq.substr(comma + 1, arrow - comma - 1), lc = eq.substr(arrow + 2);
  if (eq.find('.') != std::string::npos)
    bad("ellipsis");
  int a = n.need(0), b = n.need(1);
  Shape as = n.shape(a), bs = n.shape(b);
  if (la.size() != as.size() || lb.size() != bs.size())
    bad("label count differs from the operand ranks");
  if (la.size() < 2 || lb.size() < 2 || lc.size() < 2 || la.size() != lb.size() || la.size() != lc.size())
    bad("operands and output must have the same rank >= 2");
  size_t nb = la.size() - 2;
  if (la.substr(0, nb) != lb.substr(0, nb) || la.substr(0, nb) != lc.substr(0, nb))
    bad("batch labels must lead, in the same order, in every operand");
  for (size_t k = 0; k < nb; k++)
    if (as[k] != bs[k])
      bad("batch dimension sizes differ");
  std::string ma = la.substr(nb), mb = lb.substr(nb), mc = lc.substr(nb);
  // The contraction label is in both operands and not in the output.
  char kl = 0;
  for (char ch : ma)
    if (mb.find(ch) != std::string::npos && mc.find(ch) == std::string::npos)
      kl = ch;
  if (!kl)
    bad("no contracted label");
  char ml = ma[0] == kl ? ma[1] : ma[0], nl = mb[0] == kl ? mb[1] : mb[0];
  if (ml == nl || mb.find(kl) == std::string::npos || la.find(nl) != std::string::npos ||
      lb.find(ml) != std::string::npos || (mc != std::string{ml, nl} && mc != std::string{nl, ml}))
    bad("not a matrix product");
  bool swap = mc[0] == nl;  // output is (n, m): compute B^T A^T
  int x = swap ? b : a, y = swap ? a : b;
  char xm = swap ? nl : ml;
  const std::string& mx = swap ? mb : ma;
  const std::string& my = swap ? ma : mb;
  VnpuOpAttr at = zero_attr();
  at.matmul.alpha = at.matmul.beta = 1.0f;
  if (mx[0] != xm)  // stored (k, m)
    at.matmul.flags |= VNPU_ISA_MATMUL_F_TRANS_A;
  if (my[0] != kl)  // stored (n, k)
    at.matmul.flags |= VNPU_ISA_MATMUL_F_TRANS_B;
  Shape xs = n.shape(x), ys = n.shape(y), out(xs.begin(), xs.begin() + static_cast<long>(nb));
  int64_t m = (at.matmul.flags & VNPU_ISA_MATMUL_F_TRANS_A) ? xs[nb + 1] : xs[nb];
  int64_t kx = (at.matmul.flags & VNPU_ISA_MATMUL_F_TRANS_A) ? xs[nb] : xs[nb + 1];
  int64_t ky = (at.matmul.flags & VNPU_ISA_MATMUL_F_TRANS_B) ? ys[nb + 1] : ys[nb];
  int64_t nn = (at.matmul.flags & VNPU_ISA_MATMUL_F_TRANS_B) ? ys[nb] : ys[nb + 1];
  if (kx != ky)
    bad("contracted dimensions differ");
  out.push_back(m);
  out.push_back(nn);
  n.bind(0, emit1(g, VNPU_ISA_OP_MATMUL, {x, y}, out, at, n));
}

// InstanceNormalization: NORM over the spatial dims of each (n, c) plane, then the per-channel scale and bias
// as CHANNEL_AFFINE.
void lower_instancenorm(Graph& g, const Node& n) {
  int x = n.need(0);
  Shape xs = n.shape(x);
  if (xs.size() < 3)
    n.error("input must have rank >= 3 (N, C, spatial...)");
  int64_t inner = 1;
  for (size_t d = 2; d < xs.size(); d++)
    inner *= xs[d];
  int s = n.need(1), b = n.need(2);
  if (numel(n.shape(s)) != xs[1] || numel(n.shape(b)) != xs[1])
    n.error("scale and B must have one value per channel");
  VnpuOpAttr a = zero_attr();
  a.norm.axis = 2;
  a.norm.epsilon = n.f("epsilon", 1e-5f);
  int y = emit1(g, VNPU_ISA_OP_NORM, {x, fill_const(g, {inner}, 1.0f), fill_const(g, {inner}, 0.0f)}, xs, a, n);
  VnpuOpAttr c = zero_attr();
  n.bind(0, emit1(g, VNPU_ISA_OP_CHANNEL_AFFINE,
                  {y, make_alias(g, s, {xs[1]}, n.where()), make_alias(g, b, {xs[1]}, n.where())}, xs, c, n));
}

// GroupNormalization (opset 18): NORM over [N, G, C/G * spatial], then the per-channel scale and bias.
void lower_groupnorm(Graph& g, const Node& n) {
  int x = n.need(0);
  Shape xs = n.shape(x);
  int64_t groups = n.i("num_groups", 0);
  if (xs.size() < 2 || groups < 1 || xs[1] % groups)
    n.error("num_groups must divide the channel count");
  int64_t per = numel(xs) / (xs[0] * groups);
  int s = n.need(1), b = n.need(2);
  if (numel(n.shape(s)) != groups || numel(n.shape(b)) != groups)
    n.error("scale and bias must have one value per group (opset 18)");
  int v = make_alias(g, x, {xs[0], groups, per}, n.where());
  VnpuOpAttr a = zero_attr();
  a.norm.axis = 2;
  a.norm.epsilon = n.f("epsilon", 1e-5f);
  int y = emit1(g, VNPU_ISA_OP_NORM, {v, fill_const(g, {per}, 1.0f), fill_const(g, {per}, 0.0f)}, {xs[0], groups, per},
                a, n);
  VnpuOpAttr c = zero_attr();
  int yc = emit1(g, VNPU_ISA_OP_CHANNEL_AFFINE,
                 {y, make_alias(g, s, {groups}, n.where()), make_alias(g, b, {groups}, n.where())},
                 {xs[0], groups, per}, c, n);
  n.bind(0, make_alias(g, yc, xs, n.where()));
}

// DepthToSpace (DCR / CRD) and SpaceToDepth: a reshape, a rank-6 transpose and a reshape.
void lower_depth_space(Graph& g, const Node& n, bool to_space) {
  int x = n.need(0);
  Shape xs = n.shape(x);
  int64_t bs = n.i("blocksize", 0);
  if (xs.size() != 4 || bs < 1)
    n.error("needs a rank-4 input and blocksize >= 1");
  int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
  Shape mid, out;
  std::vector<uint32_t> perm;
  if (to_space) {
    if (C % (bs * bs))
      n.error("channels not divisible by blocksize^2");
    bool crd = n.s("mode", "DCR") == "CRD";
    if (crd) {
      mid = {N, C / (bs * bs), bs, bs, H, W};
      perm = {0, 1, 4, 2, 5, 3};
    } else {
      mid = {N, bs, bs, C / (bs * bs), H, W};
      perm = {0, 3, 4, 1, 5, 2};
    }
    out = {N, C / (bs * bs), H * bs, W * bs};
  } else {
    if (H % bs || W % bs)
      n.error("spatial dims not divisible by blocksize");
    mid = {N, C, H / bs, bs, W / bs, bs};
    perm = {0, 3, 5, 1, 2, 4};
    out = {N, C * bs * bs, H / bs, W / bs};
  }
  int v = make_alias(g, x, mid, n.where());
  Shape ts(6);
  VnpuOpAttr a = zero_attr();
  for (size_t k = 0; k < 6; k++) {
    ts[k] = mid[perm[k]];
    a.transpose.perm[k] = perm[k];
  }
  int t;
  if (n.val(x).is_const) {  // constant input: the same data movement at compile time
    auto st = strides_of(mid);
    std::vector<size_t> src(static_cast<size_t>(numel(ts)));
    for (size_t k = 0; k < src.size(); k++) {
      size_t rem = k, off = 0;
      for (size_t d = 6; d-- > 0;) {
        size_t coord = rem % static_cast<size_t>(ts[d]);
        rem /= static_cast<size_t>(ts[d]);
        off += coord * st[perm[d]];
      }
      src[k] = off;
    }
    t = g.add_const(gather_elems(n.val(v).c, ts, src));
  } else {
    t = emit1(g, VNPU_ISA_OP_TRANSPOSE, {v}, ts, a, n);
  }
  n.bind(0, make_alias(g, t, out, n.where()));
}


// Tile with constant repeats: along each repeated axis, a CONCAT of the input with itself (folded for
// constant inputs by emit_op).
void lower_tile(Graph& g, const Node& n) {
  int x = n.need(0);
  std::vector<int64_t> reps = n.cst_ints(1, "repeats");
  Shape xs = n.shape(x);
  if (reps.size() != xs.size())
    n.error("repeats has " + std::to_string(reps.size()) + " entries for rank " + std::to_string(xs.size()));
  if (n.val(x).is_const && !n.val(x).c.is_float)
    n.error("integer tensors are not supported");
  int cur = x;
  for (size_t d = 0; d < xs.size(); d++) {
    if (reps[d] < 0)
      n.error("negative repeat");
    if (reps[d] == 1)
      continue;
    if (reps[d] == 0 || reps[d] >= VNPU_ISA_MAX_OPERANDS)
      n.error("repeat " + std::to_string(reps[d]) + " is not supported (1.." +
              std::to_string(VNPU_ISA_MAX_OPERANDS - 1) + ")");
    Shape s = n.shape(cur);
    s[d] *= reps[d];
    check_const_size(n, s);
    VnpuOpAttr a = zero_attr();
    a.axis.axis = static_cast<uint32_t>(d);
    cur = emit1(g, VNPU_ISA_OP_CONCAT, std::vector<int>(static_cast<size_t>(reps[d]), cur), s, a, n);
  }
  n.bind(0, cur == x ? (n.val(x).is_const ? x : make_alias(g, x, xs, n.where())) : cur);
}

}  // namespace

Const const_from_proto(const onnx::TensorProto& t, const std::string& where) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL || t.external_data_size())
    fail(where + ": tensor '" + t.name() +
         "' uses external data, which is not supported (save the model with weights inside)");
  Const c;
  int64_t n = 1;
  for (auto d : t.dims()) {
    if (d < 0)
      fail(where + ": tensor '" + t.name() + "' has a negative dimension");
    if (d && n > kMaxConstElems / d)
      fail(where + ": tensor '" + t.name() + "' is too large");
    c.shape.push_back(d);
    n *= d;
  }
  size_t cnt = static_cast<size_t>(n);
  const std::string& raw = t.raw_data();
  bool has_raw = t.has_raw_data();
  auto need_raw = [&](size_t esize) {
    if (raw.size() != cnt * esize)
      fail(where + ": tensor '" + t.name() + "' raw_data has " + std::to_string(raw.size()) + " bytes, expected " +
           std::to_string(cnt * esize));
  };
  auto need_count = [&](int got) {
    if (static_cast<size_t>(got) != cnt)
      fail(where + ": tensor '" + t.name() + "' has " + std::to_string(got) + " values for " + std::to_string(cnt) +
           " elements");
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      if (has_raw) {
        need_raw(4);
        for (size_t k = 0; k < cnt; k++)
          c.f.push_back(raw_at<float>(raw, k));
      } else {
        need_count(t.float_data_size());
        c.f.assign(t.float_data().begin(), t.float_data().end());
      }
      break;
    case onnx::TensorProto::DOUBLE:
      if (has_raw) {
        need_raw(8);
        for (size_t k = 0; k < cnt; k++)
          c.f.push_back(static_cast<float>(raw_at<double>(raw, k)));
      } else {
        need_count(t.double_data_size());
        for (double v : t.double_data())
          c.f.push_back(static_cast<float>(v));
      }
      break;
    case onnx::TensorProto::FLOAT16:
      if (has_raw) {
        need_raw(2);
        for (size_t k = 0; k < cnt; k++)
          c.f.push_back(half_to_float(raw_at<uint16_t>(raw, k)));
      } else {
        need_count(t.int32_data_size());
        for (int32_t v : t.int32_data())
          c.f.push_back(half_to_float(static_cast<uint16_t>(v)));
      }
      break;
    case onnx::TensorProto::BFLOAT16: {
      auto bf = [](uint16_t v) {
        uint32_t bits = uint32_t{v} << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
      };
      if (has_raw) {
        need_raw(2);
        for (size_t k = 0; k < cnt; k++)
          c.f.push_back(bf(raw_at<uint16_t>(raw, k)));
      } else {
        need_count(t.int32_data_size());
        for (int32_t v : t.int32_data())
          c.f.push_back(bf(static_cast<uint16_t>(v)));
      }
      break;
    }
    case onnx::TensorProto::INT64:
      c.is_float = false;
      if (has_raw) {
        need_raw(8);
        for (size_t k = 0; k < cnt; k++)
          c.i.push_back(raw_at<int64_t>(raw, k));
      } else {
        need_count(t.int64_data_size());
        c.i.assign(t.int64_data().begin(), t.int64_data().end());
      }
      break;
    case onnx::TensorProto::INT32:
    case onnx::TensorProto::INT16:
    case onnx::TensorProto::INT8:
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::UINT16:
    case onnx::TensorProto::BOOL: {
      c.is_float = false;
      auto dt = t.data_type();
      size_t es = dt == onnx::TensorProto::INT32                                        ? 4
                  : (dt == onnx::TensorProto::INT16 || dt == onnx::TensorProto::UINT16) ? 2
                                                                                        : 1;
      if (has_raw) {
        need_raw(es);
        for (size_t k = 0; k < cnt; k++) {
          int64_t v;
          if (dt == onnx::TensorProto::INT32)
            v = raw_at<int32_t>(raw, k);
          else if (dt == onnx::TensorProto::INT16)
            v = raw_at<int16_t>(raw, k);
          else if (dt == onnx::TensorProto::UINT16)
            v = raw_at<uint16_t>(raw, k);
          else if (dt == onnx::TensorProto::INT8)
            v = raw_at<int8_t>(raw, k);
          else
            v = raw_at<uint8_t>(raw, k);
          c.i.push_back(v);
        }
      } else {
        need_count(t.int32_data_size());
        c.i.assign(t.int32_data().begin(), t.int32_data().end());
      }
      break;
    }
    case onnx::TensorProto::UINT32:
    case onnx::TensorProto::UINT64:
      c.is_float = false;
      if (has_raw) {
        size_t es = t.data_type() == onnx::TensorProto::UINT32 ? 4 : 8;
        need_raw(es);
        for (size_t k = 0; k < cnt; k++)
          c.i.push_back(es == 4 ? raw_at<uint32_t>(raw, k) : static_cast<int64_t>(raw_at<uint64_t>(raw, k)));
      } else {
        need_count(t.uint64_data_size());
        for (auto v : t.uint64_data())
          c.i.push_back(static_cast<int64_t>(v));
      }
      break;
    default: fail(where + ": tensor '" + t.name() + "' has unsupported element type " + std::to_string(t.data_type()));
  }
  return c;
}

int make_alias(Graph& g, int v, const Shape& shape, const std::string& node) {
  if (numel(shape) != numel(g.values[v].shape))
    fail(node + ": internal: view " + shape_str(shape) + " of " + shape_str(g.values[v].shape));
  if (g.values[v].is_const)
    return g.add_const(reshape_const(g.values[v].c, shape));
  Value a;
  a.shape = shape;
  a.alias_of = g.root(v);
  return g.add_value(std::move(a));
}

int emit_op(Graph& g, uint32_t opcode, const std::vector<int>& in, const std::vector<Shape>& out_shapes,
            const VnpuOpAttr& attr, const std::string& node, std::vector<int>* outs) {
  auto args = std::make_unique<VnpuOpArgs>();
  std::memset(args.get(), 0, sizeof(VnpuOpArgs));
  args->opcode = opcode;
  args->num_inputs = static_cast<uint32_t>(in.size());
  args->num_outputs = static_cast<uint32_t>(out_shapes.size());
  args->attr = attr;
  if (in.size() + out_shapes.size() > VNPU_ISA_MAX_OPERANDS)
    fail(node + ": too many operands");
  auto fill = [&](VnpuTensor& t, const Shape& s) {
    if (s.size() > VNPU_ISA_MAX_RANK)
      fail(node + ": rank " + std::to_string(s.size()) + " exceeds the device limit of " +
           std::to_string(VNPU_ISA_MAX_RANK));
    t.rank = static_cast<uint32_t>(s.size());
    t.count = 1;
    for (size_t d = 0; d < s.size(); d++) {
      if (s[d] < 0 || s[d] > UINT32_MAX)
        fail(node + ": dimension " + std::to_string(s[d]) + " out of range");
      t.dims[d] = static_cast<uint64_t>(s[d]);
      if (t.dims[d] && t.count > (uint64_t{1} << 40) / t.dims[d])
        fail(node + ": tensor " + shape_str(s) + " is too large");
      t.count *= t.dims[d];
    }
  };
  bool all_const = true;
  for (size_t k = 0; k < in.size(); k++) {
    const Value& v = g.values[in[k]];
    if (v.is_const && !v.c.is_float)
      fail(node + ": integer tensors are not supported at run time (only f32)");
    fill(args->t[k], v.shape);
    all_const = all_const && v.is_const;
  }
  for (size_t k = 0; k < out_shapes.size(); k++)
    fill(args->t[in.size() + k], out_shapes[k]);
  if (vnpu_ops_check(args.get()) != 0)
    fail(node + ": the operation's shapes or attributes are outside what the device accepts (" +
         std::string(isa_op_name(opcode)) + ", output " + shape_str(out_shapes[0]) + ")");
  std::vector<int> ids;
  if (all_const) {
    for (const auto& s : out_shapes)
      if (numel(s) > kMaxConstElems)
        fail(node + ": constant result " + shape_str(s) + " is too large to fold");
    // Constant folding: run the device's reference kernel now.
    std::vector<std::vector<float>> bufs(out_shapes.size());
    for (size_t k = 0; k < in.size(); k++)
      args->t[k].data = const_cast<float*>(g.values[in[k]].c.f.data());
    for (size_t k = 0; k < out_shapes.size(); k++) {
      bufs[k].resize(static_cast<size_t>(numel(out_shapes[k])));
      args->t[in.size() + k].data = bufs[k].data();
    }
    if (vnpu_ops_run(args.get(), VNPU_KERNELS_REFERENCE) != VNPU_CPL_OK)
      fail(node + ": internal: constant folding failed");
    for (size_t k = 0; k < out_shapes.size(); k++) {
      Const c;
      c.shape = out_shapes[k];
      c.f = std::move(bufs[k]);
      ids.push_back(g.add_const(std::move(c)));
    }
    g.stats.folded_nodes++;
  } else {
    Op op;
    op.opcode = opcode;
    op.in = in;
    op.attr = attr;
    op.node = node;
    for (const auto& s : out_shapes) {
      Value v;
      v.shape = s;
      ids.push_back(g.add_value(std::move(v)));
    }
    op.out = ids;
    g.ops.push_back(std::move(op));
  }
  if (outs)
    *outs = ids;
  return ids[0];
}

void lower_unary_node(Graph& g, const Node& n) {
  lower_unary(g, n, unary_act(n));
}

void lower_identity(Graph& g, const Node& n) {
  const std::string& t = n.type();
  if (t == "Dropout" && n.out_used(1))
    n.error("the mask output is not supported");
  if (t == "Dropout" && n.in(2) >= 0 && n.cst(2, "training_mode").int_at(0) != 0 &&
      (n.in(1) < 0 || n.cst(1, "ratio").at(0) != 0.0))
    n.error("training-mode Dropout (random) is not supported; export the model in eval mode");
  int x = n.need(0);
  n.bind(0, n.val(x).is_const ? x : make_alias(g, x, n.shape(x), n.where()));
}

// Ops that exported models use for shape arithmetic: folded at compile time, never run on the device.
void lower_compile_time(Graph& g, const Node& n) {
  const std::string& t = n.type();
  if (t != "Constant" && t != "Shape" && t != "Size" && t != "ConstantOfShape" && !n.all_const())
    n.error("only supported on compile-time constants (its input is computed at run time)");
  lower_const_only(g, n);
}

using Lowering = std::function<void(Graph&, const Node&)>;

// Every ONNX op vnpuc accepts and how it is lowered: the one list behind both lower_node and `vnpuc --ops`.
const std::map<std::string, Lowering, std::less<>>& lowerings() {
  static const std::map<std::string, Lowering, std::less<>> table = [] {
    std::map<std::string, Lowering, std::less<>> m;
    for (const UnaryOp& u : kUnaryOps) m[u.name] = lower_unary_node;
    for (const char* t : {"Add", "Sub", "Mul", "Div", "Pow"}) m[t] = lower_binary;
    for (const char* t : {"Max", "Min", "Sum", "Mean"}) m[t] = lower_variadic;
    for (const char* t : {"Identity", "Dropout"}) m[t] = lower_identity;
    for (const char* t : {"Constant", "Shape", "Size", "ConstantOfShape", "Range", "Where", "Equal", "Less",
                          "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not"})
      m[t] = lower_compile_time;
    m["Mod"] = lower_mod;
    m["Clip"] = lower_clip;
    for (const ReduceOp& r : kReduceOps)
      m[r.name] = lower_reduce;
    m["LayerNormalization"] = lower_layernorm;
    m["Pad"] = lower_pad;
    m["PRelu"] = lower_prelu;
    m["Selu"] = lower_selu;
    m["Shrink"] = [](Graph& g, const Node& n) {
      lower_unary(g, n, {VNPU_ISA_ACT_SHRINK, n.f("lambd", 0.5f), n.f("bias", 0.0f)});
    };
    m["ScatterND"] = lower_scatternd;
    m["Einsum"] = lower_einsum;
    m["Tile"] = lower_tile;
    m["InstanceNormalization"] = lower_instancenorm;
    m["GroupNormalization"] = lower_groupnorm;
    m["DepthToSpace"] = [](Graph& g, const Node& n) { lower_depth_space(g, n, true); };
    m["SpaceToDepth"] = [](Graph& g, const Node& n) { lower_depth_space(g, n, false); };
    m["Reshape"] = lower_reshape;
    m["Flatten"] = lower_flatten;
    m["Squeeze"] = lower_squeeze;
    m["Unsqueeze"] = lower_unsqueeze;
    m["Transpose"] = lower_transpose;
    m["Slice"] = lower_slice;
    m["Split"] = lower_split;
    m["Concat"] = lower_concat;
    m["Gather"] = lower_gather;
    m["Conv"] = [](Graph& g, const Node& n) { lower_conv(g, n, false); };
    m["ConvTranspose"] = [](Graph& g, const Node& n) { lower_conv(g, n, true); };
    m["MaxPool"] = [](Graph& g, const Node& n) { lower_pool(g, n, true, false); };
    m["AveragePool"] = [](Graph& g, const Node& n) { lower_pool(g, n, false, false); };
    m["GlobalAveragePool"] = [](Graph& g, const Node& n) { lower_pool(g, n, false, true); };
    m["GlobalMaxPool"] = [](Graph& g, const Node& n) { lower_pool(g, n, true, true); };
    m["BatchNormalization"] = lower_batchnorm;
    m["MatMul"] = lower_matmul;
    m["Gemm"] = lower_gemm;
    m["Softmax"] = [](Graph& g, const Node& n) { lower_softmax(g, n, false); };
    m["LogSoftmax"] = [](Graph& g, const Node& n) { lower_softmax(g, n, true); };
    m["Resize"] = [](Graph& g, const Node& n) { lower_resize(g, n, false); };
    m["Upsample"] = [](Graph& g, const Node& n) { lower_resize(g, n, true); };
    m["Cast"] = lower_cast;
    m["Expand"] = lower_expand;
    return m;
  }();
  return table;
}

const std::vector<std::string>& lowered_ops() {
  static const std::vector<std::string> ops = [] {
    std::vector<std::string> v;
    for (const auto& [name, fn] : lowerings()) v.push_back(name);
    return v;
  }();
  return ops;
}

void lower_node(Graph& g, const onnx::NodeProto& p, int64_t opset) {
  Node n(g, p, opset);
  const std::string& t = p.op_type();
  if (!p.domain().empty() && p.domain() != "ai.onnx")
    n.error("op of domain '" + p.domain() + "' is not supported");
  for (const auto& a : p.attribute())
    if (a.type() == onnx::AttributeProto::GRAPH || a.type() == onnx::AttributeProto::GRAPHS)
      n.error("subgraph attributes are not supported");
  auto it = lowerings().find(t);
  if (it == lowerings().end())
    n.error("unsupported op '" + t + "' (vnpuc supports: see `vnpuc --ops`)");
  it->second(g, n);
}

}  // namespace vnpu::detail
