#include "ref/ref.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace mmkit::ref {
namespace {

double e2m1(unsigned c) {
  static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return (c & 8) ? -mag[c & 7] : mag[c & 7];
}
double e4m3(unsigned b) {
  unsigned e = (b >> 3) & 15, m = b & 7;
  double v = e == 0 ? m * std::ldexp(1.0, -9) : (1.0 + m / 8.0) * std::ldexp(1.0, static_cast<int>(e) - 7);
  return (b & 0x80) ? -v : v;
}
double e8m0(unsigned s) { return s == 255 ? INFINITY : std::ldexp(1.0, static_cast<int>(s) - 127); }

/// Code j of a packed row, bit by bit (stream bit t = bit t%32 of word t/32).
unsigned code_at(const uint32_t* row, int64_t j, int bits) {
  unsigned c = 0;
  for (int i = 0; i < bits; ++i) {
    int64_t t = j * bits + i;
    c |= ((row[t / 32] >> (t % 32)) & 1u) << i;
  }
  return c;
}

Shape bcast(const Shape& a, const Shape& b) { return broadcast_shapes(a, b); }

// index of a broadcast position in an operand of shape `s` (right-aligned)
int64_t bindex(const Shape& out, const std::vector<int64_t>& idx, const Shape& s) {
  int64_t off = 0;
  const size_t lead = out.size() - s.size();
  for (size_t i = 0; i < s.size(); ++i) off = off * s[i] + (s[i] == 1 ? 0 : idx[lead + i]);
  return off;
}

std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> idx(s.size());
  for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
    idx[d] = s[d] ? i % s[d] : 0;
    if (s[d]) i /= s[d];
  }
  return idx;
}

Tensor batch_slice(const Tensor& t, int64_t b) {
  // t has shape batch + (r, c); returns matrix b
  const int64_t r = t.shape[t.shape.size() - 2], c = t.shape.back();
  Tensor m{{r, c}, {}};
  m.v.assign(t.v.begin() + b * r * c, t.v.begin() + (b + 1) * r * c);
  return m;
}

}  // namespace

double Tensor::max_abs() const {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

Tensor to_tensor(const Array& a) { return Tensor{a.shape(), a.to_double_vector()}; }

Tensor dequantize(const Array& w, const Array& scales, const std::optional<Array>& biases, int gs, int bits,
                  const std::string& mode, std::optional<double> global_scale) {
  Array wc = w.to(Device::cpu()).contiguous();
  Tensor s = to_tensor(scales);
  Tensor b;
  if (biases) b = to_tensor(*biases);
  const int64_t words = w.shape(-1), cols = words * 32 / bits, rows = w.size() / std::max<int64_t>(words, 1);
  Shape shape = w.shape();
  shape.back() = cols;
  Tensor out{shape, std::vector<double>(static_cast<size_t>(rows * cols))};
  const uint32_t* q = wc.data<uint32_t>();
  const int64_t groups = cols / gs;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      unsigned c = code_at(q + r * words, j, bits);
      double sc = s.v[r * groups + j / gs];
      double v;
      if (mode == "affine") v = sc * c + b.v[r * groups + j / gs];
      else if (mode == "mxfp4") v = e2m1(c) * e8m0(static_cast<unsigned>(sc));
      else if (mode == "mxfp8") v = e4m3(c) * e8m0(static_cast<unsigned>(sc));
      else {
        v = e2m1(c) * e4m3(static_cast<unsigned>(sc));
        if (global_scale) v *= *global_scale / 2688.0;
      }
      out.v[r * cols + j] = v;
    }
  return out;
}

Tensor matmul(const Tensor& a0, const Tensor& b0) {
  Tensor a = a0, b = b0;
  const bool a1 = a.shape.size() == 1, b1 = b.shape.size() == 1;
  if (a1) a.shape.insert(a.shape.begin(), 1);
  if (b1) b.shape.push_back(1);
  const int64_t M = a.shape[a.shape.size() - 2], K = a.shape.back(), N = b.shape.back();
  if (b.shape[b.shape.size() - 2] != K) throw std::invalid_argument("ref::matmul: K mismatch");
  Shape ab(a.shape.begin(), a.shape.end() - 2), bb(b.shape.begin(), b.shape.end() - 2);
  Shape ob = bcast(ab, bb);
  const int64_t L = shape_size(ob);
  Tensor out;
  out.shape = ob;
  if (!a1) out.shape.push_back(M);
  if (!b1) out.shape.push_back(N);
  out.v.assign(static_cast<size_t>(L * M * N), 0.0);
  for (int64_t l = 0; l < L; ++l) {
    auto idx = unravel(l, ob);
    const int64_t ai = bindex(ob, idx, ab), bi = bindex(ob, idx, bb);
    const double* A = a.v.data() + ai * M * K;
    const double* B = b.v.data() + bi * K * N;
    double* C = out.v.data() + l * M * N;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += A[m * K + k] * B[k * N + n];
        C[m * N + n] = acc;
      }
  }
  return out;
}

