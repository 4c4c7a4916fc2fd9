// SPDX-License-Identifier: MIT
/// \file
/// NYU Depth V2 in the layout the seed reads (the sparse-to-dense / fast-depth distribution): one HDF5 file
/// per sample with dataset `rgb` (uint8, [3, H, W]) and dataset `depth` (float32, [H, W], metres, 0 = none).
#pragma once

#include <string>
#include <vector>

#include "image.h"

namespace vnpu::examples {

/// One NYU sample.
struct NyuSample {
  Image rgb;  ///< converted to HWC
  int depth_width = 0, depth_height = 0;
  std::vector<float> depth;  ///< metres, row-major
};

/// Reads one .h5 sample with libhdf5. Throws vnpu::Error(kInvalidArgument) naming the file and dataset if
/// it is not HDF5, a dataset is missing, or a dataset has the wrong rank, type or size; kIo if unreadable.
[[nodiscard]] NyuSample load_nyu_h5(const std::string& path);

/// The .h5 files under `dir` (searched recursively, e.g. nyu_depth_v2/val/official), sorted by path.
/// Throws vnpu::Error(kNotFound) if there are none.
[[nodiscard]] std::vector<std::string> list_nyu_files(const std::string& dir);

/// Ground-truth depth resized to size x size by nearest neighbour (no blending across depth edges or with
/// missing readings).
[[nodiscard]] std::vector<float> resize_depth_nearest(const NyuSample& s, int size);

}  // namespace vnpu::examples
