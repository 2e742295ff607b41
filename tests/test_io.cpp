// safetensors: round trip of every dtype (0-d, empty and strided tensors,
// metadata), the streaming writer's contract, and rejection of corrupt or
// truncated files with mmkit::Error (never a crash or an out-of-bounds read;
// the asan preset runs these too).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "test_util.h"

namespace mmkit::test {
namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string p = ::testing::TempDir() + "mmkit_io_" + std::to_string(getpid()) + "_" + info->name() + "_" + name;
    created_.push_back(p);
    return p;
  }
  void TearDown() override {
    for (const auto& p : created_) std::remove(p.c_str());
  }

 private:
  std::vector<std::string> created_;
};

void write_bytes(const std::string& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

/// A file made of a header (with its true length unless `hlen` is given) and raw data.
std::string st_file(const std::string& header, const std::string& data, std::optional<uint64_t> hlen = std::nullopt) {
  return le64(hlen.value_or(header.size())) + header + data;
}

::testing::AssertionResult rejects(const std::string& p, const std::vector<std::string>& needles = {}) {
  try {
    SafetensorsReader r(p);
    for (const auto& t : r.tensors()) r.load(t.name);
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.rfind("[safetensors]", 0) != 0)
      return ::testing::AssertionFailure() << "message does not start with [safetensors]: " << m;
    for (const auto& n : needles)
      if (m.find(n) == std::string::npos) return ::testing::AssertionFailure() << "no '" << n << "' in: " << m;
    return ::testing::AssertionSuccess() << m;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw something other than mmkit::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "the file was accepted";
}

Array sample(Dtype dt, const Shape& s, uint64_t seed) {
  if (is_floating(dt)) return randn(s, dt, seed);
  if (dt == Dtype::bool_) return randint(s, Dtype::bool_, seed, 0, 1);
  if (dt == Dtype::uint8 || dt == Dtype::uint32) return randint(s, dt, seed, 0, 250);
  return randint(s, dt, seed, -100, 100);
}

// ---------------------------------------------------------------------------
// round trips

TEST_F(SafetensorsTest, RoundTripEveryDtypeAndShape) {
  std::map<std::string, Array> t;
  uint64_t seed = 1;
  for (int i = 0; i < kNumDtypes; ++i) {
    const Dtype dt = static_cast<Dtype>(i);
    const std::string n = dtype_name(dt);
    t[n + "_2d"] = sample(dt, {3, 5}, ++seed);
    t[n + "_0d"] = sample(dt, {}, ++seed);
    t[n + "_empty"] = Array::zeros({0, 3}, dt);
    t[n + "_4d"] = sample(dt, {2, 1, 3, 2}, ++seed);
  }
  const std::map<std::string, std::string> meta{{"format", "mlx"}, {"note", "quotes \" and \\ and \xc3\xa9"}};
  const std::string p = path("all.safetensors");
  save_safetensors(p, t, meta);
  std::map<std::string, std::string> meta2;
  auto back = load_safetensors(p, &meta2);
  EXPECT_EQ(meta2, meta);
  ASSERT_EQ(back.size(), t.size());
  for (const auto& [name, a] : t) {
    ASSERT_TRUE(back.count(name)) << name;
    EXPECT_TRUE(bit_equal(back.at(name), a)) << name;
  }
  // the data section starts 8-byte aligned
  const std::string bytes = read_bytes(p);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + hlen) % 8, 0u);
}

TEST_F(SafetensorsTest, StridedAndBroadcastInputsAreSavedInLogicalOrder) {
  Array a = randn({4, 6}, Dtype::float32, 3);
  Array t = a.transpose();
  Array b = Array::scalar(7.0, Dtype::int16).broadcast_to({2, 3});
  const std::string p = path("views.safetensors");
  save_safetensors(p, {{"t", t}, {"b", b}});
  auto back = load_safetensors(p);
  EXPECT_TRUE(bit_equal(back.at("t"), t.copy()));
  EXPECT_EQ(back.at("b").to_vector<int16_t>(), (std::vector<int16_t>(6, 7)));
}

