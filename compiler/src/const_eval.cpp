// SPDX-License-Identifier: MIT
// Compile-time evaluation of constant tensors (shape arithmetic, data movement on constants).
#include <cmath>

#include "graph.h"

namespace vnpu::detail {

void fail(const std::string& msg) {
  throw CompileError(msg);
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++)
    r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

std::vector<size_t> strides_of(const Shape& s) {
  std::vector<size_t> st(s.size());
  size_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= static_cast<size_t>(s[i]);
  }
  return st;
}

Const reshape_const(const Const& c, const Shape& shape) {
  Const r = c;
  r.shape = shape;
  return r;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const std::string& where) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; i++) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1)
      fail(where + ": shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Index of the element of a tensor of shape `in` that broadcasts to flat output index k of shape `out`.
static size_t bcast_index(const Shape& in, const Shape& out, size_t k) {
  size_t idx = 0, mul = 1;
  for (size_t i = 0; i < in.size(); i++) {
    size_t od = out.size() - 1 - i, id = in.size() - 1 - i;
    size_t o_stride = 1;
    for (size_t j = od + 1; j < out.size(); j++)
      o_stride *= static_cast<size_t>(out[j]);
    size_t coord = (k / o_stride) % static_cast<size_t>(out[od]);
    if (in[id] != 1)
      idx += coord * mul;
    mul *= static_cast<size_t>(in[id]);
  }
  return idx;
}

Const binary_const(const std::string& op, const Const& a, const Const& b) {
  Const r;
  r.shape = broadcast_shapes(a.shape, b.shape, op);
  size_t n = static_cast<size_t>(numel(r.shape));
  bool cmp = op == "Equal" || op == "Less" || op == "Greater" || op == "LessOrEqual" || op == "GreaterOrEqual" ||
             op == "And" || op == "Or";
  r.is_float = (a.is_float || b.is_float) && !cmp;
  if (r.is_float)
    r.f.resize(n);
  else
    r.i.resize(n);
  for (size_t k = 0; k < n; k++) {
    size_t ia = bcast_index(a.shape, r.shape, k), ib = bcast_index(b.shape, r.shape, k);
    if (r.is_float) {
      float x = static_cast<float>(a.at(ia)), y = static_cast<float>(b.at(ib)), v;
      if (op == "Add")
        v = x + y;
      else if (op == "Sub")
        v = x - y;
      else if (op == "Mul")
        v = x * y;
      else if (op == "Div")
        v = x / y;
      else if (op == "Max")
        v = std::max(x, y);
      else if (op == "Min")
        v = std::min(x, y);
      else if (op == "Pow")
        v = std::pow(x, y);
      else
        fail("constant " + op + " is not supported");
      r.f[k] = v;
    } else if (cmp) {
      double x = a.at(ia), y = b.at(ib);
      bool v = op == "Equal"            ? x == y
               : op == "Less"           ? x < y
               : op == "Greater"        ? x > y
               : op == "LessOrEqual"    ? x <= y
               : op == "GreaterOrEqual" ? x >= y
               : op == "And"            ? (x != 0 && y != 0)
                                        : (x != 0 || y != 0);
      r.i[k] = v;
    } else {
      int64_t x = a.i[ia], y = b.i[ib], v;
      if (op == "Add")
        v = x + y;
      else if (op == "Sub")
        v = x - y;
      else if (op == "Mul")
        v = x * y;
      else if (op == "Div") {
        if (y == 0)
          fail("constant integer division by zero");
        v = x / y;  // ONNX integer Div truncates like C
      } else if (op == "Max")
        v = std::max(x, y);
      else if (op == "Min")
        v = std::min(x, y);
      else if (op == "Pow")
        v = static_cast<int64_t>(std::pow(static_cast<double>(x), static_cast<double>(y)));
      else if (op == "Mod") {
        if (y == 0)
          fail("constant integer modulo by zero");
        v = x % y;
        if (v != 0 && ((v < 0) != (y < 0)))
          v += y;  // ONNX Mod (fmod=0) follows the divisor's sign
      } else
        fail("constant integer " + op + " is not supported");
      r.i[k] = v;
    }
  }
  return r;
}

Const gather_elems(const Const& in, const Shape& out_shape, const std::vector<size_t>& src) {
  Const r;
  r.is_float = in.is_float;
  r.shape = out_shape;
  if (in.is_float) {
    r.f.resize(src.size());
    for (size_t k = 0; k < src.size(); k++)
      r.f[k] = in.f[src[k]];
  } else {
    r.i.resize(src.size());
    for (size_t k = 0; k < src.size(); k++)
      r.i[k] = in.i[src[k]];
  }
  return r;
}

}  // namespace vnpu::detail
