// Grouping of a gather's rows by expert, built on the device (gather_plan.cu).
//
// A gather_qmm / gather_mm call has L batch entries (lhs[l], rhs[l]) of M rows
// each. The plan sorts the L * M rows by rhs (the expert) without a host
// synchronisation and cuts each expert's rows into items of at most
// `rows_per_item` rows, so a kernel can run one item per block and read each
// expert's weights once per item instead of once per batch entry:
//   items[i] = (expert, first row in `rows`, row count),  i < *n_items
//   rows[r]  = (x row, out row) in the flattened (Bx * M, K) / (L * M, N) views.
// Entries with an out-of-range index are reported through the guard (the
// deferred error of docs/kernels/cuda.md), put in no item, and their output
// rows are zeroed by the plan kernel. The order of rows inside an expert is not
// deterministic; results are, since every row is computed independently.
// Memory: allocated stream-ordered on the op's stream from the device pool
// (capturable as memory nodes) and freed the same way after the consumer's
// launch (GatherPlan's destructor).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/runtime.h"
#ifdef __CUDACC__
#include "cuda/device/common.cuh"
#endif

namespace mmkit::cuda {

struct GatherItem {
  int32_t expert;
  int32_t count;
  int64_t begin;
};
struct GatherRow {
  int64_t x_row;
  int64_t out_row;
};

struct GatherPlanView {
  const GatherItem* items = nullptr;
  const GatherRow* rows = nullptr;
  const int32_t* n_items = nullptr;
};

#ifdef __CUDACC__
/// Plan item i for a consuming kernel: thread t < its count stores its row's
/// element offsets x_row * K and out_row * N (the caller orders the stores
/// with its own barrier, before and after).
__device__ __forceinline__ GatherItem load_gather_item(const GatherPlanView& plan, int64_t i, int t, int64_t K,
                                                       int64_t N, int64_t* x_off, int64_t* out_off) {
  const GatherItem it = plan.items[i];
  if (t < it.count) {
    const GatherRow r = plan.rows[it.begin + t];
    x_off[t] = r.x_row * K;
    out_off[t] = r.out_row * N;
  }
  return it;
}

/// load_gather_item for a whole block that stages the offsets in shared
/// memory: waits until the previous item's epilogue has read them, loads item
/// i's, and makes them visible to every thread (threads >= the item's rows
/// only wait; blockDim.x must cover the largest item).
__device__ __forceinline__ GatherItem load_gather_item_block(const GatherPlanView& plan, int64_t i, int64_t K,
                                                             int64_t N, int64_t* x_off, int64_t* out_off) {
  __syncthreads();
  const GatherItem it = load_gather_item(plan, i, static_cast<int>(threadIdx.x), K, N, x_off, out_off);
  __syncthreads();
  return it;
}

/// One work unit of a block-wide consumer that runs grouped or per entry.
/// GROUPED: plan item l (its rows' offsets staged in x_off / out_off for the
/// whole block, rows = its row count; the plan checked the indices). Else
/// batch entry l: x = lhs[l], w = rhs[l], checked here, rows = rows_entry.
struct GatherUnit {
  int64_t x = 0, w = 0, rows = 0;
  bool ok = true;
};
template <bool GROUPED>
__device__ __forceinline__ GatherUnit gather_unit_block(const GatherPlanView& plan, const int64_t* lhs,
                                                        const int64_t* rhs, int64_t l, int64_t K, int64_t N,
                                                        int64_t x_batch, int64_t w_batch, const IndexGuard& guard,
                                                        int64_t rows_entry, int64_t* x_off, int64_t* out_off) {
  GatherUnit u;
  if constexpr (GROUPED) {
    const GatherItem it = load_gather_item_block(plan, l, K, N, x_off, out_off);
    u.w = it.expert;
    u.rows = it.count;
  } else {
    u.x = lhs[l];
    u.w = rhs[l];
    u.rows = rows_entry;
    u.ok = index_ok(u.x, l, x_batch, guard, ErrWhich::lhs) && index_ok(u.w, l, w_batch, guard, ErrWhich::rhs);
  }
  return u;
}
#endif

/// Largest expert count the plan takes (its counters live in shared memory).
inline constexpr int64_t kGatherPlanMaxExperts = 2048;

class GatherPlan {
 public:
  /// Builds the plan on scope's stream. out/out_elem_bytes/N: where the rows of
  /// entries with a bad index are zeroed.
  GatherPlan(const OpScope& scope, const int64_t* lhs, const int64_t* rhs, int64_t L, int64_t M, int64_t x_batch,
             int64_t w_batch, int rows_per_item, IndexGuard guard, void* out, int out_elem_bytes, int64_t N);
  GatherPlan(const GatherPlan&) = delete;
  GatherPlan& operator=(const GatherPlan&) = delete;
  const GatherPlanView& view() const { return view_; }
  /// Upper bound of *n_items (the grid size a consumer launches).
  int64_t max_items() const { return max_items_; }

 private:
  int64_t max_items_;  // (before mem_: its size follows from it)
  StreamScratch mem_;
  GatherPlanView view_;
};

}  // namespace mmkit::cuda
