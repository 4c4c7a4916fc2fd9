// SPDX-License-Identifier: MIT
/// \file
/// 8-bit RGB images and the two preprocessing paths of the examples: resize (NYU → DeepLabV3+, NHWC,
/// ImageNet-normalised) and letterbox (COCO → YOLOv8, NCHW, 0..1 with grey padding).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <vnpu/tensor.h>

namespace vnpu::examples {

/// Interleaved 8-bit RGB, row-major (HWC).
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  ///< width * height * 3 bytes
  [[nodiscard]] const uint8_t* pixel(int x, int y) const { return &rgb[(size_t(y) * width + x) * 3]; }
};

/// Decodes a JPEG file (baseline or progressive; greyscale and CMYK are converted to RGB) with libjpeg.
/// Throws vnpu::Error(kInvalidArgument) naming the file for a corrupt or non-JPEG file, kIo if unreadable.
[[nodiscard]] Image load_jpeg(const std::string& path);

/// Bilinear resize (half-pixel centres, like PIL/OpenCV INTER_LINEAR without antialiasing) to w x h, as
/// float RGB in 0..255, HWC.
[[nodiscard]] std::vector<float> resize_bilinear(const Image& img, int w, int h);

/// DeepLabV3+ input: resize to size x size, scale to 0..1, normalise with the ImageNet mean/std; shape
/// [1, size, size, 3] (NHWC, the model's layout).
[[nodiscard]] Tensor to_deeplab_input(const Image& img, int size);

/// Where a letterboxed image sits inside the square model input (to map boxes back).
struct Letterbox {
  float scale = 1;             ///< model pixels per source pixel
  float pad_x = 0, pad_y = 0;  ///< left / top padding in model pixels
  int src_width = 0, src_height = 0;
};

/// YOLOv8 input: scale the longer side to `size` keeping the aspect ratio (bilinear), centre it on a grey
/// (114) canvas, 0..1, shape [1, 3, size, size] (NCHW). Fills `*box` if non-null.
[[nodiscard]] Tensor letterbox(const Image& img, int size, Letterbox* box);

}  // namespace vnpu::examples
