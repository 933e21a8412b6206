// Portable linear_1xf, the plain reference: int8 codes per token, D[n, m] summed one
// column at a time from the panel's nibbles, the epilogue in the documented order.
// Compiled without ISA flags.
#include <chrono>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "linear_1xf.h"

namespace apb {

using namespace linear_1xf_layout;
using linear_1xf_detail::token_scale;
using spmm_detail::half_to_float_bits;
using spmm_detail::load_index;
using spmm_detail::with_csr_types;

namespace {

// The scalar "tables" are the codes themselves, int8 [4 Q] per token (zero past K); with
// int8 tables, the rounded table values, int8 [Q][16] per token.
int64_t code_stride(int64_t Q) { return kGroup * Q; }
int64_t table8_stride(int64_t Q) { return 16 * Q; }

// The token's codes into codes[0, 4 Q) (zero past K); its scale.
float quantize(const float *x, int64_t K, int64_t Q, int8_t *codes) {
    float amax = 0.0f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
        const float v = std::fabs(x[k]);
        if (!(v <= 3.40282347e38f)) finite = false;
        if (v > amax) amax = v;
    }
    const auto s = token_scale(amax, finite);
    std::memset(codes, 0, static_cast<size_t>(kGroup * Q));
    if (!s.zero_codes) {
        for (int64_t k = 0; k < K; ++k) {
            float c = std::nearbyint(x[k] * s.inverse);
            c = c > 127.0f ? 127.0f : (c < -127.0f ? -127.0f : c);
            codes[k] = static_cast<int8_t>(c);
        }
    }
    return s.scale;
}

// Table entry i of the group whose codes are a[0..3]: sum_c (bit c of i ? -a_c : a_c).
int32_t entry(const int8_t *a, int i) {
    int32_t t = 0;
    for (int c = 0; c < kGroup; ++c) t += (i >> c) & 1 ? -a[c] : a[c];
    return t;
}

void prepare(const Linear1xfPrep &p, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
        int8_t *codes = reinterpret_cast<int8_t *>(p.tables + n * p.table_stride);
        p.scales[n] = quantize(p.x + n * p.K, p.K, p.Q, codes);
    }
}

void prepare8(const Linear1xfPrep &p, int64_t n0, int64_t n1) {
    std::vector<int8_t> codes(static_cast<size_t>(kGroup * p.Q));
    for (int64_t n = n0; n < n1; ++n) {
        const float s = quantize(p.x + n * p.K, p.K, p.Q, codes.data());
        int32_t tmax = 0;
        for (int64_t q = 0; q < p.Q; ++q) {
            int32_t sum = 0;
            for (int c = 0; c < kGroup; ++c) sum += std::abs(static_cast<int32_t>(codes[kGroup * q + c]));
            tmax = sum > tmax ? sum : tmax;
        }
        const auto ts = linear_1xf_detail::table_scale(tmax);
        p.scales[n] = s * ts.scale;
        int8_t *tables = reinterpret_cast<int8_t *>(p.tables + n * p.table_stride);
        for (int64_t q = 0; q < p.Q; ++q) {
            for (int i = 0; i < 16; ++i) {
                const float v = static_cast<float>(entry(codes.data() + kGroup * q, i)) * ts.inverse;
                tables[16 * q + i] = static_cast<int8_t>(std::nearbyint(v));
            }
        }
    }
}

