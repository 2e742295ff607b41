// Fuzzes the safetensors reader on arbitrary bytes: truncated files, header
// lengths past the end, invalid JSON, wrong dtypes, negative / huge / non-
// integer dimensions, offsets out of range, overlapping or mismatched tensors,
// bad metadata. A file is either rejected with mmkit::Error or every tensor
// loads with the declared dtype, shape and bytes, and survives a save / load
// round trip unchanged.
#include <unistd.h>

#include <fstream>

#include "fuzz_common.h"

using namespace mmkit;
using namespace mmkit::fuzz;

namespace {
std::string temp_path(const char* tag) {
  return "/tmp/mmkit_fuzz_" + std::to_string(getpid()) + tag + ".safetensors";
}

/// Structured mode: a header built from fuzz choices (dtypes valid or not,
/// dimensions small / zero / huge / negative / non-integer, offsets that fit,
/// overlap, leave gaps or run past the end, metadata right or wrong) and a
/// data section of the right length or a truncated one.
std::string structured_file(Fdp& p) {
  static const char* kDtypes[] = {"F32", "F16", "BF16", "U32", "U8", "I8", "I16", "I32", "I64", "BOOL",
                                  "F64", "U16", "F8_E4M3", "", "f32"};
  static const char* kSizes[] = {"4", "2", "2", "4", "1", "1", "2", "4", "8", "1", "8", "2", "1", "1", "4"};
  std::string h = "{";
  uint64_t off = 0;
  const int n = p.ConsumeIntegralInRange<int>(0, 3);
  for (int t = 0; t < n; ++t) {
    const int di = p.ConsumeIntegralInRange<int>(0, 14);
    h += (t ? "," : "") + std::string("\"t") + std::to_string(p.ConsumeIntegralInRange<int>(0, 3)) + "\":{";
    h += "\"dtype\":\"" + std::string(kDtypes[di]) + "\",\"shape\":[";
    uint64_t elems = 1;
    const int nd = p.ConsumeIntegralInRange<int>(0, 3);
    for (int d = 0; d < nd; ++d) {
      const uint8_t k = p.ConsumeIntegral<uint8_t>();
      std::string dim;
      if (k < 200) {
        dim = std::to_string(k % 6);
        elems *= k % 6;
      } else if (k < 210) dim = "-1";
      else if (k < 220) dim = "1.5";
      else if (k < 230) dim = "\"2\"";
      else if (k < 240) dim = "4294967296";
      else if (k < 250) dim = "18446744073709551615";
      else dim = "99999999999999999999999";
      h += (d ? "," : "") + dim;
    }
    const uint64_t nbytes = elems * std::stoull(kSizes[di]);
    uint64_t b = off, e = off + nbytes;
    const uint8_t o = p.ConsumeIntegral<uint8_t>();
    if (o >= 200 && o < 215) e += 1;
    else if (o >= 215 && o < 230 && b > 0) b -= 1, e -= 1;  // overlap the previous tensor
    else if (o >= 230 && o < 240) b += 4, e += 4;            // a gap
    else if (o >= 240) e = b + (uint64_t{1} << 40);
    h += "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
    off = e;
  }
  const uint8_t m = p.ConsumeIntegral<uint8_t>();
  if (m >= 128) {
    h += std::string(n ? "," : "") + "\"__metadata__\":";
    h += m < 200 ? "{\"format\":\"mlx\",\"k\":\"v\"}" : m < 230 ? "{\"n\":1}" : "[1]";
  }
  h += "}";
  std::string file(8, '\0');
  const uint64_t hl = p.ConsumeIntegralInRange<int>(0, 9) == 9 ? h.size() + p.ConsumeIntegral<uint8_t>() : h.size();
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((hl >> (8 * i)) & 0xff);
  file += h;
  uint64_t data_len = off;
  if (p.ConsumeIntegralInRange<int>(0, 7) == 7 && data_len > 0) data_len = p.ConsumeIntegralInRange<uint64_t>(0, data_len);
  data_len = std::min<uint64_t>(data_len, 1 << 16);
  const std::vector<uint8_t> bytes = p.ConsumeBytes<uint8_t>(data_len);
  file.append(bytes.begin(), bytes.end());
  file.append(data_len - bytes.size(), '\0');
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data0, size_t size0) {
  // First byte: raw bytes (odd) or a structured header (even).
  std::string structured;
  const uint8_t* data = data0;
  size_t size = size0;
  if (size0 > 0 && (data0[0] & 1) == 0) {
    Fdp p(data0 + 1, size0 - 1);
    structured = structured_file(p);
    data = reinterpret_cast<const uint8_t*>(structured.data());
    size = structured.size();
  } else if (size0 > 0) {
    ++data;
    --size;
  }
  const std::string path = temp_path("");
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  guarded([&] {
    SafetensorsReader r(path);
    std::map<std::string, Array> loaded;
    for (const TensorInfo& t : r.tensors()) {
      FUZZ_CHECK(t.data_end >= t.data_begin && t.data_end - t.data_begin <= size, "offsets past the file");
      Array a = r.load(t.name);
      FUZZ_CHECK(a.dtype() == t.dtype && a.shape() == t.shape, "loaded tensor differs from its header entry");
      FUZZ_CHECK(a.nbytes() == t.data_end - t.data_begin, "loaded size differs from the offsets");
      loaded.emplace(t.name, a);
    }
    // The bytes are the file's: compare against the data section directly.
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | data[i];
    for (const TensorInfo& t : r.tensors()) {
      const Array& a = loaded.at(t.name);
      FUZZ_CHECK(a.nbytes() == 0 || std::memcmp(a.raw_data(), data + 8 + hlen + t.data_begin, a.nbytes()) == 0,
                 "tensor '" + t.name + "' bytes differ from the file");
    }
    // Round trip through the writer.
    const std::string out = temp_path("_rt");
    save_safetensors(out, loaded, r.metadata());
    std::map<std::string, std::string> meta;
    std::map<std::string, Array> again = load_safetensors(out, &meta);
    FUZZ_CHECK(meta == r.metadata(), "metadata changed in a round trip");
    FUZZ_CHECK(again.size() == loaded.size(), "tensor count changed in a round trip");
    for (const auto& [name, a] : loaded) {
      const Array& b = again.at(name);
      FUZZ_CHECK(b.dtype() == a.dtype() && b.shape() == a.shape() &&
                     (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0),
                 "tensor '" + name + "' changed in a round trip");
    }
  });
  return 0;
}
