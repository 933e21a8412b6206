// Validation, dispatch and threading for spmm_csr; compiled without ISA flags.
#include "spmm_csr.h"

#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "threads.h"

namespace apb {

namespace {

using spmm_detail::load_index;
using spmm_detail::with_csr_types;

using TileFn = void (*)(const SpmmTile &);

TileFn tile_fn_for(Isa isa) {
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return spmm_csr_tile_avx512;
        case Isa::avx2: return spmm_csr_tile_avx2;
#endif
        default: return spmm_csr_tile_scalar;
    }
}

// A tile is kTileRows output rows x kTileColumns columns: enough rows to share the
// columns of x they read, narrow enough that N = B*OH*OW splits over threads.
constexpr int64_t kTileRows = 32;
constexpr int64_t kTileColumns = 256;

}  // namespace

void spmm_csr_validate(const CsrMatrix &a, int64_t K) {
    if (a.rows < 0 || a.nnz < 0) {
        throw std::invalid_argument("spmm_csr: negative row or nonzero count");
    }
    if (a.index_type == CsrIndex::i64) {
        throw std::invalid_argument("spmm_csr: indices must be uint8, uint16 or int32");
    }
    with_csr_types(a, [&](auto indptr_tag, auto index_tag, auto) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        const P *indptr = static_cast<const P *>(a.indptr);
        const I *indices = static_cast<const I *>(a.indices);
        if (indptr[0] != 0) {
            throw std::invalid_argument("spmm_csr: indptr[0] must be 0, got " +
                                        std::to_string(static_cast<int64_t>(indptr[0])));
        }
        // Every call checks the whole structure (a packed layer's forward included), so the
        // common, valid case is branch-free reductions the compiler vectorizes; only a
        // failure walks the arrays again to name the first bad entry.
        bool decreasing = false;
        for (int64_t m = 1; m <= a.rows; ++m) decreasing |= indptr[m] < indptr[m - 1];
        if (decreasing) {
            for (int64_t m = 1; m <= a.rows; ++m) {
                if (indptr[m] < indptr[m - 1]) {
                    throw std::invalid_argument(
                        "spmm_csr: indptr must be non-decreasing, but indptr[" +
                        std::to_string(m) + "]=" + std::to_string(static_cast<int64_t>(indptr[m])) +
                        " < indptr[" + std::to_string(m - 1) + "]=" +
                        std::to_string(static_cast<int64_t>(indptr[m - 1])));
                }
            }
        }
        const int64_t last = static_cast<int64_t>(indptr[a.rows]);
        if (last != a.nnz) {
            throw std::invalid_argument("spmm_csr: indptr[-1]=" + std::to_string(last) +
                                        " must equal the number of nonzeros, len(indices)=" +
                                        std::to_string(a.nnz));
        }
        I largest = 0, smallest = 0;
        for (int64_t e = 0; e < a.nnz; ++e) {
            largest = indices[e] > largest ? indices[e] : largest;
            smallest = indices[e] < smallest ? indices[e] : smallest;
        }
        if (smallest < 0 || static_cast<int64_t>(largest) >= K) {
            for (int64_t e = 0; e < a.nnz; ++e) {
                const int64_t index = load_index<I>(a.indices, e);
                if (index < 0 || index >= K) {
                    throw std::invalid_argument(
                        "spmm_csr: indices[" + std::to_string(e) + "]=" + std::to_string(index) +
                        " is out of range for x with K=" + std::to_string(K) +
                        " rows (expected 0 <= index < K)");
                }
            }
        }
    });
}

void spmm_csr(const CsrMatrix &a, const float *x, int64_t K, int64_t N, float *out) {
    spmm_csr_validate(a, K);
    if (a.rows == 0 || N == 0 || a.nnz == 0) return;
    const TileFn run_tile = tile_fn_for(active_isa());  // may throw: outside the team
    const int64_t row_tiles = (a.rows + kTileRows - 1) / kTileRows;
    const int64_t column_tiles = (N + kTileColumns - 1) / kTileColumns;
    const int nt = threads_for(a.nnz * N);
    parallel_for_dynamic(nt, row_tiles * column_tiles, [&](int64_t i) {
        const int64_t m0 = (i / column_tiles) * kTileRows;
        const int64_t c0 = (i % column_tiles) * kTileColumns;
        const SpmmTile t{&a, x, out, N, m0, m0 + kTileRows < a.rows ? m0 + kTileRows : a.rows,
                         c0, c0 + kTileColumns < N ? c0 + kTileColumns : N};
        run_tile(t);
    });
}

}  // namespace apb
