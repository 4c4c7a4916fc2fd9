// SPDX-License-Identifier: MIT
// vnpuc: compile an ONNX model into a .vnpu program, or describe a .vnpu file.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <vnpu/compiler.h>

namespace {

int usage(FILE* f) {
  std::fprintf(f,
               "usage: vnpuc MODEL.onnx -o MODEL.vnpu [--input NAME:SHAPE[:f32]]... [--no-fuse] [--no-plan] [-v]\n"
               "       vnpuc --info FILE.vnpu\n"
               "       vnpuc --ops\n"
               "\n"
               "  -o FILE        output .vnpu container\n"
               "  --input SPEC   static shape for an input, e.g. images:1x3x640x640:f32 (repeatable)\n"
               "  --no-fuse      keep BatchNorm and activations as separate ops\n"
               "  --no-plan      give every intermediate its own scratch range (no liveness reuse)\n"
               "  -v             print compilation statistics\n"
               "  --info FILE    print a .vnpu file's inputs, outputs, bindings and ops\n"
               "  --ops          list the ONNX ops vnpuc accepts\n");
  return f == stderr ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string model, out, info;
  bool verbose = false;
  vnpu::CompileOptions opt;
  try {
    for (size_t i = 0; i < args.size(); i++) {
      const std::string& a = args[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= args.size())
          throw vnpu::CompileError(a + " needs a value");
        return args[++i];
      };
      if (a == "-h" || a == "--help")
        return usage(stdout);
      if (a == "-o")
        out = value();
      else if (a == "--input")
        opt.inputs.push_back(vnpu::parse_input_override(value()));
      else if (a == "--info")
        info = value();
      else if (a == "--no-fuse")
        opt.fold_batchnorm = opt.fuse_activations = false;
      else if (a == "--no-plan")
        opt.plan_memory = false;
      else if (a == "-v")
        verbose = true;
      else if (a == "--ops") {
        for (const auto& op : vnpu::supported_onnx_ops())
          std::printf("%s\n", op.c_str());
        return 0;
      } else if (!a.empty() && a[0] == '-') {
        std::fprintf(stderr, "vnpuc: unknown option '%s'\n", a.c_str());
        return usage(stderr);
      } else if (model.empty())
        model = a;
      else {
        std::fprintf(stderr, "vnpuc: more than one model given ('%s', '%s')\n", model.c_str(), a.c_str());
        return 2;
      }
    }
    if (!info.empty()) {
      vnpu::ModelFile m = vnpu::ModelFile::load(info);
      std::fputs(m.describe().c_str(), stdout);
      return 0;
    }
    if (model.empty() || out.empty())
      return usage(stderr);
    vnpu::CompileStats st;
    vnpu::ModelFile m = vnpu::compile_onnx_file(model, opt, &st);
    m.save(out);
    if (verbose)
      std::printf(
          "%s: %u ONNX nodes -> %u ops (%u folded, %u fused); weights %llu B, scratch %llu B "
          "(%llu B without reuse)\n",
          out.c_str(), st.onnx_nodes, st.program_ops, st.folded_nodes, st.fused_nodes,
          static_cast<unsigned long long>(st.weights_bytes), static_cast<unsigned long long>(st.scratch_bytes),
          static_cast<unsigned long long>(st.scratch_unplanned));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vnpuc: %s\n", e.what());
    return 1;
  }
}
