// Dispatch of the popcount roofline and its scalar loop; compiled without ISA flags.
#include "roofline.h"

#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "popcount.h"

namespace apb {

namespace {

constexpr const char *kMethodNames[] = {"popcnt", "lookup", "harley_seal", "tiled", "vpopcntq"};

}  // namespace

std::vector<RooflineMethod> roofline_methods(Isa isa) {
    switch (isa) {
        case Isa::avx512: return {RooflineMethod::vpopcntq};
        case Isa::avx2:
            return {RooflineMethod::lookup, RooflineMethod::harley_seal, RooflineMethod::tiled};
        default: return {RooflineMethod::popcnt};
    }
}

const char *roofline_method_name(RooflineMethod method) {
    return kMethodNames[static_cast<int>(method)];
}

RooflineMethod roofline_method_from_name(const std::string &name) {
    for (int i = 0; i < static_cast<int>(std::size(kMethodNames)); ++i) {
        if (name == kMethodNames[i]) return static_cast<RooflineMethod>(i);
    }
    throw std::invalid_argument("unknown roofline method '" + name +
                                "'; expected popcnt, lookup, harley_seal, tiled or vpopcntq");
}

void roofline_operands(int64_t words, std::vector<uint64_t> &a, std::vector<uint64_t> &b) {
    a.assign(static_cast<size_t>(words), 0);
    b.assign(static_cast<size_t>(words), 0);
    uint64_t state = 0x9e3779b97f4a7c15ull;  // any fixed bit pattern will do
    for (int64_t i = 0; i < words; ++i) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        a[i] = state;
        b[i] = state * 0xff51afd7ed558ccdull;
    }
}

RooflineResult roofline_scalar(RooflineMethod method, const uint64_t *a, const uint64_t *b,
                               int64_t words, int64_t repeats) {
    if (method != RooflineMethod::popcnt) {
        throw std::invalid_argument(std::string("roofline method ") +
                                    roofline_method_name(method) + " needs another ISA than scalar");
    }
    return time_passes(repeats, 64.0 * static_cast<double>(words), [&] {
        uint64_t total = 0;
        for (int64_t i = 0; i < words; ++i) total += popcount64(a[i] ^ b[i]);
        return total;
    });
}

RooflineResult xor_popcount_roofline(int64_t words, int64_t repeats, RooflineMethod method) {
    if (words <= 0 || words % 32 != 0) {
        throw std::invalid_argument("xor_popcount_roofline: words must be a positive multiple "
                                    "of 32, got " + std::to_string(words));
    }
    if (repeats <= 0) {
        throw std::invalid_argument("xor_popcount_roofline: repeats must be positive, got " +
                                    std::to_string(repeats));
    }
    const Isa isa = active_isa();
    bool known = false;
    for (RooflineMethod m : roofline_methods(isa)) known = known || m == method;
    if (!known) {
        throw std::invalid_argument(std::string("xor_popcount_roofline: the ") + isa_name(isa) +
                                    " kernels have no method " + roofline_method_name(method));
    }
    std::vector<uint64_t> a, b;
    roofline_operands(words, a, b);
    switch (isa) {
#if defined(APB_HAVE_X86_KERNELS)
        case Isa::avx512: return roofline_avx512(method, a.data(), b.data(), words, repeats);
        case Isa::avx2: return roofline_avx2(method, a.data(), b.data(), words, repeats);
#endif
        default: return roofline_scalar(method, a.data(), b.data(), words, repeats);
    }
}

}  // namespace apb
