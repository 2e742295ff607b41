// The device-side grouping of gather rows by expert: gather_plan.h.
// One block of 1024 threads: count the entries per expert in shared memory
// (atomics), scan the counts, cut each expert's rows into items, then place
// every entry's M rows at its expert's offset. L is at most a few thousand in
// decode, so one block takes a few microseconds; large L loops.
#include "cuda/gather_plan.h"

#include <cub/block/block_scan.cuh>

#include "cuda/device/common.cuh"

namespace mmkit::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kPerThread = static_cast<int>(kGatherPlanMaxExperts / kThreads);

struct PlanArgs {
  const int64_t* lhs;
  const int64_t* rhs;
  int64_t L, M, x_batch, w_batch;
  int rows_per_item;
  IndexGuard guard;
  void* out;
  int out_elem_bytes;
  int64_t N;
  GatherItem* items;
  GatherRow* rows;
  int32_t* n_items;
};

__global__ void __launch_bounds__(kThreads) gather_plan_kernel(PlanArgs a) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int32_t cnt[kGatherPlanMaxExperts];
  __shared__ int64_t row_off[kGatherPlanMaxExperts];
  __shared__ int32_t item_off[kGatherPlanMaxExperts];
  const int E = static_cast<int>(a.w_batch);
  for (int e = threadIdx.x; e < E; e += kThreads) cnt[e] = 0;
  __syncthreads();
  // 1. Count; zero the rows of entries with a bad index.
  for (int64_t l = threadIdx.x; l < a.L; l += kThreads) {
    const int64_t xi = a.lhs[l], wi = a.rhs[l];
    const bool ok = index_ok(xi, l, a.x_batch, a.guard, ErrWhich::lhs) &&
                    index_ok(wi, l, a.w_batch, a.guard, ErrWhich::rhs);
    if (ok) {
      atomicAdd(&cnt[wi], 1);
    } else {
      unsigned char* o = static_cast<unsigned char*>(a.out) + l * a.M * a.N * a.out_elem_bytes;
      for (int64_t i = 0; i < a.M * a.N * a.out_elem_bytes; ++i) o[i] = 0;
    }
  }
  __syncthreads();
  // 2. Exclusive scans of rows and items per expert (kPerThread experts per thread).
  int64_t rows_in[kPerThread], items_in[kPerThread];
  int64_t rsum = 0, isum = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int e = threadIdx.x * kPerThread + j;
    const int64_t r = e < E ? cnt[e] * a.M : 0;
    rows_in[j] = rsum;
    items_in[j] = isum;
    rsum += r;
    isum += (r + a.rows_per_item - 1) / a.rows_per_item;
  }
  int64_t rbase = 0, ibase = 0, itotal = 0;
  Scan(scan_tmp).ExclusiveSum(rsum, rbase);
  __syncthreads();
  Scan(scan_tmp).ExclusiveSum(isum, ibase, itotal);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int e = threadIdx.x * kPerThread + j;
    if (e >= E) continue;
    row_off[e] = rbase + rows_in[j];
    item_off[e] = static_cast<int32_t>(ibase + items_in[j]);
    // 3. The expert's items.
    const int64_t r = cnt[e] * a.M;
    for (int64_t i = 0; i * a.rows_per_item < r; ++i) {
      GatherItem it;
      it.expert = e;
      it.begin = row_off[e] + i * a.rows_per_item;
      it.count = static_cast<int32_t>(r - i * a.rows_per_item < a.rows_per_item ? r - i * a.rows_per_item
                                                                                 : a.rows_per_item);
      a.items[item_off[e] + i] = it;
    }
  }
  if (threadIdx.x == 0) *a.n_items = static_cast<int32_t>(itotal);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) cnt[e] = 0;
  __syncthreads();
  // 4. Place each entry's rows at its expert's offset (any order inside an expert).
  for (int64_t l = threadIdx.x; l < a.L; l += kThreads) {
    const int64_t xi = a.lhs[l], wi = a.rhs[l];
    if (xi < 0 || xi >= a.x_batch || wi < 0 || wi >= a.w_batch) continue;
    const int64_t at = row_off[wi] + static_cast<int64_t>(atomicAdd(&cnt[wi], 1)) * a.M;
    for (int64_t m = 0; m < a.M; ++m) a.rows[at + m] = GatherRow{xi * a.M + m, l * a.M + m};
  }
}

}  // namespace

GatherPlan::GatherPlan(const OpScope& scope, const int64_t* lhs, const int64_t* rhs, int64_t L, int64_t M,
                       int64_t x_batch, int64_t w_batch, int rows_per_item, IndexGuard guard, void* out,
                       int out_elem_bytes, int64_t N)
    : max_items_((L * M + rows_per_item - 1) / rows_per_item + (w_batch < L ? w_batch : L)),
      mem_(scope,
           16 + static_cast<size_t>(max_items_) * sizeof(GatherItem) + static_cast<size_t>(L * M) * sizeof(GatherRow),
           "allocating the gather plan") {
  const size_t items_bytes = static_cast<size_t>(max_items_) * sizeof(GatherItem);
  unsigned char* base = static_cast<unsigned char*>(mem_.get());
  view_.n_items = reinterpret_cast<const int32_t*>(base);
  view_.items = reinterpret_cast<const GatherItem*>(base + 16);
  view_.rows = reinterpret_cast<const GatherRow*>(base + 16 + items_bytes);
  PlanArgs a{lhs,   rhs, L, M, x_batch, w_batch, rows_per_item, guard, out, out_elem_bytes, N,
             const_cast<GatherItem*>(view_.items), const_cast<GatherRow*>(view_.rows),
             const_cast<int32_t*>(view_.n_items)};
  gather_plan_kernel<<<1, kThreads, 0, scope.stream()>>>(a);
  scope.check_launch("gather_plan");
}

}  // namespace mmkit::cuda
