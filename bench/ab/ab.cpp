// A/B driver: dlopen two shims, alternate calls per case, report median/min.
#include <dlfcn.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
using Clock = std::chrono::steady_clock;
static double now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
struct Lib {
  void* (*make)(const char*);
  double (*bytes)(void*);
  void (*call)(void*, int);
  int64_t (*out)(void*, float*, int64_t);
  void (*fr)(void*);
  void (*vnni)(int);
};
static Lib load(const char* path) {
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!h) { std::fprintf(stderr, "%s\n", dlerror()); std::exit(1); }
  Lib l;
  l.make = (void* (*)(const char*))dlsym(h, "ab_make");
  l.bytes = (double (*)(void*))dlsym(h, "ab_bytes");
  l.call = (void (*)(void*, int))dlsym(h, "ab_call");
  l.out = (int64_t(*)(void*, float*, int64_t))dlsym(h, "ab_out");
  l.fr = (void (*)(void*))dlsym(h, "ab_free");
  l.vnni = (void (*)(int))dlsym(h, "ab_vnni");
  return l;
}
static double bw() {
  static std::vector<double> a;
  const size_t n = (size_t(1) << 30) / 8, win = (size_t(64) << 20) / 8;
  if (a.empty()) { a.resize(n); 
#pragma omp parallel for
    for (size_t i = 0; i < n; ++i) a[i] = 1.0 + double(i & 7); }
  double best = 0, sink = 0;
  for (int pass = 0; pass < 48; ++pass) {
    const double* base = a.data() + (size_t(pass) % (n / win)) * win;
    const double t0 = now();
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (size_t blk = 0; blk < win / 16; ++blk) {
      const double* p = base + blk * 16;
      double s0 = p[0] + p[8], s1 = p[1] + p[9], s2 = p[2] + p[10], s3 = p[3] + p[11];
      double s4 = p[4] + p[12], s5 = p[5] + p[13], s6 = p[6] + p[14], s7 = p[7] + p[15];
      total += ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
    }
    sink += total;
    best = std::max(best, win * 8.0 / (now() - t0) / 1e9);
  }
  if (sink == 42) std::printf(" ");
  return best;
}
int main(int argc, char** argv) {
  // ab libA.so libB.so reps spec...   (B may be "vnni-off" to time A with the VNNI kernel off)
  if (argc < 5) { std::fprintf(stderr, "usage: ab A.so B.so|vnni-off reps spec...\n"); return 2; }
  Lib A = load(argv[1]);
  const bool voff = std::string(argv[2]) == "vnni-off" || std::string(argv[2]) == "solo";
  const bool solo = std::string(argv[2]) == "solo";
  Lib B = voff ? A : load(argv[2]);
  const int reps = std::atoi(argv[3]);
  double b0 = bw();
  std::printf("read bw %.1f GB/s (start)\n", b0);
  double bmax = b0;
  for (int s = 4; s < argc; ++s) {
    void* ha = A.make(argv[s]);
    void* hb = voff ? ha : B.make(argv[s]);
    const double bytes = A.bytes(ha);
    // correctness: compare outputs of one call with the same input
    std::vector<float> oa(1 << 22), ob(1 << 22);
    A.call(ha, 0); int64_t na = A.out(ha, oa.data(), oa.size());
    if (voff) A.vnni(0);
    B.call(hb, 0); int64_t nb = B.out(hb, ob.data(), ob.size());
    if (voff) A.vnni(1);
    double md = 0, mx = 0;
    for (int64_t i = 0; i < std::min(na, nb); ++i) { md = std::max(md, (double)std::fabs(oa[i] - ob[i])); mx = std::max(mx, (double)std::fabs(ob[i])); }
    std::vector<double> ta, tb;
    for (int i = 0; i < 3; ++i) { A.call(ha, i); if (voff) A.vnni(0); B.call(hb, i); if (voff) A.vnni(1); }
    for (int i = 0; i < reps; ++i) {
      for (int o = 0; o < 2; ++o) {
        const bool a_first = (i & 1) == 0;
        const bool isA = (o == 0) == a_first;
        if (solo && !isA) continue;
        if (voff && !isA) A.vnni(0);
        const double t0 = now();
        (isA ? A : B).call(isA ? ha : hb, i + 7);
        const double dt = (now() - t0) * 1e6;
        if (voff && !isA) A.vnni(1);
        (isA ? ta : tb).push_back(dt);
      }
    }
    if (tb.empty()) tb = ta;
    std::sort(ta.begin(), ta.end());
    std::sort(tb.begin(), tb.end());
    bmax = std::max(bmax, bw());
    auto pr = [&](const char* n, std::vector<double>& t) {
      std::printf("  %s med %8.1f us min %8.1f us  | %5.1f GB/s min (%3.0f%% of best bw)  med %3.0f%%\n", n, t[t.size() / 2], t[0],
                  bytes / t[0] / 1e3, 100 * bytes / t[0] / 1e3 / bmax, 100 * bytes / t[t.size() / 2] / 1e3 / bmax);
    };
    std::printf("%s   (bytes %.1f MB, max|A-B| %.3g of max|B| %.3g, best bw so far %.1f)\n", argv[s], bytes / 1e6, md, mx, bmax);
    pr("A", ta);
    pr("B", tb);
    std::printf("  B/A: med %.3f min %.3f\n", tb[tb.size() / 2] / ta[ta.size() / 2], tb[0] / ta[0]);
    std::fflush(stdout);
    A.fr(ha);
    if (!voff) B.fr(hb);
  }
  return 0;
}
