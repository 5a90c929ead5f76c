// tracklstm/tensor_file.hpp: the project's binary tensor files (tracklstm.export.tensor_file).
//
// A file is an 8-byte magic, "TLSTMF32" (float32 values) or "TLSTMF64" (float64), uint32 ndim,
// uint32 0, int64 shape[ndim], then the values, little-endian, in C order.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace tracklstm {

struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<double> values;  // float32 files are widened exactly
};

constexpr std::uint32_t kMaxDims = 8;

inline Tensor read_tensor(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  std::uint32_t header[2];
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(header), sizeof header);
  const bool f32 = std::memcmp(magic, "TLSTMF32", 8) == 0;
  if (!in || !(f32 || std::memcmp(magic, "TLSTMF64", 8) == 0))
    throw std::runtime_error(path + ": not a tracklstm tensor file (bad magic)");
  if (header[0] > kMaxDims)
    throw std::runtime_error(path + ": bad header (" + std::to_string(header[0]) + " dimensions)");
  Tensor t;
  t.shape.resize(header[0]);
  in.read(reinterpret_cast<char*>(t.shape.data()), 8 * header[0]);
  std::size_t count = 1;
  for (std::int64_t d : t.shape) {
    if (d < 0) throw std::runtime_error(path + ": bad header (negative size)");
    count *= static_cast<std::size_t>(d);
  }
  t.values.resize(count);
  if (f32) {
    std::vector<float> raw(count);
    in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(4 * count));
    for (std::size_t i = 0; i < count; ++i) t.values[i] = raw[i];
  } else {
    in.read(reinterpret_cast<char*>(t.values.data()), static_cast<std::streamsize>(8 * count));
  }
  if (!in) throw std::runtime_error(path + ": truncated (expected " + std::to_string(count) + " values)");
  if (in.peek() != std::char_traits<char>::eof())
    throw std::runtime_error(path + ": trailing bytes after the data");
  return t;
}

// Writes float (TLSTMF32) or double (TLSTMF64) values to PATH.tmp, renamed when complete: a
// failed run never leaves a complete-looking file.
template <class T>
void write_tensor(const std::string& path, const std::vector<std::int64_t>& shape, const T* values) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "float or double values");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(tmp + ": cannot write");
    const std::uint32_t header[2] = {static_cast<std::uint32_t>(shape.size()), 0};
    out.write(sizeof(T) == 4 ? "TLSTMF32" : "TLSTMF64", 8);
    out.write(reinterpret_cast<const char*>(header), sizeof header);
    out.write(reinterpret_cast<const char*>(shape.data()), static_cast<std::streamsize>(8 * shape.size()));
    std::size_t count = 1;
    for (std::int64_t d : shape) count *= static_cast<std::size_t>(d);
    out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(sizeof(T) * count));
    if (!out) throw std::runtime_error(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename " + tmp);
  }
}

}  // namespace tracklstm
