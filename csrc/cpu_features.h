// Run-time instruction-set selection for apb's kernels.
//
// Every kernel family has one implementation per instruction set, each in its own
// translation unit compiled with that ISA's flags. Which one runs is decided here,
// once, from what the CPU (and the OS, for the ymm/zmm register state) reports; the
// APB_ISA environment variable or set_isa() may pick a lower one. Nothing depends on
// the flags of the machine that built the module.
#pragma once

#include <string>
#include <vector>

namespace apb {

// Ordered from least to most capable.
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

struct CpuFeatures {
    // AVX2 + FMA + BMI2 + POPCNT + F16C, with the OS saving ymm state.
    bool avx2 = false;
    // AVX-512 F + BW + VL + VPOPCNTDQ, with the OS saving zmm/opmask state.
    bool avx512 = false;
};

// What this CPU supports (detected once, cached).
const CpuFeatures &cpu_features();

const char *isa_name(Isa isa);

// Throws std::invalid_argument for a name that is not scalar|avx2|avx512.
Isa isa_from_name(const std::string &name);

bool isa_available(Isa isa);

// Every ISA this CPU can run, scalar first.
std::vector<Isa> available_isas();

// The ISA the kernels dispatch to. On first use it is read from APB_ISA if set,
// otherwise the best available one. Throws std::runtime_error when APB_ISA names an
// ISA this CPU lacks, and std::invalid_argument when it names no ISA at all.
Isa active_isa();

// Select the ISA for all later kernel calls; throws std::runtime_error if this CPU
// lacks it.
void set_active_isa(Isa isa);

}  // namespace apb