TEST_F(SafetensorsTest, ReaderInfoAndLoadByName) {
  const std::string p = path("r.safetensors");
  Array w = sample(Dtype::uint32, {4, 8}, 5), s = sample(Dtype::bfloat16, {4, 1}, 6);
  save_safetensors(p, {{"w", w}, {"s", s}}, {{"k", "v"}});
  SafetensorsReader r(p);
  EXPECT_EQ(r.path(), p);
  EXPECT_EQ(r.tensors().size(), 2u);
  EXPECT_TRUE(r.contains("w"));
  EXPECT_FALSE(r.contains("x"));
  const TensorInfo& wi = r.info("w");
  EXPECT_EQ(wi.dtype, Dtype::uint32);
  EXPECT_EQ(wi.shape, (Shape{4, 8}));
  EXPECT_EQ(wi.data_end - wi.data_begin, 4u * 8u * 4u);
  EXPECT_TRUE(bit_equal(r.load("s"), s));
  EXPECT_TRUE(bit_equal(r.load("w"), w));
  EXPECT_EQ(r.metadata().at("k"), "v");
  try {
    r.load("x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, ReadsHandWrittenFiles) {
  // tensors listed out of offset order, names with odd characters, 0-d and empty
  std::string data;
  const float f[2] = {1.5f, -2.0f};
  const int64_t i = -7;
  data.append(reinterpret_cast<const char*>(&i), 8);
  data.append(reinterpret_cast<const char*>(f), 8);
  const std::string h = R"({"model.layers.0/w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
                        R"("scalar":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
                        R"("empty":{"dtype":"BF16","shape":[0,4],"data_offsets":[16,16]},)"
                        R"("__metadata__":{"a":"b"}})";
  const std::string p = path("hand.safetensors");
  write_bytes(p, st_file(h, data));
  std::map<std::string, std::string> meta;
  auto t = load_safetensors(p, &meta);
  EXPECT_EQ(t.at("model.layers.0/w").to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(t.at("scalar").ndim(), 0);
  EXPECT_EQ(t.at("scalar").item_double(), -7.0);
  EXPECT_EQ(t.at("empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(meta.at("a"), "b");
  // an empty file body: header "{}" only
  const std::string p2 = path("none.safetensors");
  write_bytes(p2, st_file("{}", ""));
  EXPECT_TRUE(load_safetensors(p2).empty());
}

TEST_F(SafetensorsTest, EmptyTensorSharingAnOffsetIsNotAnOverlap) {
  // Regression (empty tensor reported as overlapping): a zero-byte tensor whose
  // offsets equal a neighbour's start was rejected, so files that
  // save_safetensors itself wrote with empty tensors failed to load.
  const std::string h = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"("e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                        R"("f":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]},)"
                        R"("g":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})";
  const std::string p = path("empty_overlap.safetensors");
  write_bytes(p, st_file(h, "abcdef"));
  auto t = load_safetensors(p);
  EXPECT_EQ(t.at("a").size(), 4);
  EXPECT_EQ(t.at("e").shape(), (Shape{0}));
  EXPECT_EQ(t.at("f").shape(), (Shape{2, 0}));
  EXPECT_EQ(t.at("g").to_vector<uint8_t>(), (std::vector<uint8_t>{'e', 'f'}));
  const std::string p2 = path("empty_roundtrip.safetensors");
  save_safetensors(p2, {{"b", Array::zeros({0, 3}, Dtype::int16)}, {"c", Array::scalar(2.0)},
                        {"d", Array::zeros({0}, Dtype::uint8)}});
  EXPECT_EQ(load_safetensors(p2).at("c").item_double(), 2.0);
}

// ---------------------------------------------------------------------------
// the streaming writer

TEST_F(SafetensorsTest, WriterStreamsInDeclarationOrder) {
  const std::string p = path("stream.safetensors");
  Array a = sample(Dtype::float16, {3, 4}, 7), b = sample(Dtype::int8, {5}, 8);
  {
    SafetensorsWriter w(p, {{"a", Dtype::float16, {3, 4}}, {"b", Dtype::int8, {5}}}, {{"m", "1"}});
    w.write("a", a);
    w.write("b", b);
    w.close();
    w.close();  // idempotent
  }
  auto t = load_safetensors(p);
  EXPECT_TRUE(bit_equal(t.at("a"), a));
  EXPECT_TRUE(bit_equal(t.at("b"), b));
}

TEST_F(SafetensorsTest, WriterRejectsMisuse) {
  const std::string p = path("bad.safetensors");
  Array a = sample(Dtype::float32, {2, 2}, 9);
  auto expect_err = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "expected mmkit::Error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("[safetensors]", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    SafetensorsWriter w(p, {{"a", Dtype::float32, {2, 2}}, {"b", Dtype::float32, {2, 2}}});
    expect_err([&] { w.write("b", a); }, "'b'");                          // out of order
    expect_err([&] { w.write("a", a.astype(Dtype::float16)); }, "float16");  // wrong dtype
    expect_err([&] { w.write("a", a.reshape({4})); }, "(4)");            // wrong shape
    w.write("a", a);
    expect_err([&] { w.close(); }, "1 of 2");                             // b missing
    expect_err([&] { w.write("c", a); }, "'c'");                          // undeclared
  }
  // Regression (use after free in the writer): the error message for an
  // invalid name was built from the freed declaration list.
  expect_err([&] { SafetensorsWriter w(p, {{"__metadata__", Dtype::float32, {1}}}); }, "'__metadata__'");
  expect_err([&] { SafetensorsWriter w(p, {{"ok", Dtype::float32, {1}}, {"", Dtype::float32, {1}}}); }, "''");
  expect_err([&] { save_safetensors("/nonexistent-dir/x.safetensors", {{"a", a}}); }, "/nonexistent-dir");
}

// ---------------------------------------------------------------------------
// corrupt and truncated files

TEST_F(SafetensorsTest, RejectsMissingOrTinyFiles) {
  EXPECT_TRUE(rejects(path("does_not_exist.safetensors"), {"cannot open"}));
  const std::string p = path("tiny.safetensors");
  write_bytes(p, "");
  EXPECT_TRUE(rejects(p, {"too short"}));
  write_bytes(p, std::string("\x05\x00\x00", 3));
  EXPECT_TRUE(rejects(p, {"too short"}));
}

TEST_F(SafetensorsTest, RejectsBadHeaderLength) {
  const std::string p = path("hlen.safetensors");
  const std::string h = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  write_bytes(p, st_file(h, "x", h.size() + 100));  // longer than the file
  EXPECT_TRUE(rejects(p, {"header length"}));
  write_bytes(p, st_file(h, "x", ~uint64_t(0)));  // would overflow 8 + hlen
  EXPECT_TRUE(rejects(p, {"header length"}));
  write_bytes(p, st_file(h, "x", uint64_t(1) << 62));
  EXPECT_TRUE(rejects(p, {"header length"}));
  write_bytes(p, st_file(h, "x", 3));  // too short: cuts the JSON
  EXPECT_TRUE(rejects(p, {"JSON"}));
}

TEST_F(SafetensorsTest, RejectsInvalidJson) {
  const std::string p = path("json.safetensors");
  for (const std::string& h : std::vector<std::string>{R"({"a": )", "not json", R"({"a":{"dtype":"U8",}})",
                                                       std::string("{\0}", 3)}) {
    write_bytes(p, st_file(h, ""));
    EXPECT_TRUE(rejects(p, {"JSON"})) << h;
  }
  write_bytes(p, st_file("[1,2]", ""));
  EXPECT_TRUE(rejects(p, {"not a JSON object"}));
}

TEST_F(SafetensorsTest, RejectsBadMetadata) {
  const std::string p = path("meta.safetensors");
  write_bytes(p, st_file(R"({"__metadata__":[1]})", ""));
  EXPECT_TRUE(rejects(p, {"__metadata__"}));
  write_bytes(p, st_file(R"({"__metadata__":{"a":1}})", ""));
  EXPECT_TRUE(rejects(p, {"'a'", "not a string"}));
}

TEST_F(SafetensorsTest, RejectsMalformedEntries) {
  const std::string p = path("entry.safetensors");
  for (const std::string& h : std::vector<std::string>{R"({"a":5})", R"({"a":{"shape":[1],"data_offsets":[0,1]}})",
                              R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", R"({"a":{"dtype":"U8","shape":[1]}})",
                              R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})",
                              R"({"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})",
                              R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})",
                              R"({"a":{"dtype":"U8","shape":[1],"data_offsets":{"b":0}}})"}) {
    write_bytes(p, st_file(h, "x"));
    EXPECT_TRUE(rejects(p, {"'a'"})) << h;
  }
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  const std::string p = path("dtype.safetensors");
  for (const char* d : {"F64", "XYZ", "f32", "C64", ""}) {
    write_bytes(p, st_file(std::string(R"({"a":{"dtype":")") + d + R"(","shape":[1],"data_offsets":[0,8]}})",
                           std::string(8, '\0')));
    EXPECT_TRUE(rejects(p, {"unsupported dtype", std::string("'") + d + "'"})) << d;
  }
}

