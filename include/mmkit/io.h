// safetensors read/write (the standard format: 8-byte little-endian header
// length, a JSON header, raw little-endian tensor data).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mmkit/array.h"

namespace mmkit {

struct TensorInfo {
  std::string name;
  Dtype dtype;
  Shape shape;
  uint64_t data_begin = 0;  // byte offsets inside the data section
  uint64_t data_end = 0;
};

/// A safetensors file opened for reading: the header is parsed and checked
/// (offsets in range, sizes consistent with dtype x shape, no overlap);
/// tensors are read one at a time so memory stays bounded.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);  // throws mmkit::Error
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  Array load(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Loads every tensor of a file.
std::map<std::string, Array> load_safetensors(const std::string& path,
                                              std::map<std::string, std::string>* metadata = nullptr);

/// Streams tensors into a file: declare all (name, dtype, shape) up front,
/// then write each tensor's data in declaration order.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<TensorInfo>& tensors,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  void write(const std::string& name, const Array& a);  // must follow declaration order
  void close();  // checks that every tensor was written

 private:
  struct Impl;
  Impl* impl_;
};

void save_safetensors(const std::string& path, const std::map<std::string, Array>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mmkit
