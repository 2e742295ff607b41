// safetensors reader/writer. The header is validated before any data is
// trusted: the length fits the file, offsets are in range, in order, do not
// overlap and match dtype x shape, so a corrupt or truncated file gives an
// mmkit::Error, never an out-of-bounds read.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "mmkit/error.h"
#include "mmkit/io.h"

namespace mmkit {
namespace {

const char* kOp = "safetensors";

const char* st_name(Dtype d) {
  switch (d) {
    case Dtype::float32: return "F32";
    case Dtype::float16: return "F16";
    case Dtype::bfloat16: return "BF16";
    case Dtype::uint32: return "U32";
    case Dtype::uint8: return "U8";
    case Dtype::int8: return "I8";
    case Dtype::int16: return "I16";
    case Dtype::int32: return "I32";
    case Dtype::int64: return "I64";
    case Dtype::bool_: return "BOOL";
  }
  return "?";
}

Dtype st_dtype(const std::string& s, const std::string& path, const std::string& name) {
  for (int i = 0; i < kNumDtypes; ++i)
    if (s == st_name(static_cast<Dtype>(i))) return static_cast<Dtype>(i);
  throw_error(kOp, path, ": tensor '", name, "' has unsupported dtype '", s, "'.");
}

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB, as the reference implementation

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw_error(kOp, "cannot open '", path, "' for reading: ", std::strerror(errno), ".");
  f.seekg(0, std::ios::end);
  file_size_ = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  unsigned char lenbuf[8];
  if (file_size_ < 8 || !f.read(reinterpret_cast<char*>(lenbuf), 8))
    throw_error(kOp, path, ": file is too short (", file_size_, " bytes) to hold a header length.");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | lenbuf[i];
  if (hlen > kMaxHeader || hlen > file_size_ - 8)
    throw_error(kOp, path, ": header length ", hlen, " exceeds the file size ", file_size_, " (truncated or corrupt).");
  std::string header(hlen, '\0');
  if (!f.read(header.data(), static_cast<std::streamsize>(hlen))) throw_error(kOp, path, ": cannot read the header.");
  data_offset_ = 8 + hlen;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const std::exception& e) {
    throw_error(kOp, path, ": the header is not valid JSON (", e.what(), ").");
  }
  if (!j.is_object()) throw_error(kOp, path, ": the header is not a JSON object.");
  const uint64_t data_size = file_size_ - data_offset_;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw_error(kOp, path, ": __metadata__ must be an object of strings.");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw_error(kOp, path, ": __metadata__ value '", m.key(), "' is not a string.");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      throw_error(kOp, path, ": tensor '", name, "' has a malformed entry (needs dtype, shape, data_offsets).");
    TensorInfo t;
    t.name = name;
    t.dtype = st_dtype(v["dtype"].get<std::string>(), path, name);
    uint64_t nbytes = itemsize(t.dtype);
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw_error(kOp, path, ": tensor '", name, "' has a non-integer or negative dimension.");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (dim != 0 && nbytes > std::numeric_limits<uint64_t>::max() / dim))
        throw_error(kOp, path, ": tensor '", name, "' has a shape too large to address.");
      nbytes *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw_error(kOp, path, ": tensor '", name, "' has invalid data_offsets.");
    t.data_begin = off[0].get<uint64_t>();
    t.data_end = off[1].get<uint64_t>();
    if (t.data_end < t.data_begin || t.data_end - t.data_begin != nbytes)
      throw_error(kOp, path, ": tensor '", name, "' has data_offsets [", t.data_begin, ", ", t.data_end,
                  ") that do not match its dtype ", t.dtype, " and shape ", shape_str(t.shape), " (", nbytes,
                  " bytes).");
    if (t.data_end > data_size)
      throw_error(kOp, path, ": tensor '", name, "' ends at byte ", t.data_end, " but the data section has only ",
                  data_size, " bytes (truncated file).");
    tensors_.push_back(std::move(t));
  }
  // Zero-byte tensors occupy no bytes, so they cannot overlap anything (a
  // start offset shared with a neighbour is legal).
  std::vector<const TensorInfo*> by_off;
  for (const auto& t : tensors_)
    if (t.data_end > t.data_begin) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->data_begin < b->data_begin; });
  for (size_t i = 1; i < by_off.size(); ++i)
    if (by_off[i]->data_begin < by_off[i - 1]->data_end)
      throw_error(kOp, path, ": tensors '", by_off[i - 1]->name, "' and '", by_off[i]->name, "' overlap.");
}

