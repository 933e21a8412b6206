// Binding of the popcount roofline microbenchmarks.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <tuple>
#include <vector>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "roofline.h"

namespace nb = nanobind;

void apb::bind::bind_roofline(nb::module_ &m) {
    m.def(
        "roofline_methods",
        [] {
            std::vector<std::string> names;
            for (apb::RooflineMethod method : apb::roofline_methods(apb::active_isa())) {
                names.emplace_back(apb::roofline_method_name(method));
            }
            return names;
        },
        "Names of the roofline loops the active ISA runs.");
    m.def(
        "xor_popcount_roofline",
        [](int64_t words, int64_t repeats, const std::string &method) {
            const apb::RooflineMethod which = apb::roofline_method_from_name(method);
            apb::RooflineResult r;
            {
                nb::gil_scoped_release release;
                r = apb::xor_popcount_roofline(words, repeats, which);
            }
            return std::make_tuple(r.seconds, r.bit_ops, r.checksum);
        },
        nb::arg("words"), nb::arg("repeats"), nb::arg("method"),
        "Time `repeats` passes of roofline loop `method` (see roofline_methods) over two "
        "L1-resident operands of `words` uint64 each (a positive multiple of 32) with the "
        "active ISA on the calling thread: (seconds, bit_ops, checksum). A pass of a 1-D "
        "method counts popcount(a XOR b) over the words; `tiled` counts the first 252 bits of "
        "all pairs of rows of 4 words, rows 0..15 of a against rows 0..255 of b (words >= "
        "1024).");
    m.def(
        "roofline_operands",
        [](int64_t words) {
            if (words < 0) throw std::invalid_argument("roofline_operands: words must be >= 0");
            std::vector<uint64_t> a, b;
            apb::roofline_operands(words, a, b);
            auto out = apb::bind::new_array<uint64_t>({2, static_cast<size_t>(words)});
            std::copy(a.begin(), a.end(), out.data());
            std::copy(b.begin(), b.end(), out.data() + words);
            return out;
        },
        nb::arg("words"),
        "The two operands xor_popcount_roofline runs on, as uint64 [2, words].");
}
