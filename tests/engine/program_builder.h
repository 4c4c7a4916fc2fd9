// SPDX-License-Identifier: MIT
// Builds EXEC programs (include/vnpu_isa.h) op by op for the engine's program tests and the .vnpu fuzzer, and
// runs them on flat host memory: binding slot i lives at a device address of its own, so the interpreter's
// map() is a bounds-checked lookup (no device MMU involved).
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

extern "C" {
#include "vnpu_hw.h"
#include "vnpu_isa.h"
#include "vnpu_program.h"
}

namespace vnpu::test {

class ProgramBuilder {
 public:
  uint32_t binding(uint32_t kind, uint64_t size) {
    bindings_.push_back({kind, 0, size});
    return static_cast<uint32_t>(bindings_.size() - 1);
  }
  uint32_t tensor(uint32_t binding, uint64_t offset, std::initializer_list<uint32_t> dims) {
    vnpu_isa_tensor t{};
    t.binding = binding;
    t.dtype = VNPU_DTYPE_F32;
    t.rank = static_cast<uint8_t>(dims.size());
    t.offset = offset;
    unsigned i = 0;
    for (uint32_t d : dims)
      t.dims[i++] = d;
    tensors_.push_back(t);
    return static_cast<uint32_t>(tensors_.size() - 1);
  }
  /// Appends an op; `attr` points to the opcode's attribute struct (nullptr for COPY).
  void op(uint16_t opcode, std::initializer_list<uint32_t> in, std::initializer_list<uint32_t> out,
          const void* attr = nullptr) {
    int attr_size = vnpu_isa_attr_size(opcode);
    uint32_t nops = static_cast<uint32_t>(in.size() + out.size());
    uint32_t operand_bytes = (nops * 4 + 7) / 8 * 8;
    vnpu_isa_op h{};
    h.opcode = opcode;
    h.num_inputs = static_cast<uint8_t>(in.size());
    h.num_outputs = static_cast<uint8_t>(out.size());
    h.attr_size = attr_size < 0 ? 0 : static_cast<uint32_t>(attr_size);
    h.size = static_cast<uint32_t>(sizeof(h) + operand_bytes + h.attr_size);
    size_t at = ops_.size();
    ops_.resize(at + h.size, 0);
    std::memcpy(ops_.data() + at, &h, sizeof(h));
    size_t k = at + sizeof(h);
    for (uint32_t t : in) {
      std::memcpy(ops_.data() + k, &t, 4);
      k += 4;
    }
    for (uint32_t t : out) {
      std::memcpy(ops_.data() + k, &t, 4);
      k += 4;
    }
    if (attr && h.attr_size)
      std::memcpy(ops_.data() + at + sizeof(h) + operand_bytes, attr, h.attr_size);
    num_ops_++;
  }
  std::vector<uint8_t> bytes() const {
    vnpu_isa_program h{};
    h.magic = VNPU_ISA_PROGRAM_MAGIC;
    h.version_major = VNPU_ISA_VERSION_MAJOR;
    h.version_minor = VNPU_ISA_VERSION_MINOR;
    h.header_size = sizeof(h);
    h.num_bindings = static_cast<uint32_t>(bindings_.size());
    h.num_tensors = static_cast<uint32_t>(tensors_.size());
    h.num_ops = num_ops_;
    h.bindings_offset = sizeof(h);
    h.tensors_offset = h.bindings_offset + bindings_.size() * sizeof(vnpu_isa_binding);
    h.ops_offset = h.tensors_offset + tensors_.size() * sizeof(vnpu_isa_tensor);
    h.ops_size = ops_.size();
    h.total_size = h.ops_offset + h.ops_size;
    std::vector<uint8_t> p(h.total_size);
    std::memcpy(p.data(), &h, sizeof(h));
    std::memcpy(p.data() + h.bindings_offset, bindings_.data(), bindings_.size() * sizeof(vnpu_isa_binding));
    std::memcpy(p.data() + h.tensors_offset, tensors_.data(), tensors_.size() * sizeof(vnpu_isa_tensor));
    std::memcpy(p.data() + h.ops_offset, ops_.data(), ops_.size());
    return p;
  }
  const std::vector<vnpu_isa_binding>& bindings() const { return bindings_; }

 private:
  std::vector<vnpu_isa_binding> bindings_;
  std::vector<vnpu_isa_tensor> tensors_;
  std::vector<uint8_t> ops_;
  uint32_t num_ops_ = 0;
};

/// Binding slots in host memory, each at device address kSlotBase * (i + 1) unless aliased with alias().
class FlatMemory {
 public:
  static constexpr uint64_t kSlotBase = 1ull << 36;

  explicit FlatMemory(const std::vector<uint64_t>& sizes) {
    for (uint64_t s : sizes) {
      slots_.emplace_back(s);
      addr_.push_back(kSlotBase * addr_.size() + kSlotBase);
    }
  }
  /// Make binding `b` name the same device memory as binding `a` (as a hostile binding table could).
  void alias(size_t b, size_t a) { addr_[b] = addr_[a]; }
  std::vector<uint8_t>& slot(size_t i) { return slots_[i]; }
  const std::vector<uint64_t>& addresses() const { return addr_; }

  VnpuProgramMem mem() {
    VnpuProgramMem m{};
    m.opaque = this;
    m.map = [](void* o, uint64_t addr, uint64_t len, int) -> void* {
      auto* self = static_cast<FlatMemory*>(o);
      for (size_t i = 0; i < self->slots_.size(); i++) {
        uint64_t base = self->kSlotBase * (i + 1);
        auto& s = self->slots_[i];
        if (addr >= base && addr - base <= s.size() && len <= s.size() - (addr - base))
          return s.data() + (addr - base);
      }
      return nullptr;
    };
    m.unmap = [](void*, void*, uint64_t, uint64_t, int) {};
    return m;
  }

  /// Runs `program` over these slots; returns the VNPU_CPL_* status.
  int run(const std::vector<uint8_t>& program, uint32_t* fail_op = nullptr) {
    VnpuComputeModel model{1'000'000'000'000ull, 100'000'000'000ull, 0};
    VnpuProgramRun r{};
    r.code = program.data();
    r.code_len = program.size();
    r.bindings = addr_.data();
    r.num_bindings = static_cast<uint32_t>(addr_.size());
    r.model = &model;
    VnpuProgramMem m = mem();
    VnpuProgramCost cost{};
    return vnpu_program_execute(&r, &m, &cost, fail_op);
  }

 private:
  std::vector<std::vector<uint8_t>> slots_;
  std::vector<uint64_t> addr_;
};

}  // namespace vnpu::test
