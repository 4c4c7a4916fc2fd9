// SPDX-License-Identifier: MIT
// The .vnpu container reader/writer. Every read goes through bounds-checked helpers: the input is untrusted.
#include <vnpu/model_file.h>

#include <zlib.h>

#include <unistd.h>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

extern "C" {
#include "vnpu_hw.h"
#include "vnpu_isa.h"
}

namespace vnpu {
namespace {

constexpr size_t kMaxNameLen = 1024;

template <class T>
T load_struct(std::span<const uint8_t> bytes, uint64_t offset) {
  // Callers have checked offset + sizeof(T) <= bytes.size(); memcpy avoids unaligned access.
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

bool range_ok(uint64_t offset, uint64_t size, uint64_t limit) {
  return offset <= limit && size <= limit - offset;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

uint32_t file_crc(std::span<const uint8_t> bytes) {
  // CRC over the file with the crc32 field read as zero.
  constexpr size_t kCrcOff = offsetof(vnpu_file_header, crc32);
  const uint8_t zero[4] = {0, 0, 0, 0};
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, bytes.data(), kCrcOff);
  crc = crc32(crc, zero, 4);
  size_t rest = bytes.size() - kCrcOff - 4;
  const uint8_t* p = bytes.data() + kCrcOff + 4;
  while (rest > 0) {  // zlib's length is a uInt
    uInt chunk = static_cast<uInt>(std::min<size_t>(rest, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    rest -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

bool checked_elems(const uint64_t* dims, unsigned rank, uint64_t* out) {
  uint64_t n = 1;
  for (unsigned i = 0; i < rank; i++) {
    if (dims[i] != 0 && n > std::numeric_limits<uint64_t>::max() / dims[i])
      return false;
    n *= dims[i];
  }
  *out = n;
  return true;
}

}  // namespace

uint64_t TensorSpec::element_count() const noexcept {
  uint64_t n = 1;
  for (int64_t d : shape)
    n *= static_cast<uint64_t>(d);
  return n;
}

const char* isa_op_name(uint32_t opcode) noexcept {
  switch (opcode) {
    case VNPU_ISA_OP_CONV: return "conv";
    case VNPU_ISA_OP_CONV_TRANSPOSE: return "conv_transpose";
    case VNPU_ISA_OP_POOL: return "pool";
    case VNPU_ISA_OP_MATMUL: return "matmul";
    case VNPU_ISA_OP_BINARY: return "binary";
    case VNPU_ISA_OP_UNARY: return "unary";
    case VNPU_ISA_OP_CHANNEL_AFFINE: return "channel_affine";
    case VNPU_ISA_OP_CONCAT: return "concat";
    case VNPU_ISA_OP_SLICE: return "slice";
    case VNPU_ISA_OP_TRANSPOSE: return "transpose";
    case VNPU_ISA_OP_COPY: return "copy";
    case VNPU_ISA_OP_RESIZE: return "resize";
    case VNPU_ISA_OP_SOFTMAX: return "softmax";
    case VNPU_ISA_OP_REDUCE: return "reduce";
    case VNPU_ISA_OP_NORM: return "norm";
    case VNPU_ISA_OP_PAD: return "pad";
    default: return "?";
  }
}

std::string check_program(std::span<const uint8_t> prog, std::vector<BindingSpec>* bindings_out, uint32_t* op_count) {
  const uint64_t len = prog.size();
  if (len < sizeof(vnpu_isa_program))
    return "program shorter than its header";
  auto hdr = load_struct<vnpu_isa_program>(prog, 0);
  if (hdr.magic != VNPU_ISA_PROGRAM_MAGIC)
    return "program magic is " + hex32(hdr.magic) + ", not a vnpu program";
  if (hdr.version_major != VNPU_ISA_VERSION_MAJOR)
    return "program ISA version " + std::to_string(hdr.version_major) + "." + std::to_string(hdr.version_minor) +
           " is not supported (this build reads " + std::to_string(VNPU_ISA_VERSION_MAJOR) + ".x)";
  if (hdr.header_size < sizeof(vnpu_isa_program) || hdr.header_size > len || hdr.header_size % 8)
    return "program header_size " + std::to_string(hdr.header_size) + " is invalid";
  if (hdr.flags || hdr.rsvd0 || hdr.rsvd1)
    return "program header has non-zero reserved fields";
  if (hdr.total_size != len)
    return "program total_size " + std::to_string(hdr.total_size) + " != section size " + std::to_string(len);
  if (len > VNPU_PROG_MAX_LEN)
    return "program larger than VNPU_PROG_MAX_LEN";
  if (hdr.num_bindings < 1 || hdr.num_bindings > VNPU_ISA_MAX_BINDINGS)
    return "program has " + std::to_string(hdr.num_bindings) + " bindings (1.." +
           std::to_string(VNPU_ISA_MAX_BINDINGS) + " allowed)";
  if (hdr.num_tensors > VNPU_ISA_MAX_TENSORS || hdr.num_ops > VNPU_ISA_MAX_OPS)
    return "program tensor or op count out of range";
  if (hdr.bindings_offset % 8 || hdr.tensors_offset % 8 || hdr.ops_offset % 8)
    return "program table offsets are not 8-byte aligned";
  if (!range_ok(hdr.bindings_offset, uint64_t{hdr.num_bindings} * sizeof(vnpu_isa_binding), len) ||
      hdr.bindings_offset < hdr.header_size)
    return "program binding table lies outside the program";
  if (!range_ok(hdr.tensors_offset, uint64_t{hdr.num_tensors} * sizeof(vnpu_isa_tensor), len) ||
      hdr.tensors_offset < hdr.header_size)
    return "program tensor table lies outside the program";
  if (!range_ok(hdr.ops_offset, hdr.ops_size, len) || hdr.ops_offset < hdr.header_size)
    return "program op stream lies outside the program";

  std::vector<BindingSpec> bindings;
  int weights = 0;
  for (uint32_t i = 0; i < hdr.num_bindings; i++) {
    auto b = load_struct<vnpu_isa_binding>(prog, hdr.bindings_offset + i * sizeof(vnpu_isa_binding));
    if (b.kind < VNPU_ISA_BIND_WEIGHTS || b.kind > VNPU_ISA_BIND_SCRATCH)
      return "binding " + std::to_string(i) + " has unknown kind " + std::to_string(b.kind);
    if (b.flags)
      return "binding " + std::to_string(i) + " has non-zero flags";
    if (b.kind == VNPU_ISA_BIND_WEIGHTS)
      weights++;
    bindings.push_back({static_cast<BindingKind>(b.kind), b.size});
  }
  if (weights != 1)
    return "program must have exactly one weights binding (has " + std::to_string(weights) + ")";

  for (uint32_t i = 0; i < hdr.num_tensors; i++) {
    auto t = load_struct<vnpu_isa_tensor>(prog, hdr.tensors_offset + uint64_t{i} * sizeof(vnpu_isa_tensor));
    std::string where = "tensor " + std::to_string(i);
    if (t.binding >= hdr.num_bindings)
      return where + " names binding " + std::to_string(t.binding) + " of " + std::to_string(hdr.num_bindings);
    if (vnpu_isa_dtype_size(t.dtype) == 0 || t.rsvd0)
      return where + " has an unknown dtype or reserved bits";
    if (t.rank > VNPU_ISA_MAX_RANK)
      return where + " has rank " + std::to_string(t.rank);
    uint64_t dims[VNPU_ISA_MAX_RANK];
    for (unsigned d = 0; d < VNPU_ISA_MAX_RANK; d++) {
      dims[d] = t.dims[d];
      if (d >= t.rank && t.dims[d])
        return where + " has non-zero unused dims";
    }
    uint64_t n;
    if (!checked_elems(dims, t.rank, &n) || n > std::numeric_limits<uint64_t>::max() / 4)
      return where + " is too large";
    if (t.offset % 4)
      return where + " offset is not 4-byte aligned";
    if (!range_ok(t.offset, n * vnpu_isa_dtype_size(t.dtype), bindings[t.binding].size))
      return where + " (offset " + std::to_string(t.offset) + ", " + std::to_string(n * 4) +
             " bytes) lies outside binding " + std::to_string(t.binding) + " (" +
             std::to_string(bindings[t.binding].size) + " bytes)";
  }

  uint64_t pos = hdr.ops_offset;
  const uint64_t end = hdr.ops_offset + hdr.ops_size;
  for (uint32_t i = 0; i < hdr.num_ops; i++) {
    std::string where = "op " + std::to_string(i);
    if (!range_ok(pos, sizeof(vnpu_isa_op), end))
      return where + " runs past the end of the op stream";
    auto op = load_struct<vnpu_isa_op>(prog, pos);
    int attr = vnpu_isa_attr_size(op.opcode);
    if (attr < 0)
      return where + " has unknown opcode " + std::to_string(op.opcode);
    where += std::string(" (") + isa_op_name(op.opcode) + ")";
    if (op.flags)
      return where + " has non-zero flags";
    unsigned nops = op.num_inputs + op.num_outputs;
    if (op.num_outputs < 1 || op.num_inputs < 1 || nops > VNPU_ISA_MAX_OPERANDS)
      return where + " has " + std::to_string(op.num_inputs) + " inputs and " + std::to_string(op.num_outputs) +
             " outputs";
    if (op.attr_size != static_cast<uint32_t>(attr))
      return where + " attr_size " + std::to_string(op.attr_size) + " != " + std::to_string(attr);
    uint64_t operand_bytes = align_up(uint64_t{nops} * 4, 8);
    uint64_t need = sizeof(vnpu_isa_op) + operand_bytes + op.attr_size;
    if (op.size != need)
      return where + " size " + std::to_string(op.size) + " != " + std::to_string(need);
    if (!range_ok(pos, op.size, end))
      return where + " runs past the end of the op stream";
    for (unsigned k = 0; k < nops; k++) {
      auto idx = load_struct<uint32_t>(prog, pos + sizeof(vnpu_isa_op) + 4 * k);
      if (idx >= hdr.num_tensors)
        return where + " operand " + std::to_string(k) + " names tensor " + std::to_string(idx) + " of " +
               std::to_string(hdr.num_tensors);
      if (k >= op.num_inputs) {
        auto t = load_struct<vnpu_isa_tensor>(prog, hdr.tensors_offset + uint64_t{idx} * sizeof(vnpu_isa_tensor));
        if (bindings[t.binding].kind == BindingKind::kWeights || bindings[t.binding].kind == BindingKind::kInput)
          return where + " writes tensor " + std::to_string(idx) + " in a read-only (weights/input) binding";
      }
    }
    pos += op.size;
  }
  if (pos != end)
    return "op stream has " + std::to_string(end - pos) + " trailing bytes after the last op";
  if (bindings_out)
    *bindings_out = std::move(bindings);
  if (op_count)
    *op_count = hdr.num_ops;
  return {};
}

uint32_t ModelFile::weights_binding() const {
  for (size_t i = 0; i < bindings_.size(); i++)
    if (bindings_[i].kind == BindingKind::kWeights)
      return static_cast<uint32_t>(i);
  throw FormatError("model has no weights binding");
}

const TensorSpec* ModelFile::find_input(std::string_view name) const noexcept {
  for (const auto& t : inputs_)
    if (t.name == name)
      return &t;
  return nullptr;
}

const TensorSpec* ModelFile::find_output(std::string_view name) const noexcept {
  for (const auto& t : outputs_)
    if (t.name == name)
      return &t;
  return nullptr;
}

void ModelFile::set_program(std::vector<uint8_t> program) {
  std::vector<BindingSpec> bindings;
  uint32_t ops = 0;
  std::string err = check_program(program, &bindings, &ops);
  if (!err.empty())
    throw FormatError("invalid program: " + err);
  program_ = std::move(program);
  bindings_ = std::move(bindings);
  op_count_ = ops;
}

void ModelFile::validate() const {
  std::string err = check_program(program_, nullptr, nullptr);
  if (!err.empty())
    throw FormatError("invalid program: " + err);
  uint32_t wb = weights_binding();
  if (bindings_[wb].size != weights_.size())
    throw FormatError("weights blob is " + std::to_string(weights_.size()) + " bytes but the weights binding needs " +
                      std::to_string(bindings_[wb].size));
  auto check_list = [&](const std::vector<TensorSpec>& list, BindingKind kind, const char* what) {
    for (size_t i = 0; i < list.size(); i++) {
      const TensorSpec& t = list[i];
      std::string where = std::string(what) + " " + std::to_string(i) + " '" + t.name + "'";
      if (t.name.empty() || t.name.size() > kMaxNameLen)
        throw FormatError(where + ": name length out of range");
      for (size_t j = 0; j < i; j++)
        if (list[j].name == t.name)
          throw FormatError(where + ": duplicate name");
      if (vnpu_isa_dtype_size(t.dtype) == 0)
        throw FormatError(where + ": unknown dtype " + std::to_string(t.dtype));
      if (t.shape.size() > VNPU_ISA_MAX_RANK)
        throw FormatError(where + ": rank above " + std::to_string(VNPU_ISA_MAX_RANK));
      uint64_t dims[VNPU_ISA_MAX_RANK] = {};
      for (size_t d = 0; d < t.shape.size(); d++) {
        if (t.shape[d] < 0)
          throw FormatError(where + ": negative dimension");
        dims[d] = static_cast<uint64_t>(t.shape[d]);
      }
      uint64_t n;
      if (!checked_elems(dims, static_cast<unsigned>(t.shape.size()), &n) ||
          n > std::numeric_limits<uint64_t>::max() / 4 || n * vnpu_isa_dtype_size(t.dtype) != t.size_bytes)
        throw FormatError(where + ": size_bytes does not match its shape");
      if (t.binding >= bindings_.size() || bindings_[t.binding].kind != kind)
        throw FormatError(where + ": binding " + std::to_string(t.binding) + " is missing or of the wrong kind");
      if (!range_ok(t.offset, t.size_bytes, bindings_[t.binding].size))
        throw FormatError(where + ": lies outside its binding");
    }
  };
  check_list(inputs_, BindingKind::kInput, "input");
  check_list(outputs_, BindingKind::kOutput, "output");
  if (outputs_.empty())
    throw FormatError("model has no outputs");
}

std::vector<uint8_t> ModelFile::serialize() const {
  validate();
  std::string strings;
  std::vector<vnpu_file_tensor> tensors;
  auto add = [&](const TensorSpec& t, uint8_t kind) {
    vnpu_file_tensor ft{};
    ft.name_offset = static_cast<uint32_t>(strings.size());
    ft.name_len = static_cast<uint32_t>(t.name.size());
    strings += t.name;
    ft.kind = kind;
    ft.dtype = static_cast<uint8_t>(t.dtype);
    ft.rank = static_cast<uint8_t>(t.shape.size());
    ft.binding = t.binding;
    ft.offset = t.offset;
    ft.size = t.size_bytes;
    for (size_t d = 0; d < t.shape.size(); d++)
      ft.dims[d] = static_cast<uint64_t>(t.shape[d]);
    tensors.push_back(ft);
  };
  for (const auto& t : inputs_)
    add(t, VNPU_FILE_TENSOR_INPUT);
  for (const auto& t : outputs_)
    add(t, VNPU_FILE_TENSOR_OUTPUT);

  struct Payload {
    uint32_t kind;
    const uint8_t* data;
    size_t size;
  };
  std::vector<Payload> payloads = {
      {VNPU_FILE_SEC_STRINGS, reinterpret_cast<const uint8_t*>(strings.data()), strings.size()},
      {VNPU_FILE_SEC_TENSORS, reinterpret_cast<const uint8_t*>(tensors.data()), tensors.size() * sizeof(tensors[0])},
      {VNPU_FILE_SEC_PROGRAM, program_.data(), program_.size()},
      {VNPU_FILE_SEC_WEIGHTS, weights_.data(), weights_.size()},
  };
  if (!producer_.empty())
    payloads.push_back({VNPU_FILE_SEC_PRODUCER, reinterpret_cast<const uint8_t*>(producer_.data()), producer_.size()});

  vnpu_file_header hdr{};
  std::memcpy(hdr.magic, VNPU_FILE_MAGIC, 8);
  hdr.version_major = VNPU_FILE_VERSION_MAJOR;
  hdr.version_minor = VNPU_FILE_VERSION_MINOR;
  hdr.header_size = sizeof(hdr);
  hdr.sections_offset = sizeof(hdr);
  hdr.num_sections = static_cast<uint32_t>(payloads.size());
  uint64_t pos = align_up(sizeof(hdr) + payloads.size() * sizeof(vnpu_file_section), VNPU_FILE_ALIGN);
  std::vector<vnpu_file_section> secs;
  for (const auto& p : payloads) {
    secs.push_back({p.kind, 0, pos, p.size});
    pos = align_up(pos + p.size, VNPU_FILE_ALIGN);
  }
  hdr.file_size = pos;
  std::vector<uint8_t> out(pos, 0);
  std::memcpy(out.data(), &hdr, sizeof hdr);
  std::memcpy(out.data() + sizeof hdr, secs.data(), secs.size() * sizeof(secs[0]));
  for (size_t i = 0; i < payloads.size(); i++)
    if (payloads[i].size)
      std::memcpy(out.data() + secs[i].offset, payloads[i].data, payloads[i].size);
  uint32_t crc = file_crc(out);
  std::memcpy(out.data() + offsetof(vnpu_file_header, crc32), &crc, 4);
  return out;
}

ModelFile ModelFile::parse(std::span<const uint8_t> bytes, std::string_view what_sv) {
  const std::string what(what_sv);
  auto fail = [&](const std::string& msg) -> FormatError { return FormatError(what + ": " + msg); };
  const uint64_t len = bytes.size();
  if (len < 8 || std::memcmp(bytes.data(), VNPU_FILE_MAGIC, 8) != 0)
    throw fail("not a .vnpu file (bad magic; expected \"VNPUMODL\" — compile ONNX models with vnpuc first)");
  if (len < sizeof(vnpu_file_header))
    throw fail("truncated: " + std::to_string(len) + " bytes, shorter than the header");
  auto hdr = load_struct<vnpu_file_header>(bytes, 0);
  if (hdr.version_major != VNPU_FILE_VERSION_MAJOR)
    throw fail("container version " + std::to_string(hdr.version_major) + "." + std::to_string(hdr.version_minor) +
               " is not supported (this build reads " + std::to_string(VNPU_FILE_VERSION_MAJOR) +
               ".x); recompile the model with this vnpuc");
  if (hdr.file_size != len)
    throw fail(hdr.file_size > len ? "truncated: header says " + std::to_string(hdr.file_size) + " bytes, file has " +
                                         std::to_string(len)
                                   : "file has " + std::to_string(len - hdr.file_size) + " trailing bytes");
  uint32_t crc = file_crc(bytes);
  if (crc != hdr.crc32)
    throw fail("checksum mismatch (file says " + hex32(hdr.crc32) + ", contents give " + hex32(crc) +
               "): the file is damaged");
  if (hdr.header_size < sizeof(vnpu_file_header) || hdr.header_size > len)
    throw fail("bad header_size");
  if (hdr.flags || hdr.rsvd0 || hdr.rsvd1[0] || hdr.rsvd1[1])
    throw fail("reserved header fields are not zero");
  if (hdr.num_sections < 4 || hdr.num_sections > VNPU_FILE_MAX_SECTIONS)
    throw fail("section count " + std::to_string(hdr.num_sections) + " out of range");
  if (!range_ok(hdr.sections_offset, uint64_t{hdr.num_sections} * sizeof(vnpu_file_section), len) ||
      hdr.sections_offset < hdr.header_size || hdr.sections_offset % 8)
    throw fail("section table lies outside the file");

  std::map<uint32_t, vnpu_file_section> secs;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (uint32_t i = 0; i < hdr.num_sections; i++) {
    auto s = load_struct<vnpu_file_section>(bytes, hdr.sections_offset + uint64_t{i} * sizeof(vnpu_file_section));
    std::string where = "section " + std::to_string(i) + " (kind " + std::to_string(s.kind) + ")";
    if (s.flags)
      throw fail(where + " has non-zero flags");
    if (s.offset % VNPU_FILE_ALIGN || !range_ok(s.offset, s.size, len) ||
        s.offset < hdr.sections_offset + uint64_t{hdr.num_sections} * sizeof(vnpu_file_section))
      throw fail(where + " (offset " + std::to_string(s.offset) + ", size " + std::to_string(s.size) +
                 ") lies outside the file or is misaligned");
    for (auto [o, sz] : ranges)
      if (s.size && sz && s.offset < o + sz && o < s.offset + s.size)
        throw fail(where + " overlaps another section");
    ranges.emplace_back(s.offset, s.size);
    if (s.kind < VNPU_FILE_SEC_STRINGS || s.kind > VNPU_FILE_SEC_PRODUCER)
      continue;  // unknown: skip
    if (secs.count(s.kind))
      throw fail(where + " appears twice");
    secs[s.kind] = s;
  }
  for (uint32_t k : {VNPU_FILE_SEC_STRINGS, VNPU_FILE_SEC_TENSORS, VNPU_FILE_SEC_WEIGHTS, VNPU_FILE_SEC_PROGRAM})
    if (!secs.count(k))
      throw fail("required section of kind " + std::to_string(k) + " is missing");
  auto sec_span = [&](uint32_t k) { return bytes.subspan(secs[k].offset, secs[k].size); };

  ModelFile m;
  auto prog = sec_span(VNPU_FILE_SEC_PROGRAM);
  std::string err = check_program(prog, &m.bindings_, &m.op_count_);
  if (!err.empty())
    throw fail("invalid program: " + err);
  m.program_.assign(prog.begin(), prog.end());
  auto w = sec_span(VNPU_FILE_SEC_WEIGHTS);
  m.weights_.assign(w.begin(), w.end());
  if (secs.count(VNPU_FILE_SEC_PRODUCER)) {
    auto p = sec_span(VNPU_FILE_SEC_PRODUCER);
    m.producer_.assign(p.begin(), p.end());
  }
  auto strings = sec_span(VNPU_FILE_SEC_STRINGS);
  auto tens = sec_span(VNPU_FILE_SEC_TENSORS);
  if (tens.size() % sizeof(vnpu_file_tensor))
    throw fail("tensor section size is not a multiple of the entry size");
  for (size_t i = 0; i < tens.size() / sizeof(vnpu_file_tensor); i++) {
    auto ft = load_struct<vnpu_file_tensor>(tens, i * sizeof(vnpu_file_tensor));
    std::string where = "tensor spec " + std::to_string(i);
    if (ft.rsvd0)
      throw fail(where + " has reserved bits set");
    if (ft.name_len == 0 || ft.name_len > kMaxNameLen || !range_ok(ft.name_offset, ft.name_len, strings.size()))
      throw fail(where + " name lies outside the string table");
    if (ft.rank > VNPU_ISA_MAX_RANK)
      throw fail(where + " rank out of range");
    TensorSpec t;
    t.name.assign(reinterpret_cast<const char*>(strings.data()) + ft.name_offset, ft.name_len);
    t.dtype = ft.dtype;
    t.binding = ft.binding;
    t.offset = ft.offset;
    t.size_bytes = ft.size;
    for (unsigned d = 0; d < VNPU_ISA_MAX_RANK; d++) {
      if (d < ft.rank) {
        if (ft.dims[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          throw fail(where + " dimension out of range");
        t.shape.push_back(static_cast<int64_t>(ft.dims[d]));
      } else if (ft.dims[d]) {
        throw fail(where + " has non-zero unused dims");
      }
    }
    if (ft.kind == VNPU_FILE_TENSOR_INPUT) {
      if (!m.outputs_.empty())
        throw fail(where + ": inputs must precede outputs");
      m.inputs_.push_back(std::move(t));
    } else if (ft.kind == VNPU_FILE_TENSOR_OUTPUT) {
      m.outputs_.push_back(std::move(t));
    } else {
      throw fail(where + " has unknown kind " + std::to_string(ft.kind));
    }
  }
  try {
    m.validate();
  } catch (const FormatError& e) {
    throw fail(e.what());
  }
  return m;
}

ModelFile ModelFile::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw FormatError(path + ": cannot open: " + std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad())
    throw FormatError(path + ": read failed: " + std::strerror(errno));
  return parse(bytes, path);
}

void ModelFile::save(const std::string& path) const {
  std::vector<uint8_t> bytes = serialize();
  std::string tmp = path + ".tmp" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    throw FormatError(path + ": cannot create: " + std::strerror(errno));
  bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    throw FormatError(path + ": write failed: " + std::strerror(e));
  }
}

std::string ModelFile::describe() const {
  std::ostringstream os;
  auto shape_str = [](const std::vector<int64_t>& s) {
    std::string r;
    for (size_t i = 0; i < s.size(); i++)
      r += (i ? "x" : "") + std::to_string(s[i]);
    return r.empty() ? std::string("scalar") : r;
  };
  os << "format:   .vnpu " << VNPU_FILE_VERSION_MAJOR << "." << VNPU_FILE_VERSION_MINOR << ", ISA "
     << VNPU_ISA_VERSION_MAJOR << "." << VNPU_ISA_VERSION_MINOR << "\n";
  if (!producer_.empty())
    os << "producer: " << producer_ << "\n";
  os << "program:  " << program_.size() << " bytes, " << op_count_ << " ops\n";
  os << "weights:  " << weights_.size() << " bytes\n";
  os << "inputs:\n";
  for (const auto& t : inputs_)
    os << "  " << t.name << "  f32 " << shape_str(t.shape) << "  (binding " << t.binding << ", " << t.size_bytes
       << " bytes)\n";
  os << "outputs:\n";
  for (const auto& t : outputs_)
    os << "  " << t.name << "  f32 " << shape_str(t.shape) << "  (binding " << t.binding << ", " << t.size_bytes
       << " bytes)\n";
  os << "bindings:\n";
  static const char* kKinds[] = {"?", "weights", "input", "output", "scratch"};
  for (size_t i = 0; i < bindings_.size(); i++)
    os << "  " << i << ": " << kKinds[static_cast<uint32_t>(bindings_[i].kind)] << " " << bindings_[i].size
       << " bytes\n";
  // Op histogram, from the (already validated) program.
  auto hdr = load_struct<vnpu_isa_program>(program_, 0);
  std::map<std::string, int> hist;
  uint64_t pos = hdr.ops_offset;
  for (uint32_t i = 0; i < hdr.num_ops; i++) {
    auto op = load_struct<vnpu_isa_op>(program_, pos);
    hist[isa_op_name(op.opcode)]++;
    pos += op.size;
  }
  os << "ops:";
  for (const auto& [name, n] : hist)
    os << " " << name << "=" << n;
  os << "\n";
  return os.str();
}

}  // namespace vnpu
