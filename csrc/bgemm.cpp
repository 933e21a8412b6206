// Dispatch, cache blocking and threading of the bitwise GEMMs; compiled without ISA
// flags. The per-ISA microkernels live in bgemm_<isa>.cpp.
#include "bgemm.h"

#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include "cpu_features.h"
#include "popcount.h"
#include "threads.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace apb {

namespace {

// In-place kernels: the activation rows of one block (all their planes) are sized to
// stay in a 32 KiB L1 data cache while every weight tile of the block passes over
// them, leaving room for the weight tile itself.
constexpr int64_t kActivationBlockBytes = 16 * 1024;
// Packed kernels: one block's activation panel, packed by its thread and then read
// once per weight tile, stays in L2; each register tile's part of it stays in L1.
constexpr int64_t kActivationPanelBytes = 96 * 1024;
// Weight rows per block: a block's weights (tile after tile) come from L2.
constexpr int64_t kWeightBlockRows = 64;
// Blocks per thread below which the weight blocks are split further, so that every
// thread gets work even when N is one block.
constexpr int64_t kBlocksPerThread = 4;
// Weight rows per unit of parallel weight packing.
constexpr int64_t kPackRows = 32;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A multiple of `step` no larger than `limit` (rounded down), and at least `step`.
int64_t multiple_at_most(int64_t limit, int64_t step) {
    return std::max(step, limit / step * step);
}

int gemm_threads(const PopcountGemm &g) {
    return apb::threads_for(g.M * g.N * std::max<int64_t>(1, g.W) * g.Q * g.P);
}

// Rows per weight block: `rows` (all of M, or kWeightBlockRows) halved until there are
// kBlocksPerThread blocks per thread.
int64_t weight_block_rows(const PopcountGemm &g, int64_t rows, int64_t blocks_n, int mr, int nt) {
    int64_t mc = std::min(g.M, multiple_at_most(rows, mr));
    while (nt > 1 && mc > mr && ceil_div(g.M, mc) * blocks_n < kBlocksPerThread * nt) {
        mc = multiple_at_most(mc / 2, mr);
    }
    return mc;
}

int thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Threads in the current team (at most the num_threads asked for).
int team_size() {
#if defined(_OPENMP)
    return omp_get_num_threads();
#else
    return 1;
#endif
}

void run_in_place(const PopcountGemmKernel &kernel, PopcountGemm g, int32_t *out) {
    // sum_p 2^p popcount(x[p, n]): the part of each output that does not depend on m.
    std::vector<int64_t> code_sums;
    if (g.epilogue.add_code_sums) {
        code_sums.assign(static_cast<size_t>(g.N), 0);
        for (int p = 0; p < g.P; ++p) {
            for (int64_t n = 0; n < g.N; ++n) {
                const uint64_t *row = g.x + (p * g.N + n) * g.W;
                int64_t count = 0;
                for (int64_t k = 0; k < g.W; ++k) {
                    count += popcount64(k == g.W - 1 ? row[k] & g.last_mask : row[k]);
                }
                code_sums[n] += count << p;
            }
        }
        g.epilogue.per_n = code_sums.data();
    }
    const int64_t x_row_bytes = std::max<int64_t>(1, g.P * g.W * 8);
    const int64_t nc =
        std::min(g.N, multiple_at_most(kActivationBlockBytes / x_row_bytes, kernel.nr));
    const int nt = gemm_threads(g);
    const int64_t blocks_n = ceil_div(g.N, nc);
    const int64_t mc = weight_block_rows(g, kWeightBlockRows, blocks_n, kernel.mr, nt);
    const int64_t blocks = ceil_div(g.M, mc) * blocks_n;
    parallel_for(nt, blocks, [&](int64_t b) {
        const int64_t m0 = (b / blocks_n) * mc;
        const int64_t n0 = (b % blocks_n) * nc;
        kernel.block(g, m0, std::min(g.M, m0 + mc), n0, std::min(g.N, n0 + nc), out);
    });
}

// `total` cut into `parts` near-equal pieces, each a multiple of `step`: the piece size.
int64_t part_size(int64_t total, int64_t parts, int64_t step) {
    return ceil_div(ceil_div(total, parts), step) * step;
}

// Buffers the kernels overwrite before reading: no zero-filling, and aligned to a cache
// line, as vector loads that straddle two lines cost two (measured: panels at an
// address 16 mod 64, which large allocations get from malloc, ran the AVX2 microkernel
// at 0.73x).
constexpr std::align_val_t kPanelAlignment{64};

struct AlignedDelete {
    template <class T>
    void operator()(T *p) const {
        ::operator delete[](p, kPanelAlignment);
    }
};

template <class T>
using Panel = std::unique_ptr<T[], AlignedDelete>;

template <class T>
Panel<T> uninitialized(int64_t count) {
    const size_t n = static_cast<size_t>(std::max<int64_t>(count, 1));
    return Panel<T>(static_cast<T *>(::operator new[](n * sizeof(T), kPanelAlignment)));
}

// Packs the whole weight panel (in parallel), then runs blocks of columns x rows of
// near-equal sizes (so that threads get equal work): a thread packs a block's
// activation panel once and keeps it for its next block of the same columns (blocks
// are ordered columns first and scheduled statically, so a thread's blocks are
// consecutive). Columns are cut so that one activation panel stays in L2; rows only as
// far as needed to give every thread kBlocksPerThread blocks.
void run_packed(const PackedPopcountGemmKernel &kernel, const PopcountGemm &g, int32_t *out) {
    const int nt = gemm_threads(g);
    const int64_t row_bytes =
        std::max<int64_t>(1, kernel.activation_panel_words(g, kernel.nr) * 8 / kernel.nr);
    const int64_t max_cols = multiple_at_most(kActivationPanelBytes / row_bytes, kernel.nr);
    // More blocks for more threads: rows first, up to kBlocksPerThread blocks per thread
    // (a block of columns is then packed once per thread that meets it); columns only as
    // far as needed for a number of blocks that the threads share evenly (with the
    // activations on the table side, every block of columns streams all the weights).
    int64_t parts_n = ceil_div(g.N, max_cols), parts_m = 1;
    while (nt > 1 && parts_m * parts_n < kBlocksPerThread * nt && 2 * parts_m * kernel.mr <= g.M) {
        parts_m *= 2;
    }
    int64_t nc = part_size(g.N, parts_n, kernel.nr);
    const int64_t mc = part_size(g.M, parts_m, kernel.mr);
    const int64_t blocks_m = ceil_div(g.M, mc);
    while (nt > 1 && (blocks_m * ceil_div(g.N, nc)) % nt != 0 && (parts_n + 1) * kernel.nr <= g.N) {
        nc = part_size(g.N, ++parts_n, kernel.nr);
    }
    const int64_t blocks_n = ceil_div(g.N, nc);
    const int64_t panel_words = part_size(kernel.activation_panel_words(g, nc), 1, 8);  // lines
    const int64_t sums_per_thread = g.epilogue.add_code_sums ? part_size(nc, 1, kernel.nr) : 0;
    // Allocated here, outside the parallel region, so that a failure throws to the caller.
    const auto w_panel = uninitialized<uint64_t>(kernel.weight_panel_words(g));
    const auto x_panels = uninitialized<uint64_t>(nt * panel_words);
    const auto sums = uninitialized<int32_t>(nt * sums_per_thread);
    // Worksharing loops: run_team gives them a team of their own (threads.h).
    const auto work = [&] {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < g.M; m += kPackRows) {
            kernel.pack_weights(g, m, std::min(g.M, m + kPackRows), w_panel.get());
        }
        const int t = thread_index();
        uint64_t *x_panel = x_panels.get() + t * panel_words;
        int32_t *code_sums = g.epilogue.add_code_sums ? sums.get() + t * sums_per_thread : nullptr;
        int64_t packed = -1;  // the block of columns x_panel holds
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks_m * blocks_n; ++b) {
            const int64_t bn = b / blocks_m;
            const int64_t n0 = bn * nc, n1 = std::min(g.N, n0 + nc);
            const int64_t m0 = (b % blocks_m) * mc;
            if (bn != packed) {
                kernel.pack_activations(g, n0, n1, x_panel, code_sums);
                packed = bn;
            }
            kernel.block(g, w_panel.get(), x_panel, code_sums, m0, std::min(g.M, m0 + mc), n0,
                         n1, out);
        }
    };
    run_team(nt, work);
}

