// SPDX-License-Identifier: MIT
// vnpu-run: run a compiled model once on named inputs and write every output as DIR/<output>.npy.
//   vnpu-run M.vnpu --input NAME=FILE.npy|FILE.pb ... --output-dir DIR [--backend sim|kernel] [--device N]
// Inputs are NumPy .npy (little-endian float32, C order) or ONNX TensorProto .pb (FLOAT, float_data or
// raw_data) files. Exit status: 0 ok, 1 the run failed, 2 bad usage or input files, 3 the runtime could not start.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <vnpu/vnpu.h>

namespace {

struct BadFile : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw BadFile(path + ": " + std::strerror(errno));
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---- .npy (format 1.0/2.0/3.0): magic, version, header length, a Python dict literal, raw data ----------
vnpu::Tensor read_npy(const std::string& path) {
  const auto b = read_all(path);
  if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0)
    throw BadFile(path + ": not a .npy file");
  const int major = b[6];
  size_t hlen = 0, hoff = 0;
  if (major == 1) {
    hlen = b[8] | (b[9] << 8);
    hoff = 10;
  } else if ((major == 2 || major == 3) && b.size() >= 12) {
    hlen = b[8] | (b[9] << 8) | (b[10] << 16) | (static_cast<size_t>(b[11]) << 24);
    hoff = 12;
  } else {
    throw BadFile(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (hoff + hlen > b.size())
    throw BadFile(path + ": truncated .npy header");
  const std::string h(reinterpret_cast<const char*>(b.data() + hoff), hlen);
  auto field = [&](const std::string& key) {
    const auto k = h.find("'" + key + "'");
    if (k == std::string::npos)
      throw BadFile(path + ": .npy header lacks '" + key + "'");
    return h.find(':', k) + 1;
  };
  const auto d = field("descr");
  const auto q1 = h.find('\'', d), q2 = h.find('\'', q1 + 1);
  const std::string descr = h.substr(q1 + 1, q2 - q1 - 1);
  if (descr != "<f4" && descr != "=f4" && descr != "|f4")
    throw BadFile(path + ": dtype " + descr + " is not little-endian float32 (convert with arr.astype('<f4'))");
  const auto fo = field("fortran_order");
  if (h.compare(h.find_first_not_of(' ', fo), 4, "True") == 0)
    throw BadFile(path + ": Fortran-order arrays are not supported");
  const auto s = field("shape");
  const auto p1 = h.find('(', s), p2 = h.find(')', p1);
  std::vector<int64_t> shape;
  std::stringstream ss(h.substr(p1 + 1, p2 - p1 - 1));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.find_first_not_of(' ') == std::string::npos)
      continue;
    shape.push_back(std::stoll(tok));
  }
  size_t n = 1;
  for (int64_t x : shape)
    n *= static_cast<size_t>(x);
  const size_t off = hoff + hlen;
  if (b.size() - off != n * 4)
    throw BadFile(path + ": " + std::to_string(b.size() - off) + " data bytes for " + std::to_string(n) + " float32");
  std::vector<float> data(n);
  std::memcpy(data.data(), b.data() + off, n * 4);
  return vnpu::Tensor(std::move(shape), std::move(data));
}

void write_npy(const std::string& path, const vnpu::Tensor& t) {
  std::string shape = "(";
  for (int64_t d : t.shape())
    shape += std::to_string(d) + ", ";
  if (t.shape().size() > 1)
    shape.resize(shape.size() - 2);
  if (t.shape().size() == 1)
    shape.resize(shape.size() - 1);
  shape += ")";
  std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + h.size() + 1) % 64)
    h += ' ';
  h += '\n';
  std::ofstream out(path, std::ios::binary);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const uint16_t hl = static_cast<uint16_t>(h.size());
  out.write(magic, 8);
  out.write(reinterpret_cast<const char*>(&hl), 2);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  out.write(reinterpret_cast<const char*>(t.data().data()), static_cast<std::streamsize>(t.size_bytes()));
  if (!out)
    throw BadFile(path + ": cannot write: " + std::strerror(errno));
}

