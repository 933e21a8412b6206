// Sparse (CSR) x dense, accumulated in place:
//
//   out[m, :] += sum_{e = indptr[m]}^{indptr[m+1]-1} values[e] * x[indices[e], :]
//
// x float32 [K, N] and out float32 [M, N] row-major, so each nonzero is one AXPY over a
// contiguous row of x. The CSR arrays keep the narrow types a packed file stores:
// indptr uint8/uint16/int32/int64, indices uint8/uint16/int32, values float32 or
// float16 (converted exactly to float32). This is the S part of W = alpha*B + S.
#pragma once

#include <cstdint>
#include <cstring>

namespace apb {

enum class CsrIndex : int { u8, u16, i32, i64 };
enum class CsrValue : int { f32, f16 };

struct CsrMatrix {
    const void *indptr;   // [rows + 1]
    const void *indices;  // [nnz]
    const void *values;   // [nnz]
    CsrIndex indptr_type;
    CsrIndex index_type;  // never i64
    CsrValue value_type;
    int64_t rows;
    int64_t nnz;
};

// Throws std::invalid_argument unless index_type is not i64, indptr[0] == 0, indptr is
// non-decreasing, indptr[rows] == nnz, and 0 <= indices[e] < K for every e. Reads only
// the rows + 1 indptr entries and the nnz indices.
void spmm_csr_validate(const CsrMatrix &a, int64_t K);

// Validates (above), then adds a x to out (out is [a.rows, N], x is [K, N]). Dispatches
// to the active ISA and runs tiles of rows x columns in parallel.
void spmm_csr(const CsrMatrix &a, const float *x, int64_t K, int64_t N, float *out);

// Rows [m0, m1) and columns [c0, c1) of out, per ISA, on an already validated matrix.
struct SpmmTile {
    const CsrMatrix *a;
    const float *x;
    float *out;
    int64_t N;
    int64_t m0, m1, c0, c1;
};
void spmm_csr_tile_scalar(const SpmmTile &t);
void spmm_csr_tile_avx2(const SpmmTile &t);
void spmm_csr_tile_avx512(const SpmmTile &t);

// Shared by the per-ISA files; `static` so that each keeps its own copy (see
// pack_signs.h).
namespace spmm_detail {

// IEEE-754 binary16 -> binary32, exact for every input (subnormal halves become normal
// floats; inf and NaN keep their sign and payload). Integer operations only, so it is
// portable and independent of the floating-point environment.
static inline uint32_t half_to_float_bits(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return sign | 0x7f800000u | (mantissa << 13);
    if (exponent != 0) return sign | ((exponent + 112u) << 23) | (mantissa << 13);
    if (mantissa == 0) return sign;
    // Subnormal: mantissa * 2^-24. Shift the leading one up to bit 10 (the implicit bit).
    uint32_t e = 113;  // float exponent field of 2^-14, the half's smallest normal
    while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --e;
    }
    return sign | (e << 23) | ((mantissa & 0x3ffu) << 13);
}

template <typename T>
static inline int64_t load_index(const void *base, int64_t i) {
    return static_cast<int64_t>(static_cast<const T *>(base)[i]);
}

// Calls f(indptr_tag, index_tag, value_tag) with a value of each of the matrix's C++
// types (the value type is float, or uint16_t for float16 bits), so that every
// combination gets its own loop. Index type i64 is not one of them (see spmm_csr_validate).
template <typename F>
static void with_csr_types(const CsrMatrix &a, F &&f) {
    auto with_value = [&](auto indptr_tag, auto index_tag) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        if (a.value_type == CsrValue::f16) {
            f(P{}, I{}, uint16_t{});
        } else {
            f(P{}, I{}, float{});
        }
    };
    auto with_index = [&](auto indptr_tag) {
        switch (a.index_type) {
            case CsrIndex::u8: return with_value(indptr_tag, uint8_t{});
            case CsrIndex::u16: return with_value(indptr_tag, uint16_t{});
            default: return with_value(indptr_tag, int32_t{});
        }
    };
    switch (a.indptr_type) {
        case CsrIndex::u8: return with_index(uint8_t{});
        case CsrIndex::u16: return with_index(uint16_t{});
        case CsrIndex::i32: return with_index(int32_t{});
        default: return with_index(int64_t{});
    }
}