TEST_F(SafetensorsTest, RejectsBadShapes) {
  const std::string p = path("shape.safetensors");
  for (const char* s : {"[-1]", "[2.5]", "[\"2\"]", "[null]", "[[1]]"}) {
    write_bytes(p, st_file(std::string(R"({"a":{"dtype":"U8","shape":)") + s + R"(,"data_offsets":[0,1]}})", "x"));
    EXPECT_TRUE(rejects(p, {"'a'"})) << s;
  }
  // dimensions whose product overflows
  write_bytes(p, st_file(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776,1099511627776],)"
                         R"("data_offsets":[0,4]}})",
                         "xxxx"));
  EXPECT_TRUE(rejects(p, {"too large"}));
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}})", "x"));
  EXPECT_TRUE(rejects(p, {"'a'"}));
}

TEST_F(SafetensorsTest, RejectsBadOffsets) {
  const std::string p = path("off.safetensors");
  for (const char* o : {"[-1,3]", "[0.5,4]", "[\"0\",4]", "[null,4]"}) {
    write_bytes(p, st_file(std::string(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":)") + o + "}}", "xxxx"));
    EXPECT_TRUE(rejects(p, {"'a'", "data_offsets"})) << o;
  }
  // begin after end
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})", "xxxx"));
  EXPECT_TRUE(rejects(p, {"[4, 0)"}));
}