// Tiles of columns x blocks of rows for the lanes kernel, tile-major and split
// statically among the threads, so that a thread's blocks of one tile are consecutive:
// it packs the tile into its own panel (which stays in L1 while the weight rows pass
// over it) once and keeps it for them. Rows are split only as far as needed to give
// every thread kBlocksPerThread blocks (few tiles, many rows).
void run_lanes(const LanesPopcountGemmKernel &kernel, const PopcountGemm &g, int32_t *out) {
    const int nt = gemm_threads(g);
    const int64_t tiles = ceil_div(g.N, kernel.tile_columns);
    int64_t parts_m = 1;
    while (nt > 1 && tiles * parts_m < kBlocksPerThread * nt &&
           2 * parts_m * kernel.row_step <= g.M) {
        parts_m *= 2;
    }
    const int64_t mc = part_size(g.M, parts_m, kernel.row_step);
    const int64_t blocks_m = ceil_div(g.M, mc);
    const int64_t panel_words = part_size(kernel.panel_words, 1, 8);  // whole cache lines
    const auto panels = uninitialized<uint64_t>(nt * panel_words);  // may throw: here
    const int64_t blocks = tiles * blocks_m;
    // Thread t's share of the blocks among `team`: consecutive, as with schedule(static).
    const auto work = [&](int t, int team) {
        uint64_t *panel = panels.get() + t * panel_words;
        const int64_t per_thread = ceil_div(blocks, team);
        for (int64_t b = t * per_thread; b < std::min(blocks, (t + 1) * per_thread); ++b) {
            const int64_t tile = b / blocks_m, m0 = (b % blocks_m) * mc;
            const int64_t n0 = tile * kernel.tile_columns;
            const int64_t n1 = std::min(g.N, n0 + kernel.tile_columns);
            if (b == t * per_thread || b % blocks_m == 0) kernel.pack(g, n0, n1, panel);
            kernel.rows(g, n0, n1, m0, std::min(g.M, m0 + mc), panel, out);
        }
    };
    // One thread calls it directly: a team of one still cost futex calls, a tenth of a
    // 1.5 us GEMM.
    if (nt == 1) return work(0, 1);
#pragma omp parallel num_threads(nt)
    work(thread_index(), team_size());
}

