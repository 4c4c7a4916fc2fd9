// SPDX-License-Identifier: MIT
#include "image.h"

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>

#include <vnpu/error.h>

namespace vnpu::examples {
namespace {

// libjpeg reports fatal errors through error_exit, which must not return: longjmp back into load_jpeg (no
// C++ objects with destructors live between the setjmp and the libjpeg calls).
struct JpegErrorManager {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_jpeg_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

}  // namespace

Image load_jpeg(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file)
    throw Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
  Image img;
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = on_jpeg_error;
  err.mgr.output_message = [](j_common_ptr) {};  // warnings (e.g. extraneous bytes) are not failures
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(ErrorCode::kInvalidArgument, path + ": not a readable JPEG: " + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, file.get());
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;  // libjpeg converts greyscale/YCbCr; CMYK fails with a message
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != 3 || cinfo.output_width > 65535 || cinfo.output_height > 65535) {
    jpeg_destroy_decompress(&cinfo);
    throw Error(ErrorCode::kInvalidArgument, path + ": unsupported JPEG (components or size)");
  }
  img.width = int(cinfo.output_width);
  img.height = int(cinfo.output_height);
  img.rgb.resize(size_t(img.width) * img.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = &img.rgb[size_t(cinfo.output_scanline) * img.width * 3];
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return img;
}

std::vector<float> resize_bilinear(const Image& img, int w, int h) {
  if (img.width < 1 || img.height < 1 || w < 1 || h < 1)
    throw Error(ErrorCode::kInvalidArgument, "resize_bilinear: empty source or target image");
  std::vector<float> out(size_t(w) * h * 3);
  const float sx = float(img.width) / w, sy = float(img.height) / h;
  for (int y = 0; y < h; ++y) {
    float fy = std::clamp((y + 0.5f) * sy - 0.5f, 0.0f, float(img.height - 1));
    int y0 = int(fy), y1 = std::min(y0 + 1, img.height - 1);
    float wy = fy - y0;
    for (int x = 0; x < w; ++x) {
      float fx = std::clamp((x + 0.5f) * sx - 0.5f, 0.0f, float(img.width - 1));
      int x0 = int(fx), x1 = std::min(x0 + 1, img.width - 1);
      float wx = fx - x0;
      const uint8_t *a = img.pixel(x0, y0), *b = img.pixel(x1, y0), *c = img.pixel(x0, y1), *d = img.pixel(x1, y1);
      float* o = &out[(size_t(y) * w + x) * 3];
      for (int k = 0; k < 3; ++k)
        o[k] = (1 - wy) * ((1 - wx) * a[k] + wx * b[k]) + wy * ((1 - wx) * c[k] + wx * d[k]);
    }
  }
  return out;
}

Tensor to_deeplab_input(const Image& img, int size) {
  static constexpr float kMean[3] = {0.485f, 0.456f, 0.406f}, kStd[3] = {0.229f, 0.224f, 0.225f};
  std::vector<float> px = resize_bilinear(img, size, size);
  for (size_t i = 0; i < px.size(); ++i)
    px[i] = (px[i] / 255.0f - kMean[i % 3]) / kStd[i % 3];
  return Tensor({1, size, size, 3}, std::move(px));
}

Tensor letterbox(const Image& img, int size, Letterbox* box) {
  if (img.width < 1 || img.height < 1 || size < 1)
    throw Error(ErrorCode::kInvalidArgument, "letterbox: empty image or target size");
  const float scale = std::min(float(size) / img.width, float(size) / img.height);
  const int w = std::max(1, int(std::lround(img.width * scale))), h = std::max(1, int(std::lround(img.height * scale)));
  const int left = (size - w) / 2, top = (size - h) / 2;
  std::vector<float> px = resize_bilinear(img, w, h);
  std::vector<float> out(size_t(3) * size * size, 114.0f / 255.0f);
  const size_t plane = size_t(size) * size;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < 3; ++k)
        out[k * plane + size_t(y + top) * size + (x + left)] = px[(size_t(y) * w + x) * 3 + k] / 255.0f;
  if (box)
    *box = Letterbox{scale, float(left), float(top), img.width, img.height};
  return Tensor({1, 3, size, size}, std::move(out));
}

}  // namespace vnpu::examples
