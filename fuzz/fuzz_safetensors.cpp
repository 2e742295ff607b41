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
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
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
