// SPDX-License-Identifier: MIT
// The .vnpu container: round trip, and every damaged, truncated, foreign or inconsistent file is a clear
// FormatError, never a crash.
#include <gtest/gtest.h>

#include <random>

#include "test_util.h"

namespace {

using vnpu::FormatError;
using vnpu::ModelFile;

std::vector<uint8_t> sample_file() {
  auto onnx = vnpu::test::conv_bn_relu_model();
  return vnpu::compile_onnx(onnx).serialize();
}

std::string parse_error(const std::vector<uint8_t>& f) {
  try {
    (void)ModelFile::parse(f, "t.vnpu");
  } catch (const FormatError& e) {
    return e.what();
  }
  return {};
}

TEST(ModelFile, RoundTripsThroughBytes) {
  auto f = sample_file();
  ModelFile m = ModelFile::parse(f);
  EXPECT_EQ(m.serialize(), f);
  ASSERT_EQ(m.inputs().size(), 1u);
  EXPECT_EQ(m.inputs()[0].name, "x");
  EXPECT_EQ(m.inputs()[0].shape, (std::vector<int64_t>{1, 2, 5, 5}));
  ASSERT_EQ(m.outputs().size(), 1u);
  EXPECT_EQ(m.outputs()[0].shape, (std::vector<int64_t>{1, 3, 5, 5}));
  EXPECT_EQ(m.bindings()[m.weights_binding()].size, m.weights().size());
  EXPECT_NE(m.describe().find("conv=1"), std::string::npos);
}

TEST(ModelFile, SavesAndLoads) {
  ModelFile m = ModelFile::parse(sample_file());
  std::string path = ::testing::TempDir() + "/roundtrip.vnpu";
  m.save(path);
  EXPECT_EQ(ModelFile::load(path).serialize(), m.serialize());
}

TEST(ModelFile, LoadOfMissingFileNamesIt) {
  try {
    (void)ModelFile::load("/nonexistent/m.vnpu");
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/m.vnpu"), std::string::npos);
  }
}

TEST(ModelFile, RejectsForeignFiles) {
  EXPECT_NE(parse_error({}).find("not a .vnpu file"), std::string::npos);
  std::vector<uint8_t> elf = {0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_NE(parse_error(elf).find("not a .vnpu file"), std::string::npos);
  auto onnx = vnpu::test::conv_bn_relu_model();
  EXPECT_NE(parse_error(onnx).find("not a .vnpu file"), std::string::npos);
}

TEST(ModelFile, RejectsEveryTruncation) {
  auto f = sample_file();
  for (size_t len = 0; len < f.size(); len++) {
    std::vector<uint8_t> t(f.begin(), f.begin() + static_cast<long>(len));
    EXPECT_FALSE(parse_error(t).empty()) << "prefix of " << len << " bytes accepted";
  }
  auto tail = f;
  tail.push_back(0);
  EXPECT_NE(parse_error(tail).find("trailing"), std::string::npos);
}

TEST(ModelFile, DetectsEverySingleBitFlip) {
  auto f = sample_file();
  for (size_t i = 0; i < f.size(); i++) {
    auto d = f;
    d[i] ^= static_cast<uint8_t>(1u << (i % 8));
    EXPECT_FALSE(parse_error(d).empty()) << "flip at byte " << i << " accepted";
  }
  auto d = f;
  d[f.size() / 2] ^= 0x10;
  EXPECT_NE(parse_error(d).find("checksum mismatch"), std::string::npos);
}

TEST(ModelFile, RejectsOtherMajorVersion) {
  auto f = sample_file();
  vnpu_file_header h;
  std::memcpy(&h, f.data(), sizeof h);
  h.version_major = VNPU_FILE_VERSION_MAJOR + 1;
  std::memcpy(f.data(), &h, sizeof h);
  vnpu::test::fix_crc(f);
  EXPECT_NE(parse_error(f).find("version 2.0 is not supported"), std::string::npos) << parse_error(f);
}

TEST(ModelFile, RejectsOutOfRangeSectionsBehindAValidChecksum) {
  auto f = sample_file();
  vnpu_file_header h;
  std::memcpy(&h, f.data(), sizeof h);
  for (uint32_t s = 0; s < h.num_sections; s++) {
    for (uint64_t bad : {uint64_t{1} << 40, f.size() - 64, uint64_t{0}, ~uint64_t{0} - 63}) {
      auto d = f;
      vnpu_file_section sec;
      size_t at = h.sections_offset + s * sizeof sec;
      std::memcpy(&sec, d.data() + at, sizeof sec);
      if (sec.offset == bad)
        continue;
      sec.offset = bad;
      std::memcpy(d.data() + at, &sec, sizeof sec);
      vnpu::test::fix_crc(d);
      EXPECT_FALSE(parse_error(d).empty()) << "section " << s << " offset " << bad;
    }
  }
}

TEST(ModelFile, RejectsTensorsOutsideTheirBinding) {
  auto f = sample_file();
  ModelFile m = ModelFile::parse(f);
  auto prog = std::vector<uint8_t>(m.program().begin(), m.program().end());
  vnpu_isa_program hdr;
  std::memcpy(&hdr, prog.data(), sizeof hdr);
  vnpu_isa_tensor t;
  std::memcpy(&t, prog.data() + hdr.tensors_offset, sizeof t);
  t.offset = 1u << 30;
  std::memcpy(prog.data() + hdr.tensors_offset, &t, sizeof t);
  ModelFile copy = m;
  EXPECT_THROW(copy.set_program(prog), FormatError);
}

TEST(ModelFile, RandomMutationsBehindAValidChecksumNeverCrash) {
  auto f = sample_file();
  std::mt19937 rng(1234);
  int rejected = 0;
  for (int iter = 0; iter < 3000; iter++) {
    auto d = f;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; e++) {
      // Bias edits towards headers and tables, where the interesting fields are.
      size_t i = (rng() % 2) ? rng() % std::min<size_t>(d.size(), 1024) : rng() % d.size();
      d[i] = static_cast<uint8_t>(rng());
    }
    vnpu::test::fix_crc(d);
    try {
      ModelFile m = ModelFile::parse(d);
      (void)m.describe();
    } catch (const FormatError&) {
      rejected++;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