bool SafetensorsReader::contains(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return true;
  return false;
}

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  throw_error(kOp, path_, ": no tensor named '", name, "'.");
}

Array SafetensorsReader::load(const std::string& name) const {
  const TensorInfo& t = info(name);
  Array a = Array::empty(t.shape, t.dtype);
  const uint64_t n = t.data_end - t.data_begin;
  if (n == 0) return a;
  std::ifstream f(path_, std::ios::binary);
  if (!f) throw_error(kOp, "cannot open '", path_, "' for reading.");
  f.seekg(static_cast<std::streamoff>(data_offset_ + t.data_begin));
  if (!f.read(static_cast<char*>(a.raw_data()), static_cast<std::streamsize>(n)))
    throw_error(kOp, path_, ": could not read the data of tensor '", name, "' (truncated file).");
  return a;
}

std::map<std::string, Array> load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  SafetensorsReader r(path);
  std::map<std::string, Array> out;
  for (const auto& t : r.tensors()) out.emplace(t.name, r.load(t.name));
  if (metadata) *metadata = r.metadata();
  return out;
}

// ---------------------------------------------------------------------------

struct SafetensorsWriter::Impl {
  std::string path;
  std::ofstream f;
  std::vector<TensorInfo> tensors;
  size_t next = 0;
  bool closed = false;
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorInfo>& tensors,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(new Impl) {
  impl_->path = path;
  impl_->tensors = tensors;
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = m;
  }
  uint64_t off = 0;
  for (auto& t : impl_->tensors) {
    if (t.name == "__metadata__" || t.name.empty()) {
      const std::string bad = t.name;  // t lives in *impl_, which is freed next
      delete impl_;
      throw_error(kOp, "invalid tensor name '", bad, "'.");
    }
    const uint64_t nb = static_cast<uint64_t>(shape_size(t.shape)) * itemsize(t.dtype);
    t.data_begin = off;
    t.data_end = off + nb;
    off += nb;
    j[t.name] = {{"dtype", st_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.data_begin, t.data_end}}};
  }
  std::string header = j.dump();
  while ((header.size() + 8) % 8) header.push_back(' ');  // align the data section to 8 bytes
  impl_->f.open(path, std::ios::binary | std::ios::trunc);
  if (!impl_->f) {
    const int err = errno;
    delete impl_;
    throw_error(kOp, "cannot open '", path, "' for writing: ", std::strerror(err), ".");
  }
  uint64_t hlen = header.size();
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; ++i) lenbuf[i] = static_cast<unsigned char>(hlen >> (8 * i));
  impl_->f.write(reinterpret_cast<const char*>(lenbuf), 8);
  impl_->f.write(header.data(), static_cast<std::streamsize>(header.size()));
}

SafetensorsWriter::~SafetensorsWriter() { delete impl_; }

void SafetensorsWriter::write(const std::string& name, const Array& a) {
  if (impl_->next >= impl_->tensors.size() || impl_->tensors[impl_->next].name != name)
    throw_error(kOp, "tensor '", name, "' written out of declaration order.");
  const TensorInfo& t = impl_->tensors[impl_->next];
  if (a.dtype() != t.dtype || a.shape() != t.shape)
    throw_error(kOp, "tensor '", name, "' was declared as ", t.dtype, " ", shape_str(t.shape), " but is ", a.dtype(),
                " ", shape_str(a.shape()), ".");
  Array c = a.to(Device::cpu()).contiguous();
  impl_->f.write(static_cast<const char*>(c.raw_data()), static_cast<std::streamsize>(c.nbytes()));
  if (!impl_->f) throw_error(kOp, "write error on '", impl_->path, "' (disk full?).");
  ++impl_->next;
}

void SafetensorsWriter::close() {
  if (impl_->closed) return;
  if (impl_->next != impl_->tensors.size())
    throw_error(kOp, "closing '", impl_->path, "' after ", impl_->next, " of ", impl_->tensors.size(),
                " tensors were written.");
  impl_->f.flush();
  if (!impl_->f) throw_error(kOp, "write error on '", impl_->path, "' (disk full?).");
  impl_->f.close();
  impl_->closed = true;
}

void save_safetensors(const std::string& path, const std::map<std::string, Array>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> infos;
  for (const auto& [name, a] : tensors) infos.push_back({name, a.dtype(), a.shape(), 0, 0});
  SafetensorsWriter w(path, infos, metadata);
  for (const auto& [name, a] : tensors) w.write(name, a);
  w.close();
}

}  // namespace mmkit
