#include "ops/common.h"

#include <algorithm>

#include "core/gpu_hooks.h"

namespace mmkit::detail {

Stream resolve_stream(const StreamOrDevice& s, std::initializer_list<const Array*> inputs) {
  ensure_backends_loaded();
  Stream st;
  if (std::holds_alternative<Stream>(s)) {
    st = std::get<Stream>(s);
  } else if (std::holds_alternative<Device>(s)) {
    st = Stream(std::get<Device>(s));
  } else {
    for (const Array* a : inputs)
      if (a && !a->is_null()) {
        st = Stream(a->device());
        break;
      }
  }
  if (st.device.is_gpu()) require_gpu("stream");
  return st;
}

fmt::Mode parse_mode(const std::string& mode, const char* op) {
  for (const auto& t : fmt::kFormats)
    if (mode == t.name) return t.mode;
  throw_error(op, "Invalid quantization mode '", mode, "'.");
}

void require_non_null(const Array& a, const char* op, const char* what) {
  if (a.is_null()) throw_error(op, what, " is a null array.");
}

Array flatten_batch(const Array& a, Dtype dt) {
  return a.astype(dt).reshape({shape_size(batch_of(a)), a.shape(-2), a.shape(-1)});
}

Shape broadcast_shapes_for(const Shape& a, const Shape& b, const char* op, const char* what) {
  try {
    return broadcast_shapes(a, b);
  } catch (const Error&) {
    throw_error(op, what, " with shapes ", shape_str(a), " and ", shape_str(b), " cannot be broadcast.");
  }
}

Array arange_batch(const Shape& batch) {
  const int64_t n = shape_size(batch);
  Array r = Array::empty(batch, Dtype::int64);
  int64_t* p = r.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  return r;
}

Array prepare_indices(const Array& idx, const Shape& shape, int64_t n, Device dev, const char* op,
                      const char* name, const char* operand, bool* checked) {
  Array b = idx.broadcast_to(shape);
  if (idx.device().is_cpu()) {
    // Check the caller's array before broadcasting, so the reported position
    // is an element of what was passed in.
    Array c = idx.astype(Dtype::int64);
    const int64_t* p = c.data<int64_t>();
    const int64_t m = c.size();
    for (int64_t i = 0; i < m; ++i) {
      if (p[i] < 0 || p[i] >= n)
        throw_error(op, name, " value ", p[i], " at flat position ", i, " is out of range: ", operand, " has ", n,
                    " batch entries, so indices must lie in [0, ", n, ").");
    }
    return on_device(c.broadcast_to(shape).contiguous(), dev);
  }
  *checked = false;  // device-resident indices: the backend checks them
  return on_device(b, dev).astype(Dtype::int64);
}

void broadcast_index_maps(const Shape& a_batch, const Shape& b_batch, const Shape& out_batch,
                          std::vector<int64_t>& a_map, std::vector<int64_t>& b_map) {
  const int64_t n = shape_size(out_batch);
  const int nd = static_cast<int>(out_batch.size());
  auto strides_for = [&](const Shape& s) {
    Strides rs = row_major_strides(s);
    Strides out(nd, 0);
    const int lead = nd - static_cast<int>(s.size());
    for (int i = 0; i < static_cast<int>(s.size()); ++i) out[lead + i] = s[i] == 1 ? 0 : rs[i];
    return out;
  };
  const Strides sa = strides_for(a_batch), sb = strides_for(b_batch);
  a_map.assign(static_cast<size_t>(n), 0);
  b_map.assign(static_cast<size_t>(n), 0);
  std::vector<int64_t> idx(nd, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t oa = 0, ob = 0;
    for (int d = 0; d < nd; ++d) {
      oa += idx[d] * sa[d];
      ob += idx[d] * sb[d];
    }
    a_map[i] = oa;
    b_map[i] = ob;
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < out_batch[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace mmkit::detail