static Tensor transpose_last(const Tensor& t) {
  const int64_t r = t.shape[t.shape.size() - 2], c = t.shape.back(), n = t.v.size() / std::max<int64_t>(r * c, 1);
  Tensor o{t.shape, std::vector<double>(t.v.size())};
  std::swap(o.shape[o.shape.size() - 2], o.shape.back());
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) o.v[b * r * c + j * r + i] = t.v[b * r * c + i * c + j];
  return o;
}

Tensor quantized_matmul(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                        bool transpose, int gs, int bits, const std::string& mode) {
  Tensor wd = dequantize(w, scales, biases, gs, bits, mode);
  if (transpose) wd = transpose_last(wd);
  Tensor xt = to_tensor(x);
  if (xt.shape.size() <= 2 || wd.shape.size() == 2) {
    if (wd.shape.size() > 2) wd = batch_slice(wd, 0);
    // every row of x against the one matrix
    Tensor x2 = xt;
    const int64_t K = xt.shape.back();
    x2.shape = {static_cast<int64_t>(xt.v.size()) / std::max<int64_t>(K, 1), K};
    if (K == 0) x2.shape = {shape_size(Shape(xt.shape.begin(), xt.shape.end() - 1)), 0};
    Tensor o = matmul(x2, wd);
    o.shape = xt.shape;
    o.shape.back() = wd.shape.back();
    return o;
  }
  return matmul(xt, wd);
}

static Tensor gather_impl(const Tensor& x, const Tensor& w, const std::optional<Array>& lhs,
                          const std::optional<Array>& rhs) {
  Shape xb(x.shape.begin(), x.shape.end() - 2), wb(w.shape.begin(), w.shape.end() - 2);
  auto arange = [](const Shape& s) {
    Tensor t{s, {}};
    for (int64_t i = 0; i < shape_size(s); ++i) t.v.push_back(static_cast<double>(i));
    return t;
  };
  Tensor li = lhs ? to_tensor(*lhs) : arange(xb);
  Tensor ri = rhs ? to_tensor(*rhs) : arange(wb);
  Shape ib = bcast(li.shape, ri.shape);
  const int64_t L = shape_size(ib), M = x.shape[x.shape.size() - 2], K = x.shape.back(), N = w.shape.back();
  Tensor out{ib, std::vector<double>(static_cast<size_t>(L * M * N))};
  out.shape.push_back(M);
  out.shape.push_back(N);
  for (int64_t l = 0; l < L; ++l) {
    auto idx = unravel(l, ib);
    const int64_t xi = static_cast<int64_t>(li.v[bindex(ib, idx, li.shape)]);
    const int64_t wi = static_cast<int64_t>(ri.v[bindex(ib, idx, ri.shape)]);
    if (xi < 0 || xi >= shape_size(xb) || wi < 0 || wi >= shape_size(wb))
      throw std::out_of_range("ref::gather: index out of range");
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += x.v[(xi * M + m) * K + k] * w.v[(wi * K + k) * N + n];
        out.v[(l * M + m) * N + n] = acc;
      }
  }
  return out;
}

Tensor gather_qmm(const Array& x, const Array& w, const Array& scales, const std::optional<Array>& biases,
                  const std::optional<Array>& lhs, const std::optional<Array>& rhs, bool transpose, int gs, int bits,
                  const std::string& mode) {
  if (!lhs && !rhs) return quantized_matmul(x, w, scales, biases, transpose, gs, bits, mode);
  Tensor wd = dequantize(w, scales, biases, gs, bits, mode);
  if (transpose) wd = transpose_last(wd);
  return gather_impl(to_tensor(x), wd, lhs, rhs);
}

