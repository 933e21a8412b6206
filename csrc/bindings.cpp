// The apb._C extension module: the run-time controls here, each kernel family's
// bindings in its own bind_<family>.cpp (declared in bind.h).
//
// The Python wrappers in apb.kernels check arguments first with friendlier messages;
// the checks in the binding files keep the module safe when called directly.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "bind.h"
#include "cpu_features.h"
#include "result_pool.h"
#include "threads.h"

namespace nb = nanobind;

namespace {

std::vector<std::string> available_isa_names() {
    std::vector<std::string> names;
    for (apb::Isa isa : apb::available_isas()) names.emplace_back(apb::isa_name(isa));
    return names;
}

}  // namespace

NB_MODULE(_C, m) {
    m.doc() = "apb's compiled CPU kernels (bit packing, bitwise GEMM), dispatched at run "
              "time to the best instruction set the CPU has.";

    apb::bind::bind_pack_signs(m);
    apb::bind::bind_roofline(m);
    apb::bind::bind_bgemm(m);
    apb::bind::bind_bgemm_1xf(m);
    apb::bind::bind_linear_1xf(m);
    apb::bind::bind_spmm_csr(m);
    apb::bind::bind_pack_activations(m);
    apb::bind::bind_sparse_conv2d(m);
    apb::bind::bind_xor_gate(m);
    apb::bind::bind_max_pool2d(m);
    apb::bind::bind_dense(m);

    m.def("active_isa", []() { return std::string(apb::isa_name(apb::active_isa())); },
          "Instruction set the kernels run with: 'scalar', 'avx2' or 'avx512'.");
    m.def("available_isas", &available_isa_names,
          "Instruction sets this CPU and this build support, 'scalar' first.");
    m.def(
        "set_isa",
        [](const std::string &name) { apb::set_active_isa(apb::isa_from_name(name)); },
        nb::arg("name"),
        "Run the kernels with this instruction set from now on (process-wide).");

    m.def(
        "result_pool_stats",
        []() {
            const apb::ResultPoolStats s = apb::result_pool_stats();
            nb::dict d;
            d["kept_bytes"] = s.kept_bytes;
            d["kept_blocks"] = s.kept_blocks;
            d["reused"] = s.reused;
            d["allocated"] = s.allocated;
            return d;
        },
        "The result pool's counters: bytes and blocks kept for reuse, acquisitions served "
        "from kept blocks and large ones that were not.");
    m.def("empty_result_pool", &apb::empty_result_pool,
          "Free every block the result pool keeps; the bytes freed.");
    m.attr("result_pool_min_bytes") = apb::kPooledBytes;
    m.attr("result_pool_max_bytes") = apb::kMaxKeptBytes;

    m.def("set_num_threads", &apb::set_num_threads, nb::arg("n"),
          "Threads the kernels may use (process-wide, n >= 1).");
    m.def("get_num_threads", &apb::get_num_threads,
          "Threads the kernels may use; 1 when built without OpenMP.");
#if defined(_OPENMP)
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
}