// ---- ONNX TensorProto (protobuf wire format): dims=1, data_type=2, float_data=4, name=8, raw_data=9 ------
vnpu::Tensor read_pb(const std::string& path) {
  const auto b = read_all(path);
  size_t i = 0;
  auto varint = [&]() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (i >= b.size())
        throw BadFile(path + ": truncated protobuf");
      const uint8_t c = b[i++];
      v |= static_cast<uint64_t>(c & 0x7f) << shift;
      if (!(c & 0x80))
        return v;
    }
    throw BadFile(path + ": bad varint");
  };
  std::vector<int64_t> dims;
  std::vector<float> floats;
  int64_t dtype = 1;
  std::vector<uint8_t> raw;
  bool have_raw = false;
  while (i < b.size()) {
    const uint64_t key = varint();
    const uint64_t field = key >> 3, wire = key & 7;
    if (wire == 0) {
      const uint64_t v = varint();
      if (field == 1)
        dims.push_back(static_cast<int64_t>(v));
      if (field == 2)
        dtype = static_cast<int64_t>(v);
    } else if (wire == 2) {
      const uint64_t len = varint();
      if (len > b.size() - i)
        throw BadFile(path + ": truncated protobuf field");
      if (field == 1) {  // packed dims
        const size_t end = i + len;
        while (i < end)
          dims.push_back(static_cast<int64_t>(varint()));
      } else {
        if (field == 4) {
          if (len % 4)
            throw BadFile(path + ": float_data not a multiple of 4 bytes");
          const size_t n0 = floats.size();
          floats.resize(n0 + len / 4);
          std::memcpy(floats.data() + n0, b.data() + i, len);
        } else if (field == 9) {
          raw.assign(b.begin() + static_cast<long>(i), b.begin() + static_cast<long>(i + len));
          have_raw = true;
        }
        i += len;
      }
    } else if (wire == 5) {
      if (i + 4 > b.size())
        throw BadFile(path + ": truncated protobuf");
      if (field == 4) {
        float f;
        std::memcpy(&f, b.data() + i, 4);
        floats.push_back(f);
      }
      i += 4;
    } else if (wire == 1) {
      i += 8;
    } else {
      throw BadFile(path + ": not an ONNX TensorProto (wire type " + std::to_string(wire) + ")");
    }
  }
  if (dtype != 1)
    throw BadFile(path + ": TensorProto data_type " + std::to_string(dtype) + " is not FLOAT");
  if (have_raw) {
    if (raw.size() % 4)
      throw BadFile(path + ": raw_data not a multiple of 4 bytes");
    floats.resize(raw.size() / 4);
    std::memcpy(floats.data(), raw.data(), raw.size());
  }
  size_t n = 1;
  for (int64_t d : dims)
    n *= static_cast<size_t>(d);
  if (n != floats.size())
    throw BadFile(path + ": " + std::to_string(floats.size()) + " elements for shape " + vnpu::shape_string(dims));
  return vnpu::Tensor(std::move(dims), std::move(floats));
}

[[noreturn]] void usage(int status) {
  std::fprintf(status ? stderr : stdout,
               "usage: vnpu-run MODEL.vnpu --input NAME=FILE.npy|FILE.pb ... --output-dir DIR\n"
               "                [--backend sim|kernel] [--device N]\n"
               "Runs the model once and writes DIR/<output>.npy for every model output.\n");
  std::exit(status);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, out_dir;
  std::map<std::string, std::string> inputs;
  vnpu::RuntimeOptions opt;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "-h" || f == "--help")
      usage(0);
    if (f.rfind("--", 0) != 0) {
      if (!model_path.empty())
        usage(2);
      model_path = f;
      continue;
    }
    if (i + 1 >= argc)
      usage(2);
    const std::string v = argv[++i];
    if (f == "--input") {
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "vnpu-run: --input wants NAME=FILE, got '%s'\n", v.c_str());
        return 2;
      }
      inputs[v.substr(0, eq)] = v.substr(eq + 1);
    } else if (f == "--output-dir")
      out_dir = v;
    else if (f == "--backend")
      opt.backend = v;
    else if (f == "--device")
      opt.device = std::atoi(v.c_str());
    else
      usage(2);
  }
  if (model_path.empty() || out_dir.empty())
    usage(2);

  std::optional<vnpu::CompiledModel> model;
  try {
    model = vnpu::CompiledModel::load(model_path);
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-run: %s\n", e.what());
    return 2;
  }
  vnpu::Inputs in;
  try {
    for (const auto& ti : model->inputs()) {
      auto it = inputs.find(ti.name);
      if (it == inputs.end())
        throw BadFile("missing --input " + ti.name + "=FILE (shape " + vnpu::shape_string(ti.shape) + ")");
      const std::string& p = it->second;
      vnpu::Tensor t = p.size() > 3 && p.compare(p.size() - 3, 3, ".pb") == 0 ? read_pb(p) : read_npy(p);
      in.push_back(std::move(t));
      inputs.erase(it);
    }
    if (!inputs.empty())
      throw BadFile("the model has no input named '" + inputs.begin()->first + "'");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vnpu-run: %s\n", e.what());
    return 2;
  }
  if (::mkdir(out_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "vnpu-run: cannot create %s: %s\n", out_dir.c_str(), std::strerror(errno));
    return 2;
  }
  std::unique_ptr<vnpu::Runtime> rt;
  try {
    rt = std::make_unique<vnpu::Runtime>(*model, opt);
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-run: cannot start the runtime: %s\n", e.what());
    return 3;
  }
  try {
    const auto out = rt->run(std::move(in));
    for (size_t i = 0; i < out.tensors.size(); ++i) {
      std::string name = out.names[i];
      for (char& c : name)
        if (c == '/' || c == '\0')
          c = '_';
      const std::string path = out_dir + "/" + name + ".npy";
      write_npy(path, out.tensors[i]);
      std::printf("%s %s -> %s\n", out.names[i].c_str(), vnpu::shape_string(out.tensors[i].shape()).c_str(),
                  path.c_str());
    }
  } catch (const vnpu::Error& e) {
    std::fprintf(stderr, "vnpu-run: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vnpu-run: %s\n", e.what());
    return 1;
  }
  return 0;
}