// The lanes kernel runs bgemm_1x1 and bgemm_1x2 (one weight plane, one or two
// activation planes) on AVX-512 CPUs unless rows are longer than this many words per
// activation row. Measured on a Zen 4 (one thread, interleaved rounds of two builds):
// against the AVX2 table lookup it was 1.05-2.3x faster on every ResNet-20 and
// ResNet-18 bgemm_1x2 (benchmarks/kernel_ab.py) and 1.6-2.5x on bgemm_1x1; against the
// in-place tiles at N < 16 it won up to 18 words per column (1.0-1.2x there, more
// below) and lost from 24 on (0.93-0.96x at 72 words and 3 columns, 0.4-0.8x at 32-72
// words per column).
constexpr int64_t kLanesMaxWordsPerColumn = 20;

bool use_lanes(const PopcountGemm &g) {
    return g.Q == 1 && g.P <= 2 && g.W >= 1 && g.W <= kLanesMaxWordsPerColumn * g.N;
}

// Fewer activation rows than this run the in-place kernel on AVX-512 CPUs.
constexpr int64_t kInPlaceMaxColumns = 16;

void run_popcount_gemm(const PopcountGemm &g, int32_t *out) {
    if (g.M <= 0 || g.N <= 0) return;
    switch (active_isa()) {  // may throw: outside any thread team
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512:
            if (use_lanes(g)) return run_lanes(lanes_popcount_gemm_kernel_avx512(g), g, out);
            // The AVX2 table-lookup kernel on its packed panels beats the in-place
            // 512-bit VPOPCNTQ tiles on every ResNet-18 GEMM (bgemm_1x2 1.5-5.7x, 3.9x
            // over the seven; Zen 4, one thread, benchmarks/kernel_ab.py); below
            // kInPlaceMaxColumns activation rows the in-place tiles were faster (0.7-0.9x)
            // (docs/performance.md, "What made the packed networks faster").
            if (g.N < kInPlaceMaxColumns) return run_in_place(popcount_gemm_kernel_avx512(), g, out);
            return run_packed(packed_popcount_gemm_kernel_avx2(g), g, out);
        case Isa::avx2: return run_packed(packed_popcount_gemm_kernel_avx2(g), g, out);
#endif
        default: return run_in_place(popcount_gemm_kernel_scalar(), g, out);
    }
}

PopcountGemm gemm_of(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W,
                     int Q, int P, BitOp op, int64_t K) {
    PopcountGemm g;
    g.w = w;
    g.x = x;
    g.M = M;
    g.N = N;
    g.W = W;
    g.Q = Q;
    g.P = P;
    g.op = op;
    g.last_mask = last_word_mask(K);
    return g;
}

}  // namespace

void bgemm_1x1(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W,
               int64_t K, int32_t *out) {
    PopcountGemm g = gemm_of(w, x, M, N, W, 1, 1, BitOp::Xor, K);
    g.epilogue.constant = K;
    g.epilogue.scale = -2;
    run_popcount_gemm(g, out);
}

void bgemm_1x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int P,
               int64_t K, int32_t *out) {
    PopcountGemm g = gemm_of(w, x, M, N, W, 1, P, BitOp::And, K);
    g.epilogue.add_code_sums = true;
    g.epilogue.scale = -2;
    run_popcount_gemm(g, out);
}

void bgemm_2x2(const uint64_t *w, const uint64_t *x, int64_t M, int64_t N, int64_t W, int Q,
               int P, int64_t K, int32_t *out) {
    run_popcount_gemm(gemm_of(w, x, M, N, W, Q, P, BitOp::And, K), out);
}

}  // namespace apb
