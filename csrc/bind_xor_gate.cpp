// Bindings of the XOR-gate encoder and decoder.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>

#include <string>
#include <tuple>

#include "bind.h"
#include "bind_util.h"
#include "cpu_features.h"
#include "xor_gate.h"

namespace nb = nanobind;
using namespace apb::bind;

namespace {

using Bytes = nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>;

// A zeroed numpy byte array that owns its memory.
Bytes new_bytes(int64_t n) {
    uint8_t *buf = new uint8_t[n > 0 ? static_cast<size_t>(n) : 1]();
    nb::capsule owner(buf, [](void *p) noexcept { delete[] static_cast<uint8_t *>(p); });
    return Bytes(buf, {static_cast<size_t>(n)}, owner);
}

void check_length(const AnyArray &a, const char *fn, const char *arg, int64_t expected) {
    if (static_cast<int64_t>(a.shape(0)) != expected) {
        throw std::invalid_argument(std::string(fn) + ": " + arg + " has " +
                                    std::to_string(a.shape(0)) + " entries, expected " +
                                    std::to_string(expected));
    }
}

std::tuple<Bytes, Bytes, int64_t> py_encode(const AnyArray &rows, int n_in, const AnyArray &bits,
                                            const AnyArray &care, int64_t n_bits) {
    const char *fn = "xor_gate_encode";
    check_array<uint64_t>(rows, fn, "rows", "uint64", 1);
    check_array<uint8_t>(bits, fn, "bits", "uint8", 1);
    check_array<uint8_t>(care, fn, "care", "uint8", 1);
    const int64_t n_out = static_cast<int64_t>(rows.shape(0));
    apb::xor_gate_check_shape(n_out, n_in);
    if (n_bits < 0) throw std::invalid_argument("xor_gate_encode: n_bits must be >= 0");
    check_length(bits, fn, "bits", apb::xor_gate_bytes(n_bits));
    check_length(care, fn, "care", apb::xor_gate_bytes(n_bits));
    const int64_t n_blocks = apb::xor_gate_blocks(n_bits, n_out);
    Bytes inputs = new_bytes(apb::xor_gate_bytes(n_blocks * n_in));
    Bytes flips = new_bytes(apb::xor_gate_bytes(n_bits));
    int64_t count;
    {
        nb::gil_scoped_release release;
        count = apb::xor_gate_encode(static_cast<const uint64_t *>(rows.data()), n_out, n_in,
                                     static_cast<const uint8_t *>(bits.data()),
                                     static_cast<const uint8_t *>(care.data()), n_bits,
                                     inputs.data(), flips.data());
    }
    return {inputs, flips, count};
}

nb::ndarray<nb::numpy, uint8_t> py_table(const AnyArray &rows, int n_in) {
    const char *fn = "xor_gate_table";
    check_array<uint64_t>(rows, fn, "rows", "uint64", 1);
    const int64_t n_out = static_cast<int64_t>(rows.shape(0));
    apb::xor_gate_check_shape(n_out, n_in);
    const size_t groups = static_cast<size_t>(apb::xor_gate_groups(n_in));
    const size_t row_bytes = static_cast<size_t>(apb::xor_gate_row_bytes(n_out));
    auto table = new_array<uint8_t>({groups, 256, row_bytes});
    apb::xor_gate_table(static_cast<const uint64_t *>(rows.data()), n_out, n_in, table.data());
    return table;
}

void py_decode(const AnyArray &table, int64_t n_out, int n_in, const AnyArray &inputs,
               int64_t n_bits, const AnyArray &counts, const AnyArray &offsets,
               int64_t n_patches, nb::ndarray<> out_array) {
    const char *fn = "xor_gate_decode";
    const AnyArray out(out_array);
    apb::xor_gate_check_shape(n_out, n_in);
    check_array<uint8_t>(table, fn, "table", "uint8", 3);
    check_array<uint8_t>(inputs, fn, "inputs", "uint8", 1);
    check_array<uint8_t>(counts, fn, "patch_counts", "uint8", 1);
    check_array<uint8_t>(offsets, fn, "patch_offsets", "uint8", 1);
    check_array<uint8_t>(out, fn, "out", "uint8", 1);
    const int64_t groups = apb::xor_gate_groups(n_in);
    const int64_t row_bytes = apb::xor_gate_row_bytes(n_out);
    if (static_cast<int64_t>(table.shape(0)) != groups || table.shape(1) != 256 ||
        static_cast<int64_t>(table.shape(2)) != row_bytes) {
        throw std::invalid_argument("xor_gate_decode: table has shape " + shape_string(table) +
                                    ", a network of n_in=" + std::to_string(n_in) + ", n_out=" +
                                    std::to_string(n_out) + " has (" + std::to_string(groups) +
                                    ", 256, " + std::to_string(row_bytes) + ")");
    }
    const apb::XorPatchStreams patches{
        static_cast<const uint8_t *>(counts.data()), static_cast<int64_t>(counts.shape(0)),
        static_cast<const uint8_t *>(offsets.data()), static_cast<int64_t>(offsets.shape(0)),
        n_patches};
    apb::active_isa();  // surface a bad APB_ISA before letting go of the GIL
    {
        nb::gil_scoped_release release;
        apb::xor_gate_decode(static_cast<const uint8_t *>(table.data()), n_out, n_in,
                             static_cast<const uint8_t *>(inputs.data()),
                             static_cast<int64_t>(inputs.shape(0)), n_bits, patches,
                             static_cast<uint8_t *>(out_array.data()),
                             static_cast<int64_t>(out.shape(0)));
    }
}

}  // namespace

void apb::bind::bind_xor_gate(nb::module_ &m) {
    m.def("xor_gate_encode", &py_encode, nb::arg("rows"), nb::arg("n_in"), nb::arg("bits"),
          nb::arg("care"), nb::arg("n_bits"),
          "Solve the XOR network rows (uint64 [n_out], each < 2^n_in) block by block for the "
          "care bits of a plane (bits, care: uint8 bitstreams of n_bits bits): (inputs "
          "bitstream of n_blocks*n_in bits, flips bitstream of n_bits bits, flip count).");
    m.def("xor_gate_table", &py_table, nb::arg("rows"), nb::arg("n_in"),
          "Decode table uint8 [ceil(n_in/8), 256, row_bytes]: entry (g, v) is the XOR of the "
          "network columns 8g+t for the bits t of v, row_bytes = n_out/8 rounded up to 32.");
    m.def("xor_gate_decode", &py_decode, nb::arg("table"), nb::arg("n_out"), nb::arg("n_in"),
          nb::arg("inputs"), nb::arg("n_bits"), nb::arg("patch_counts"),
          nb::arg("patch_offsets"), nb::arg("n_patches"), nb::arg("out"),
          "Decode a plane into out (uint8 [ceil(n_bits/8)], writable): network outputs of the "
          "inputs, then the patches flipped. Every stream is checked before out is written.");
}
