// A/B shim: one copy of libmmkit.a per .so (hidden symbols), driven by ab.cpp.
#include <omp.h>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include "cpu/cpu_isa.h"
#include "mmkit/mmkit.h"
using namespace mmkit;
namespace {
struct QMat { Array w, s, b; };
QMat rq(int64_t E, int64_t N, int64_t K, int bits, int gs, uint64_t seed, Dtype sdt) {
  QMat q;
  q.w = Array::empty({E, N, K * bits / 32}, Dtype::uint32);
  uint32_t* w = q.w.data<uint32_t>();
  std::mt19937 g(static_cast<uint32_t>(seed));
  for (int64_t i = 0; i < q.w.size(); ++i) w[i] = g();
  const int64_t ng = E * N * (K / gs);
  Array s = Array::empty({E, N, K / gs}, Dtype::float32), b = Array::empty({E, N, K / gs}, Dtype::float32);
  const float inv = 1.0f / float((1 << bits) - 1);
  for (int64_t i = 0; i < ng; ++i) {
    const float r = 0.02f + 0.01f * float((i * 2654435761u) % 97) / 97.0f;
    s.data<float>()[i] = 2.0f * r * inv;
    b.data<float>()[i] = -r;
  }
  q.s = s.astype(sdt);
  q.b = b.astype(sdt);
  return q;
}
struct Case {
  std::string kind;
  int64_t E = 1, N = 0, K = 0, M = 1, T = 1, topk = 1;
  int bits = 4, gs = 64;
  Dtype dt = Dtype::float32;
  std::vector<QMat> qs;
  Array x;
  std::vector<Array> lhs, rhs;
  double bytes = 0;
  Array last;
};
}  // namespace
extern "C" {
__attribute__((visibility("default"))) void* ab_make(const char* spec) {
  // "qmm N K M bits gs dt copies" or "gather E N K T topk dt"
  Case* c = new Case;
  char kind[16], dts[16];
  int copies = 1;
  if (std::sscanf(spec, "%15s", kind) != 1) return nullptr;
  c->kind = kind;
  long long a1, a2, a3, a4, a5;
  if (c->kind == "qmm") {
    std::sscanf(spec, "%*s %lld %lld %lld %d %d %15s %d", &a1, &a2, &a3, &c->bits, &c->gs, dts, &copies);
    c->N = a1; c->K = a2; c->M = a3;
  } else {
    std::sscanf(spec, "%*s %lld %lld %lld %lld %lld %15s", &a1, &a2, &a3, &a4, &a5, dts);
    c->E = a1; c->N = a2; c->K = a3; c->T = a4; c->topk = a5;
  }
  c->dt = std::string(dts) == "bf16" ? Dtype::bfloat16 : Dtype::float32;
  const double bpw = c->bits / 8.0 + 2.0 * (c->dt == Dtype::float32 ? 4 : 2) / c->gs;
  if (c->kind == "qmm") {
    for (int i = 0; i < copies; ++i) {
      QMat q = rq(1, c->N, c->K, c->bits, c->gs, 11 + i, c->dt);
      q.w = q.w.reshape({c->N, c->K * c->bits / 32});
      q.s = q.s.reshape({c->N, c->K / c->gs});
      q.b = q.b.reshape({c->N, c->K / c->gs});
      c->qs.push_back(q);
    }
    Array x = Array::empty({c->M, c->K}, Dtype::float32);
    std::mt19937 g(5);
    std::normal_distribution<float> nd;
    for (int64_t i = 0; i < x.size(); ++i) x.data<float>()[i] = nd(g);
    c->x = x.astype(c->dt);
    c->bytes = double(c->N) * c->K * bpw;
  } else {
    c->qs.push_back(rq(c->E, c->N, c->K, c->bits, c->gs, 3, c->dt));
    std::mt19937 g(17);
    double dsum = 0;
    for (int s = 0; s < 8; ++s) {
      std::vector<int64_t> l, r;
      std::vector<char> seen(c->E, 0);
      for (int64_t t = 0; t < c->T; ++t) {
        std::vector<int64_t> ex(c->E);
        for (int64_t e = 0; e < c->E; ++e) ex[e] = e;
        std::shuffle(ex.begin(), ex.end(), g);
        for (int64_t j = 0; j < c->topk; ++j) { l.push_back(t); r.push_back(ex[j]); seen[ex[j]] = 1; }
      }
      dsum += std::count(seen.begin(), seen.end(), 1);
      c->lhs.push_back(Array::from_vector(l));
      c->rhs.push_back(Array::from_vector(r));
    }
    Array x = Array::empty({c->T, 1, c->K}, Dtype::float32);
    for (int64_t i = 0; i < x.size(); ++i) x.data<float>()[i] = float((i * 7919) % 101) / 101.0f - 0.5f;
    c->x = x.astype(c->dt);
    c->bytes = dsum / 8 * double(c->N) * c->K * bpw;
  }
  return c;
}
__attribute__((visibility("default"))) double ab_bytes(void* h) { return static_cast<Case*>(h)->bytes; }
__attribute__((visibility("default"))) void ab_call(void* h, int i) {
  Case* c = static_cast<Case*>(h);
  if (c->kind == "qmm") {
    const QMat& q = c->qs[i % c->qs.size()];
    c->last = quantized_matmul(c->x, q.w, q.s, q.b, true, c->gs, c->bits, "affine");
  } else {
    const QMat& q = c->qs[0];
    c->last = gather_qmm(c->x, q.w, q.s, q.b, c->lhs[i % 8], c->rhs[i % 8], true, c->gs, c->bits, "affine", false);
  }
}
/// Output of the last call as float32 into dst (n elements at most); returns the count.
__attribute__((visibility("default"))) int64_t ab_out(void* h, float* dst, int64_t n) {
  Case* c = static_cast<Case*>(h);
  Array f = c->last.astype(Dtype::float32);
  const int64_t m = std::min<int64_t>(n, f.size());
  std::memcpy(dst, f.data<float>(), m * 4);
  return m;
}
__attribute__((visibility("default"))) void ab_free(void* h) { delete static_cast<Case*>(h); }
__attribute__((visibility("default"))) void ab_vnni(int on) { detail::set_cpu_vnni_qmv_for_testing(on != 0); }
}
