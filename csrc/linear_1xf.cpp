// Panel packing, dispatch and threading of linear_1xf; compiled without ISA flags.
#include "linear_1xf.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "threads.h"
#include "workspace.h"

namespace apb {

using namespace linear_1xf_layout;

namespace {

Linear1xfKernels kernels_for(Isa isa, int table_bits) {
    if (table_bits != 16 && table_bits != 8) {
        throw std::invalid_argument("linear_1xf: table_bits must be 16 or 8, got " +
                                    std::to_string(table_bits));
    }
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return linear_1xf_kernels_avx512(table_bits);
        case Isa::avx2: return linear_1xf_kernels_avx2(table_bits);
#endif
        default: return linear_1xf_kernels_scalar(table_bits);
    }
}

// p rounded up to a multiple of 64 bytes (the workspace has 64 bytes to spare).
template <typename T>
T *aligned64(T *p) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63};
    return reinterpret_cast<T *>(a);
}

struct ScalesTag {};
struct TablesTag {};
struct TransposeTag {};

}  // namespace

void linear_1xf_pack(const uint64_t *w, int64_t M, int64_t K, uint8_t *panel) {
    const int64_t T = tiles(M), Q = groups(K), words = (K + 63) / 64;
    if (T == 0 || Q == 0) return;
    Slot slots[kTileRows];
    for (int r = 0; r < kTileRows; ++r) slots[r] = panel_slot(r);
    const int nt = threads_for(M * K / 8);
    parallel_for(nt, T, [&](int64_t t) {
        uint8_t *tile = panel + t * Q * kTileBytes;
        std::memset(tile, 0, static_cast<size_t>(Q * kTileBytes));
        for (int r = 0; r < kTileRows && t * kTileRows + r < M; ++r) {
            const uint64_t *row = w + (t * kTileRows + r) * words;
            for (int64_t q = 0; q < Q; ++q) {
                const int64_t col = kGroup * q;  // a multiple of 4: never straddles a word
                uint64_t nibble = (row[col / 64] >> (col % 64)) & 0xfu;
                if (K - col < kGroup) nibble &= (uint64_t{1} << (K - col)) - 1;
                uint8_t &byte = tile[q * kTileBytes + slots[r].byte];
                byte = static_cast<uint8_t>(byte | (slots[r].high ? nibble << 4 : nibble));
            }
        }
    });
}

namespace {

// Whether every index of nonzeros [e0, e1) is < K (one vectorizable max; indices as
// unsigned values, so a negative int32 fails too).
template <typename I>
bool indices_below(const void *indices, int64_t e0, int64_t e1, int64_t K) {
    using U = std::make_unsigned_t<I>;
    if (sizeof(I) < 4 && K > static_cast<int64_t>(std::numeric_limits<U>::max())) return true;
    const U *p = static_cast<const U *>(indices);
    U largest = 0;
    for (int64_t e = e0; e < e1; ++e) largest = p[e] > largest ? p[e] : largest;
    return e0 >= e1 || static_cast<int64_t>(largest) < K;
}

bool indices_below(const CsrMatrix &a, int64_t e0, int64_t e1, int64_t K) {
    switch (a.index_type) {
        case CsrIndex::u8: return indices_below<uint8_t>(a.indices, e0, e1, K);
        case CsrIndex::u16: return indices_below<uint16_t>(a.indices, e0, e1, K);
        default: return indices_below<int32_t>(a.indices, e0, e1, K);
    }
}

int64_t row_start(const CsrMatrix &a, int64_t m) {
    switch (a.indptr_type) {
        case CsrIndex::u8: return static_cast<const uint8_t *>(a.indptr)[m];
        case CsrIndex::u16: return static_cast<const uint16_t *>(a.indptr)[m];
        case CsrIndex::i32: return static_cast<const int32_t *>(a.indptr)[m];
        default: return static_cast<const int64_t *>(a.indptr)[m];
    }
}

// The structure of indptr (what makes every row's range of nonzeros lie inside
// [0, nnz)); the indices are checked separately.
template <typename P>
void validate_indptr_of(const CsrMatrix &a) {
    const P *indptr = static_cast<const P *>(a.indptr);
    const auto at = [&](int64_t m) { return static_cast<int64_t>(indptr[m]); };
    if (at(0) != 0) {
        throw std::invalid_argument("linear_1xf: indptr[0] must be 0, got " + std::to_string(at(0)));
    }
    bool ordered = true;
    for (int64_t m = 0; m < a.rows; ++m) ordered &= indptr[m] <= indptr[m + 1];
    for (int64_t m = 0; !ordered && m < a.rows; ++m) {
        if (at(m) > at(m + 1)) {
            throw std::invalid_argument(
                "linear_1xf: indptr must be non-decreasing, but indptr[" + std::to_string(m + 1) +
                "]=" + std::to_string(at(m + 1)) + " < indptr[" + std::to_string(m) + "]=" +
                std::to_string(at(m)));
        }
    }
    if (at(a.rows) != a.nnz) {
        throw std::invalid_argument("linear_1xf: indptr[-1]=" + std::to_string(at(a.rows)) +
                                    " must equal the number of nonzeros, len(indices)=" +
                                    std::to_string(a.nnz));
    }
}

void validate_indptr(const CsrMatrix &a) {
    if (a.rows < 0 || a.nnz < 0) throw std::invalid_argument("linear_1xf: negative row or nonzero count");
    if (a.index_type == CsrIndex::i64) {
        throw std::invalid_argument("linear_1xf: indices must be uint8, uint16 or int32");
    }
    switch (a.indptr_type) {
        case CsrIndex::u8: return validate_indptr_of<uint8_t>(a);
        case CsrIndex::u16: return validate_indptr_of<uint16_t>(a);
        case CsrIndex::i32: return validate_indptr_of<int32_t>(a);
        default: return validate_indptr_of<int64_t>(a);
    }
}

}  // namespace