// Nonzeros are applied in batches: their values as float32 and the rows of x they
// scale, gathered once per output row, then swept across the tile's columns.
constexpr int64_t kBatch = 64;

struct NonzeroBatch {
    float values[kBatch];
    const float *rows[kBatch];
    int64_t count;
};

static inline void floats_to_floats(const float *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

static inline void halves_to_floats_portable(const uint16_t *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = half_to_float_bits(src[i]);
        std::memcpy(dst + i, &bits, sizeof bits);
    }
}

// Nonzeros [e, e + count) of the matrix into batch: values as float32 and, for each,
// the row of x it scales, row_of(column index). Batch is NonzeroBatch or a batch of the
// same shape over rows of another element type (sparse_conv2d's byte planes).
template <typename I, typename V, typename HalvesToFloats, typename RowOf, typename Batch>
static inline void fill_batch(const CsrMatrix &a, int64_t e, int64_t count,
                              HalvesToFloats &&halves_to_floats, RowOf &&row_of,
                              Batch &batch) {
    const V *values = static_cast<const V *>(a.values);
    batch.count = count;
    if constexpr (sizeof(V) == 2) {
        halves_to_floats(values + e, count, batch.values);
    } else {
        floats_to_floats(values + e, count, batch.values);
    }
    for (int64_t k = 0; k < count; ++k) batch.rows[k] = row_of(load_index<I>(a.indices, e + k));
}

// Walks the tile's rows, batch by batch: apply(batch, out_row) adds the batch to
// out_row[c0, c1). halves_to_floats(src, n, dst) converts float16 values (the ISA's
// fastest exact conversion).
template <typename HalvesToFloats, typename Apply>
static void for_each_batch(const SpmmTile &t, HalvesToFloats &&halves_to_floats,
                           Apply &&apply) {
    const CsrMatrix &a = *t.a;
    with_csr_types(a, [&](auto indptr_tag, auto index_tag, auto value_tag) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        using V = decltype(value_tag);
        const auto row_of = [&](int64_t column) { return t.x + column * t.N; };
        NonzeroBatch batch;
        for (int64_t m = t.m0; m < t.m1; ++m) {
            const int64_t e0 = load_index<P>(a.indptr, m);
            const int64_t e1 = load_index<P>(a.indptr, m + 1);
            for (int64_t e = e0; e < e1; e += kBatch) {
                fill_batch<I, V>(a, e, e1 - e < kBatch ? e1 - e : kBatch, halves_to_floats,
                                 row_of, batch);
                apply(batch, t.out + m * t.N);
            }
        }
    });
}

}  // namespace spmm_detail

// The inner loop of spmm_csr, per ISA, shared with sparse_conv2d: adds a batch of
// nonzeros to one output row, out[c0, c1) += sum_k values[k] * rows[k][c0, c1), one
// fused multiply-add per element and nonzero in batch order (bit-identical across ISAs).
void spmm_csr_sweep_scalar(const spmm_detail::NonzeroBatch &batch, float *out, int64_t c0,
                           int64_t c1);
void spmm_csr_sweep_avx2(const spmm_detail::NonzeroBatch &batch, float *out, int64_t c0,
                         int64_t c1);
void spmm_csr_sweep_avx512(const spmm_detail::NonzeroBatch &batch, float *out, int64_t c0,
                           int64_t c1);
// The same with out[c0, c1) overwritten, each chain starting from 0 (a first batch: no
// zeroing pass over out, no load of it).
void spmm_csr_sweep_fresh_scalar(const spmm_detail::NonzeroBatch &batch, float *out,
                                 int64_t c0, int64_t c1);
void spmm_csr_sweep_fresh_avx2(const spmm_detail::NonzeroBatch &batch, float *out, int64_t c0,
                               int64_t c1);
void spmm_csr_sweep_fresh_avx512(const spmm_detail::NonzeroBatch &batch, float *out,
                                 int64_t c0, int64_t c1);

// float16 bits -> float32, exactly, per ISA (F16C on AVX2, vcvtph2ps on AVX-512).
void spmm_csr_halves_to_floats_avx2(const uint16_t *src, int64_t n, float *dst);
void spmm_csr_halves_to_floats_avx512(const uint16_t *src, int64_t n, float *dst);

}  // namespace apb