Tensor gather_mm(const Array& a, const Array& b, const std::optional<Array>& lhs, const std::optional<Array>& rhs) {
  if (!lhs && !rhs) return matmul(to_tensor(a), to_tensor(b));
  Tensor at = to_tensor(a), bt = to_tensor(b);
  const bool a1 = at.shape.size() == 1, b1 = bt.shape.size() == 1;
  if (a1) at.shape.insert(at.shape.begin(), 1);
  if (b1) bt.shape.push_back(1);
  Tensor o = gather_impl(at, bt, lhs, rhs);
  if (a1) o.shape.erase(o.shape.end() - 2);
  if (b1) o.shape.pop_back();
  return o;
}

Tensor block_masked_mm(const Array& a, const Array& b, int bs, const std::optional<Array>& mo,
                       const std::optional<Array>& ml, const std::optional<Array>& mr) {
  if (!mo && !ml && !mr) return matmul(to_tensor(a), to_tensor(b));
  const Dtype T = promote_types(a.dtype(), b.dtype());
  Tensor at = to_tensor(a), bt = to_tensor(b);
  const bool a1 = at.shape.size() == 1, b1 = bt.shape.size() == 1;
  if (a1) at.shape.insert(at.shape.begin(), 1);
  if (b1) bt.shape.push_back(1);
  const int64_t M = at.shape[at.shape.size() - 2], K = at.shape.back(), N = bt.shape.back();
  Shape ab(at.shape.begin(), at.shape.end() - 2), bb(bt.shape.begin(), bt.shape.end() - 2);
  Shape ob = bcast(ab, bb);
  auto mask = [&](const std::optional<Array>& m, bool ins_row, bool ins_col) {
    Tensor t = to_tensor(*m);
    if (m->dtype() != Dtype::bool_)
      for (double& x : t.v) x = round_to(T, static_cast<float>(x));
    if (ins_row) t.shape.insert(t.shape.end() - (t.shape.empty() ? 0 : 1), 1);
    if (ins_col) t.shape.push_back(1);
    // Masks broadcast right-aligned like the library's: a 0-D or 1-D mask is a
    // (1, 1) or (1, n) block grid.
    while (t.shape.size() < 2) t.shape.insert(t.shape.begin(), 1);
    return t;
  };
  Tensor tmo, tml, tmr;
  if (mo) tmo = mask(mo, a1, b1);
  if (ml) tml = mask(ml, a1, false);
  if (mr) tmr = mask(mr, false, b1);
  auto mval = [&](const Tensor& t, const std::vector<int64_t>& bidx, int64_t i, int64_t j) {
    if (t.shape.empty() && t.v.empty()) return 1.0;
    Shape full = ob;
    full.push_back(t.shape[t.shape.size() - 2]);
    full.push_back(t.shape.back());
    std::vector<int64_t> idx = bidx;
    idx.push_back(i);
    idx.push_back(j);
    return t.v[bindex(full, idx, t.shape)];
  };
  const int64_t L = shape_size(ob);
  Tensor out{ob, std::vector<double>(static_cast<size_t>(L * M * N), 0.0)};
  if (!a1) out.shape.push_back(M);
  if (!b1) out.shape.push_back(N);
  const bool op_bool = (!ml || ml->dtype() == Dtype::bool_) && (!mr || mr->dtype() == Dtype::bool_);
  // A float-masked operand element (mask * data) is a float32 value, the
  // computation dtype of every backend (SPEC decision 5), whatever T is: the
  // product rounds once to float32 (exact in double before that) and can
  // overflow to +-Inf, so a 0 on the other side gives Inf * 0 = NaN.
  auto masked = [](double w, double x) { return static_cast<double>(static_cast<float>(w * x)); };
  for (int64_t l = 0; l < L; ++l) {
    auto idx = unravel(l, ob);
    const int64_t ai = bindex(ob, idx, ab), bi = bindex(ob, idx, bb);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          double lw = ml ? mval(tml, idx, m / bs, k / bs) : 1.0;
          double rw = mr ? mval(tmr, idx, k / bs, n / bs) : 1.0;
          double av = at.v[(ai * M + m) * K + k], bv = bt.v[(bi * K + k) * N + n];
          if (op_bool) {
            if (lw == 0 || rw == 0) continue;  // block replaced by zeros
            acc += av * bv;
          } else {
            acc += masked(lw, av) * masked(rw, bv);
          }
        }
        double om = mo ? mval(tmo, idx, m / bs, n / bs) : 1.0;
        if (mo && mo->dtype() == Dtype::bool_) acc = om != 0 ? acc : 0.0;
        else acc *= om;
        out.v[(l * M + m) * N + n] = acc;
      }
  }
  return out;
}

}  // namespace mmkit::ref