inline float value_of(float v) { return v; }
inline float value_of(uint16_t h) {
    const uint32_t bits = half_to_float_bits(h);
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// D[n, m] for row r of the tile: sum over columns of sign * code.
int32_t dot(const uint8_t *tile, int64_t Q, Slot slot, const int8_t *codes) {
    int32_t d = 0;
    for (int64_t q = 0; q < Q; ++q) {
        const uint8_t byte = tile[q * kTileBytes + slot.byte];
        const int nibble = slot.high ? byte >> 4 : byte & 0xf;
        for (int c = 0; c < kGroup; ++c) {
            const int32_t a = codes[kGroup * q + c];
            d += (nibble >> c) & 1 ? -a : a;
        }
    }
    return d;
}

// The same with int8 tables: the sum of the looked-up rounded entries.
int32_t dot8(const uint8_t *tile, int64_t Q, Slot slot, const int8_t *tables) {
    int32_t d = 0;
    for (int64_t q = 0; q < Q; ++q) {
        const uint8_t byte = tile[q * kTileBytes + slot.byte];
        d += tables[16 * q + (slot.high ? byte >> 4 : byte & 0xf)];
    }
    return d;
}

template <bool kInt8Tables>
void block(const Linear1xfBlock &b) {
    const Linear1xf &L = *b.layer;
    const Linear1xfPrep &p = *b.prep;
    const auto run = [&](auto sparse_row) {
        for (int64_t m = b.m0; m < b.m1; ++m) {
            const uint8_t *tile = L.panel + (m / kTileRows) * p.Q * kTileBytes;
            const Slot slot = panel_slot(static_cast<int>(m % kTileRows));
            const float alpha = L.alpha[L.alpha_len == 1 ? 0 : m];
            for (int64_t n = b.n0; n < b.n1; ++n) {
                const int8_t *t = reinterpret_cast<const int8_t *>(p.tables + n * p.table_stride);
                const int32_t d = kInt8Tables ? dot8(tile, p.Q, slot, t) : dot(tile, p.Q, slot, t);
                float y = static_cast<float>(d) * (alpha * p.scales[n]);
                y = y + sparse_row(m, p.x + n * p.K);
                if (L.bias != nullptr) y = y + L.bias[m];
                b.out[n * L.M + m] = y;
            }
        }
    };
    if (L.sparse == nullptr || L.sparse->nnz == 0) {
        run([](int64_t, const float *) { return 0.0f; });
        return;
    }
    const CsrMatrix &a = *L.sparse;
    with_csr_types(a, [&](auto indptr_tag, auto index_tag, auto value_tag) {
        using P = decltype(indptr_tag);
        using I = decltype(index_tag);
        using V = decltype(value_tag);
        const V *values = static_cast<const V *>(a.values);
        run([&](int64_t m, const float *x) {
            float s = 0.0f;
            const int64_t e1 = load_index<P>(a.indptr, m + 1);
            for (int64_t e = load_index<P>(a.indptr, m); e < e1; ++e) {
                s = std::fma(value_of(values[e]), x[load_index<I>(a.indices, e)], s);
            }
            return s;
        });
    });
}

double lookup_rate(int trials) {
    constexpr int64_t Q = 64;
    std::vector<uint8_t> tile(Q * kTileBytes);
    std::vector<int8_t> codes(kGroup * Q);
    for (size_t i = 0; i < tile.size(); ++i) tile[i] = static_cast<uint8_t>(i * 37 + 11);
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<int8_t>(i * 13 - 50);
    double best = 0.0;
    volatile int32_t sink = 0;
    for (int t = 0; t < trials; ++t) {
        const auto t0 = std::chrono::steady_clock::now();
        int32_t acc = 0;
        for (int rep = 0; rep < 8; ++rep) {
            for (int r = 0; r < kTileRows; ++r) acc += dot(tile.data(), Q, panel_slot(r), codes.data());
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        sink = sink + acc;
        const double rate = 8.0 * kTileRows * Q / s / 1e9;
        if (rate > best) best = rate;
    }
    return best;
}

}  // namespace

Linear1xfKernels linear_1xf_kernels_scalar(int table_bits) {
    // One block of all tokens (the scalar sparse part reads x directly).
    if (table_bits == 8) {
        return Linear1xfKernels{&table8_stride, &prepare8, &block<true>, nullptr, INT64_MAX,
                                INT64_MAX, INT64_MAX, &lookup_rate, "scalar"};
    }
    return Linear1xfKernels{&code_stride, &prepare, &block<false>, nullptr, INT64_MAX, INT64_MAX,
                            INT64_MAX, &lookup_rate, "scalar"};
}

}  // namespace apb
