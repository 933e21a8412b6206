// Binding of the popcount roofline microbenchmark.
#include <nanobind/nanobind.h>
#include <nanobind/stl/tuple.h>

#include <tuple>

#include "bind.h"
#include "roofline.h"

namespace nb = nanobind;

void apb::bind::bind_roofline(nb::module_ &m) {
    m.def(
        "xor_popcount_roofline",
        [](int64_t words, int64_t repeats) {
            apb::RooflineResult r;
            {
                nb::gil_scoped_release release;
                r = apb::xor_popcount_roofline(words, repeats);
            }
            return std::make_tuple(r.seconds, r.bit_ops, r.checksum);
        },
        nb::arg("words"), nb::arg("repeats"),
        "Time `repeats` passes of popcount(a XOR b) over two L1-resident operands of "
        "`words` uint64 each (a positive multiple of 32) with the active ISA on the calling "
        "thread: (seconds, bit_ops, checksum).");
}
