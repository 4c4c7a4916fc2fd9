// SPDX-License-Identifier: MIT
// Conformance through the runtime's "sim" backend: the same engine library as the QEMU device (EXEC command,
// device MMU, compute engine, program interpreter).
#include <vnpu/async_runtime.h>
#include <vnpu/compiled_model.h>

#include "conformance.h"

namespace vnpu::conformance {

Executor sim_executor() {
  return [](const ModelFile& m, const std::vector<HostTensor>& inputs) {
    // The runtime does not take 0-element tensors (its contract, docs/runtime.md); the flat harness covers them.
    for (const auto* list : {&m.inputs(), &m.outputs()})
      for (const auto& t : *list)
        if (t.size_bytes == 0)
          throw BackendLimit("the runtime rejects 0-element tensors ('" + t.name + "')");
    std::vector<uint8_t> bytes = m.serialize();
    CompiledModel cm = CompiledModel::from_memory(bytes, "conformance");
    RuntimeOptions opt;
    opt.backend = "sim";
    Runtime rt(cm, opt);
    Inputs in;
    for (const auto& h : inputs)
      in.push_back(Tensor(h.shape, h.data));
    Outputs out = rt.run(std::move(in));
    std::vector<HostTensor> res;
    for (const auto& t : out.tensors) {
      HostTensor h;
      h.shape = t.shape();
      auto d = t.data();
      h.data.assign(d.begin(), d.end());
      res.push_back(std::move(h));
    }
    return res;
  };
}

}  // namespace vnpu::conformance
