// SPDX-License-Identifier: MIT
#include "npy.h"

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include <vnpu/error.h>

namespace vnpu::examples {
namespace {

[[noreturn]] void bad(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kInvalidArgument, path + ": not a float32 .npy file the examples can read: " + why);
}

}  // namespace

Tensor load_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    bad(path, "no NumPy magic");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2))
      bad(path, "truncated header");
    header_len = b[0] | (b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4))
      bad(path, "truncated header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  } else {
    bad(path, "unknown format version " + std::to_string(int(magic[6])));
  }
  if (header_len > (1u << 20))
    bad(path, "header too long");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len))
    bad(path, "truncated header");
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('descr'\s*:\s*'([^']*)')")) || m[1] != "<f4")
    bad(path, "dtype is not '<f4'");
  if (!std::regex_search(header, m, std::regex(R"('fortran_order'\s*:\s*(True|False))")) || m[1] != "False")
    bad(path, "Fortran order is not supported");
  if (!std::regex_search(header, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
    bad(path, "no shape");
  std::vector<int64_t> shape;
  std::stringstream dims(m[1].str());
  for (std::string d; std::getline(dims, d, ',');) {
    if (d.find_first_not_of(" ") == std::string::npos)
      continue;
    shape.push_back(std::stoll(d));
  }
  if (shape.empty())
    shape.push_back(1);  // a 0-d array is one element
  size_t count = 1;
  for (int64_t d : shape) {
    if (d < 1 || d > (int64_t(1) << 40))
      bad(path, "bad dimension " + std::to_string(d));
    count *= size_t(d);
  }
  std::vector<float> data(count);
  if (!in.read(reinterpret_cast<char*>(data.data()), std::streamsize(count * sizeof(float))))
    bad(path, "truncated data (" + std::to_string(count) + " floats expected)");
  return Tensor(std::move(shape), std::move(data));
}

void save_npy(const std::string& path, const Tensor& t) {
  std::string shape;
  for (int64_t d : t.shape())
    shape += std::to_string(d) + ", ";
  if (t.shape().size() > 1)
    shape.resize(shape.size() - 1);  // "(1, 2)" but "(3,)"
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint16_t len = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(char(len & 0xff)).put(char(len >> 8));
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(t.data().data()), std::streamsize(t.size_bytes()));
  if (!out.flush())
    throw Error(ErrorCode::kIo, path + ": write failed: " + std::strerror(errno));
}

}  // namespace vnpu::examples
