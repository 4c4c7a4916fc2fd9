// SPDX-License-Identifier: MIT
#include "nyu.h"

#include <algorithm>
#include <filesystem>

#include <hdf5.h>

#include <vnpu/error.h>

namespace vnpu::examples {
namespace {

// RAII for HDF5 identifiers; each kind has its own close function.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Id() {
    if (id_ >= 0)
      close_(id_);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  [[nodiscard]] hid_t get() const { return id_; }
  [[nodiscard]] bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

[[noreturn]] void bad(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kInvalidArgument, path + ": not an NYU Depth V2 sample: " + why);
}

// Reads dataset `name` of rank `rank` into `out` converted to `mem_type`; returns its dimensions.
template <class T>
std::vector<hsize_t> read_dataset(hid_t file, const std::string& path, const char* name, int rank, hid_t mem_type,
                                  H5T_class_t want_class, std::vector<T>& out) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
    bad(path, std::string("no dataset '") + name + "'");
  H5Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  if (!ds.ok())
    bad(path, std::string("cannot open dataset '") + name + "'");
  H5Id type(H5Dget_type(ds.get()), H5Tclose);
  if (H5Tget_class(type.get()) != want_class)
    bad(path, std::string("dataset '") + name + "' has the wrong element type");
  H5Id space(H5Dget_space(ds.get()), H5Sclose);
  if (H5Sget_simple_extent_ndims(space.get()) != rank)
    bad(path, std::string("dataset '") + name + "' has rank " +
                  std::to_string(H5Sget_simple_extent_ndims(space.get())) + ", expected " + std::to_string(rank));
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  size_t count = 1;
  for (hsize_t d : dims) {
    if (d < 1 || d > 16384)
      bad(path, std::string("dataset '") + name + "' has an implausible dimension");
    count *= d;
  }
  out.resize(count);
  if (H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    bad(path, std::string("reading dataset '") + name + "' failed");
  return dims;
}

}  // namespace

NyuSample load_nyu_h5(const std::string& path) {
  static const bool quiet = [] {  // errors are reported as exceptions, not as HDF5's stderr stack dumps
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)quiet;
  if (!std::filesystem::is_regular_file(path))
    throw Error(ErrorCode::kIo, path + ": no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0)
    bad(path, "not an HDF5 file");
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok())
    bad(path, "HDF5 open failed");

  std::vector<uint8_t> rgb;
  auto rd = read_dataset(file.get(), path, "rgb", 3, H5T_NATIVE_UINT8, H5T_INTEGER, rgb);
  if (rd[0] != 3)
    bad(path, "dataset 'rgb' must be [3, H, W]");
  std::vector<float> depth;
  auto dd = read_dataset(file.get(), path, "depth", 2, H5T_NATIVE_FLOAT, H5T_FLOAT, depth);
  if (dd[0] != rd[1] || dd[1] != rd[2])
    bad(path, "datasets 'rgb' and 'depth' differ in size");

  NyuSample s;
  s.rgb.height = int(rd[1]);
  s.rgb.width = int(rd[2]);
  s.rgb.rgb.resize(rgb.size());
  const size_t plane = size_t(s.rgb.width) * s.rgb.height;
  for (size_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c)
      s.rgb.rgb[i * 3 + c] = rgb[c * plane + i];
  s.depth_height = int(dd[0]);
  s.depth_width = int(dd[1]);
  s.depth = std::move(depth);
  return s;
}

std::vector<std::string> list_nyu_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != decltype(it)(); it.increment(ec))
    if (it->is_regular_file() && it->path().extension() == ".h5")
      files.push_back(it->path().string());
  if (files.empty())
    throw Error(ErrorCode::kNotFound,
                dir + ": no NYU Depth V2 .h5 files (expected e.g. nyu_depth_v2/val/official/*.h5)");
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<float> resize_depth_nearest(const NyuSample& s, int size) {
  std::vector<float> out(size_t(size) * size);
  for (int y = 0; y < size; ++y) {
    int sy = std::min(s.depth_height - 1, int((y + 0.5) * s.depth_height / size));
    for (int x = 0; x < size; ++x) {
      int sx = std::min(s.depth_width - 1, int((x + 0.5) * s.depth_width / size));
      out[size_t(y) * size + x] = s.depth[size_t(sy) * s.depth_width + sx];
    }
  }
  return out;
}

}  // namespace vnpu::examples