void linear_1xf_validate(const CsrMatrix &a, int64_t K) {
    validate_indptr(a);
    if (indices_below(a, 0, a.nnz, K)) return;
    spmm_detail::with_csr_types(a, [&](auto, auto index_tag, auto) {
        using I = decltype(index_tag);
        for (int64_t e = 0; e < a.nnz; ++e) {
            const int64_t index = static_cast<int64_t>(static_cast<const I *>(a.indices)[e]);
            if (index < 0 || index >= K) {
                throw std::invalid_argument(
                    "linear_1xf: indices[" + std::to_string(e) + "]=" + std::to_string(index) +
                    " is out of range for K=" + std::to_string(K) +
                    " inputs (expected 0 <= index < K)");
            }
        }
    });
}

void linear_1xf(const Linear1xf &layer, const float *x, int64_t N, float *out) {
    const int64_t M = layer.M, K = layer.K;
    if (layer.sparse != nullptr) {
        if (layer.sparse->rows != M) {
            throw std::invalid_argument("linear_1xf: the sparse part has " +
                                        std::to_string(layer.sparse->rows) +
                                        " rows, the layer M=" + std::to_string(M));
        }
        // The indices are checked by each block just before it reads them (the same
        // cache lines, where a separate pass would stream them once more).
        validate_indptr(*layer.sparse);
    }
    if (layer.alpha_len != 1 && layer.alpha_len != M) {
        throw std::invalid_argument("linear_1xf: alpha must hold 1 or M values");
    }
    if (M <= 0 || N <= 0) return;
    const Linear1xfKernels kern = kernels_for(active_isa(), layer.table_bits);  // may throw
    const int64_t Q = groups(K), T = tiles(M);
    const int64_t stride = kern.table_stride(Q);
    const bool sparse = layer.sparse != nullptr && layer.sparse->nnz > 0;
    const bool use_xt = sparse && N > kern.small_n && kern.transpose != nullptr;
    const int64_t per_block = N <= kern.small_n                   ? N
                              : N <= kern.small_tokens_per_block ? kern.small_tokens_per_block
                                                                 : kern.tokens_per_block;
    const int64_t n_blocks = (N + per_block - 1) / per_block;

    // Workspaces of the calling thread, shared read-only by the team once filled.
    float *scales = thread_workspace<ScalesTag, float>(static_cast<size_t>(N));
    uint8_t *tables = aligned64(thread_workspace<TablesTag, uint8_t>(
        static_cast<size_t>(N * stride + 64)));
    float *xt = use_xt ? aligned64(thread_workspace<TransposeTag, float>(
                             static_cast<size_t>(n_blocks * K * per_block + 16)))
                       : nullptr;
    const Linear1xfPrep prep{x, N, K, Q, scales, tables, stride};

    const int64_t row_blocks = (M + kBlockRows - 1) / kBlockRows;
    const int64_t items = row_blocks * n_blocks;
    // Work in lookups (64 rows x one group x one token each), plus the preparation.
    const int64_t work = T * n_blocks * per_block * Q * 8 + N * K;
    const int nt = threads_for(work);
    constexpr int64_t kTransposeColumns = 256;
    std::atomic<bool> bad_indices{false};
    const int64_t k_chunks = (K + kTransposeColumns - 1) / kTransposeColumns;
    // Worksharing loops: run_team gives them a team of their own (threads.h).
    const auto run = [&] {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) kern.prepare(prep, n, n + 1);
        if (use_xt) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n_blocks * k_chunks; ++i) {
                const int64_t nb = i / k_chunks, k0 = (i % k_chunks) * kTransposeColumns;
                kern.transpose(x, N, K, nb * per_block, per_block, xt + nb * K * per_block, k0,
                               k0 + kTransposeColumns < K ? k0 + kTransposeColumns : K);
            }
        }
        // Token blocks outer: a thread's consecutive items share the block's tables (and
        // transposed x), which stay in its L2 while the weight tiles stream past.
#pragma omp for schedule(static)
        for (int64_t i = 0; i < items; ++i) {
            const int64_t nb = i / row_blocks, r = i % row_blocks;
            const int64_t m0 = r * kBlockRows, n0 = nb * per_block;
            const int64_t m1 = m0 + kBlockRows < M ? m0 + kBlockRows : M;
            if (sparse && !indices_below(*layer.sparse, row_start(*layer.sparse, m0),
                                         row_start(*layer.sparse, m1), K)) {
                bad_indices.store(true, std::memory_order_relaxed);
                continue;
            }
            const Linear1xfBlock b{&layer, &prep, use_xt ? xt + nb * K * per_block : nullptr,
                                   per_block, out, m0, m1, n0,
                                   n0 + per_block < N ? n0 + per_block : N};
            kern.block(b);
        }
    };
    run_team(nt, run);
    if (bad_indices.load()) linear_1xf_validate(*layer.sparse, K);  // throws, with the first one
}

const char *linear_1xf_kernel_name(int table_bits) {
    return kernels_for(active_isa(), table_bits).name;
}

double linear_1xf_lookup_rate(int trials, int table_bits) {
    if (trials < 1) throw std::invalid_argument("linear_1xf_lookup_rate: trials must be >= 1");
    return kernels_for(active_isa(), table_bits).lookup_rate(trials);
}

}  // namespace apb
