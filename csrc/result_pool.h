// Memory for the arrays the kernels return, recycled.
//
// A packed network at batch 64 returns arrays of tens of MB from every layer (a
// ResNet-18 GEMM result is 51 MB). glibc serves blocks that large with mmap and gives
// them back to the kernel when they are freed, so every forward faults all of them in
// again: 370,000 page faults and 0.75 s of system time against 1.2 s of user time per
// ResNet-18 forward (docs/performance.md, "Batch 64 and the allocator"). Blocks of at
// least kPooledBytes are therefore kept when their array dies and handed to the next
// result that fits, up to kMaxKeptBytes in all. Smaller blocks go to malloc as before.
// The memory is uninitialized either way, as before: every kernel writes its whole
// result. Thread-safe.
#pragma once

#include <cstddef>

namespace apb {

constexpr size_t kPooledBytes = size_t{1} << 20;   // 1 MiB
constexpr size_t kMaxKeptBytes = size_t{1} << 29;  // 512 MiB

// At least `bytes` bytes, 64-byte aligned. Throws std::bad_alloc.
void *acquire_result(size_t bytes);
// Gives back a pointer acquire_result returned (kept for reuse or freed).
void release_result(void *p) noexcept;

struct ResultPoolStats {
    size_t kept_bytes = 0;   // held for reuse now
    size_t kept_blocks = 0;
    size_t reused = 0;       // acquisitions served from kept blocks, since the start
    size_t allocated = 0;    // acquisitions of at least kPooledBytes that were not
};
ResultPoolStats result_pool_stats();
// Frees every kept block; returns the bytes freed.
size_t empty_result_pool();

}  // namespace apb
