#include "cpu_features.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define APB_X86 1
#include <cpuid.h>
#endif

namespace apb {

namespace {

#if defined(APB_X86)
struct CpuidRegs {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
};

CpuidRegs cpuid(unsigned leaf, unsigned subleaf) {
    CpuidRegs r;
    __cpuid_count(leaf, subleaf, r.eax, r.ebx, r.ecx, r.edx);
    return r;
}

// XCR0 tells which register states the OS saves on a context switch; a CPU flag is
// useless if the OS does not preserve the registers it needs. Only called once
// CPUID reports OSXSAVE, so xgetbv is known to exist.
uint64_t read_xcr0() {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuFeatures detect() {
    CpuFeatures f;
    const unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf < 7) return f;
    const CpuidRegs l1 = cpuid(1, 0);
    const bool osxsave = (l1.ecx >> 27) & 1;
    const bool popcnt = (l1.ecx >> 23) & 1;
    const bool fma = (l1.ecx >> 12) & 1;
    const bool f16c = (l1.ecx >> 29) & 1;
    const bool avx = (l1.ecx >> 28) & 1;
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = read_xcr0();
    const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
    const bool os_zmm = (xcr0 & 0xe6) == 0xe6;          // + opmask, ZMM_Hi256, Hi16_ZMM
    const CpuidRegs l7 = cpuid(7, 0);
    const bool avx2 = (l7.ebx >> 5) & 1;
    const bool bmi2 = (l7.ebx >> 8) & 1;
    const bool avx512f = (l7.ebx >> 16) & 1;
    const bool avx512bw = (l7.ebx >> 30) & 1;
    const bool avx512vl = (l7.ebx >> 31) & 1;  // the AVX-512 files are built with -mavx512vl
    const bool avx512_vpopcntdq = (l7.ecx >> 14) & 1;
    f.avx2 = os_ymm && avx2 && fma && bmi2 && popcnt && f16c;
    f.avx512 = f.avx2 && os_zmm && avx512f && avx512bw && avx512vl && avx512_vpopcntdq;
    return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

// The build may lack an ISA's kernels (non-x86 targets); such an ISA is never
// available whatever the CPU says.
bool compiled_in(Isa isa) {
#if defined(APB_HAVE_X86_KERNELS)
    (void)isa;
    return true;
#else
    return isa == Isa::scalar;
#endif
}

std::string available_list() {
    std::string s;
    for (Isa isa : available_isas()) {
        if (!s.empty()) s += ", ";
        s += isa_name(isa);
    }
    return s;
}

void require_available(Isa isa, const char *what) {
    if (!isa_available(isa)) {
        throw std::runtime_error(std::string(what) + isa_name(isa) +
                                 "', but this CPU (or this build) does not support it; "
                                 "available ISAs: " + available_list());
    }
}

Isa initial_isa() {
    const char *env = std::getenv("APB_ISA");
    if (env != nullptr && env[0] != '\0') {
        Isa isa;
        try {
            isa = isa_from_name(env);
        } catch (const std::invalid_argument &) {
            throw std::invalid_argument(std::string("APB_ISA='") + env +
                                        "' is not an ISA; expected one of scalar, avx2, "
                                        "avx512 (or unset it to pick the best available)");
        }
        require_available(isa, "APB_ISA requests '");
        return isa;
    }
    const std::vector<Isa> all = available_isas();
    return all.back();
}

// -1: not resolved yet.
std::atomic<int> g_active{-1};
std::mutex g_init_mutex;

}  // namespace

const CpuFeatures &cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

const char *isa_name(Isa isa) {
    switch (isa) {
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
    }
    return "unknown";
}

Isa isa_from_name(const std::string &name) {
    if (name == "scalar") return Isa::scalar;
    if (name == "avx2") return Isa::avx2;
    if (name == "avx512") return Isa::avx512;
    throw std::invalid_argument("unknown ISA '" + name +
                                "'; expected one of scalar, avx2, avx512");
}

bool isa_available(Isa isa) {
    if (!compiled_in(isa)) return false;
    const CpuFeatures &f = cpu_features();
    switch (isa) {
        case Isa::scalar: return true;
        case Isa::avx2: return f.avx2;
        case Isa::avx512: return f.avx512;
    }
    return false;
}

std::vector<Isa> available_isas() {
    std::vector<Isa> out;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
        if (isa_available(isa)) out.push_back(isa);
    }
    return out;
}

Isa active_isa() {
    int v = g_active.load(std::memory_order_acquire);
    if (v >= 0) return static_cast<Isa>(v);
    std::lock_guard<std::mutex> lock(g_init_mutex);
    v = g_active.load(std::memory_order_acquire);
    if (v < 0) {
        // Throws (and leaves the state unresolved) for a bad APB_ISA, so every
        // kernel call reports the same error instead of silently falling back.
        v = static_cast<int>(initial_isa());
        g_active.store(v, std::memory_order_release);
    }
    return static_cast<Isa>(v);
}

void set_active_isa(Isa isa) {
    require_available(isa, "set_isa requests '");
    std::lock_guard<std::mutex> lock(g_init_mutex);
    g_active.store(static_cast<int>(isa), std::memory_order_release);
}

}  // namespace apb
