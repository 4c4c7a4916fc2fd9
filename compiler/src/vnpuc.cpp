// SPDX-License-Identifier: MIT
// vnpuc: compile an ONNX model into a .vnpu program, or describe a .vnpu file.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <vnpu/compiler.h>

namespace {

int usage(FILE* f) {
  std::fprintf(f,
               "usage: vnpuc MODEL.onnx -o MODEL.vnpu [--input NAME:SHAPE[:f32]]... [--output NAME]... [--no-fuse]\n"
               "             [--no-plan] [-v]\n"
               "       vnpuc --report MODEL.onnx [--input ...] [--output ...]\n"
               "       vnpuc --info FILE.vnpu\n"
               "       vnpuc --ops\n"
               "\n"
               "  -o FILE        output .vnpu container\n"
               "  --input SPEC   static shape for an input, e.g. images:1x3x640x640:f32 (repeatable)\n"
               "  --output NAME  cut the model: tensor NAME is an output (repeatable; replaces the graph's outputs,\n"
               "                 and only the nodes it depends on are compiled)\n"
               "  --report FILE  list the model's op types with counts and whether vnpuc supports each, then try\n"
               "                 to compile it and print the result (exit 0 if it compiles)\n"
               "  --no-fuse      keep BatchNorm and activations as separate ops\n"
               "  --no-plan      give every intermediate its own scratch range (no liveness reuse)\n"
               "  -v             print compilation statistics\n"
               "  --info FILE    print a .vnpu file's inputs, outputs, bindings and ops\n"
               "  --ops          list the ONNX ops vnpuc accepts\n");
  return f == stderr ? 2 : 0;
}

std::vector<uint8_t> read_all(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    throw vnpu::CompileError(path + ": cannot open: " + std::strerror(errno));
  std::vector<uint8_t> b;
  uint8_t buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
    b.insert(b.end(), buf, buf + n);
  std::fclose(f);
  return b;
}

// The op table of a model and whether it compiles: what a user needs to see what blocks their model.
int print_report(const std::string& path, const vnpu::CompileOptions& opt) {
  auto bytes = read_all(path);
  auto uses = vnpu::onnx_op_uses(bytes);
  unsigned nodes = 0, missing = 0;
  for (const auto& u : uses)
    nodes += u.count, missing += !u.supported;
  std::printf("%s: %u nodes, %zu op types, %u unsupported\n", path.c_str(), nodes, uses.size(), missing);
  std::printf("%-28s %6s  %-9s  %s\n", "op", "count", "supported", "first node");
  for (const auto& u : uses)
    std::printf("%-28s %6u  %-9s  %s\n", u.op.c_str(), u.count, u.supported ? "yes" : "NO", u.first_node.c_str());
  try {
    vnpu::CompileStats st;
    auto m = vnpu::compile_onnx(bytes, opt, &st);
    std::printf("compiles: yes (%u ONNX nodes -> %u device ops)\n", st.onnx_nodes, st.program_ops);
    return 0;
  } catch (const std::exception& e) {
    std::printf("compiles: no: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string model, out, info, report;
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
      else if (a == "--report")
        report = value();
      else if (a == "--output")
        opt.outputs.push_back(value());
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
    if (!report.empty())
      return print_report(report, opt);
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