TEST_F(SafetensorsTest, RejectsSizeMismatch) {
  const std::string p = path("size.safetensors");
  write_bytes(p, st_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", std::string(16, 'x')));
  EXPECT_TRUE(rejects(p, {"'a'", "[0, 12)", "16 bytes"}));
  write_bytes(p, st_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,0]}})", std::string(16, 'x')));
  EXPECT_TRUE(rejects(p, {"4 bytes"}));
}

TEST_F(SafetensorsTest, RejectsOffsetsOutOfRange) {
  const std::string p = path("range.safetensors");
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})", std::string(8, 'x')));
  EXPECT_TRUE(rejects(p, {"'a'", "ends at byte 12", "8 bytes"}));
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}})",
                         "x"));
  EXPECT_TRUE(rejects(p, {"'a'"}));
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string p = path("overlap.safetensors");
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},)"
                         R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                         std::string(8, 'x')));
  EXPECT_TRUE(rejects(p, {"overlap", "'a'", "'b'"}));
  // the same range twice
  write_bytes(p, st_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}})",
                         std::string(8, 'x')));
  EXPECT_TRUE(rejects(p, {"overlap"}));
}

TEST_F(SafetensorsTest, EveryTruncationIsRejected) {
  const std::string good = path("good.safetensors");
  save_safetensors(good, {{"a", sample(Dtype::float32, {3, 3}, 1)}, {"b", sample(Dtype::uint8, {5}, 2)},
                          {"c", sample(Dtype::bfloat16, {2}, 3)}},
                   {{"m", "x"}});
  const std::string bytes = read_bytes(good);
  ASSERT_NO_THROW(load_safetensors(good));
  const std::string p = path("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_bytes(p, bytes.substr(0, n));
    ASSERT_TRUE(rejects(p)) << "truncated to " << n << " of " << bytes.size() << " bytes";
  }
}

TEST_F(SafetensorsTest, RandomCorruptionNeverCrashes) {
  // Flip bytes of a valid file's header and data: the reader either loads a
  // consistent file or throws mmkit::Error; AddressSanitizer watches the reads.
  const std::string good = path("good.safetensors");
  save_safetensors(good, {{"a", sample(Dtype::float32, {4, 4}, 1)}, {"b", sample(Dtype::int64, {3}, 2)},
                          {"c", Array::zeros({0}, Dtype::float16)}});
  const std::string bytes = read_bytes(good);
  const std::string p = path("mut.safetensors");
  std::mt19937_64 g(2024);
  int accepted = 0, rejected = 0;
  for (int it = 0; it < 400; ++it) {
    std::string m = bytes;
    const int flips = 1 + static_cast<int>(g() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t pos = g() % std::min<size_t>(m.size(), 8 + 160);  // header region mostly
      m[pos] = static_cast<char>(g() % 3 == 0 ? "0123456789,:[]{}\"-"[g() % 18] : static_cast<char>(g()));
    }
    write_bytes(p, m);
    try {
      SafetensorsReader r(p);
      for (const auto& t : r.tensors()) {
        Array a = r.load(t.name);
        ASSERT_EQ(a.nbytes(), t.data_end - t.data_begin);
      }
      ++accepted;
    } catch (const Error& e) {
      ASSERT_EQ(std::string(e.what()).rfind("[safetensors]", 0), 0u) << e.what();
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "mutation " << it << " threw a non-mmkit exception: " << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
  RecordProperty("accepted", accepted);
}

}  // namespace
}  // namespace mmkit::test
