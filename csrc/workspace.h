// Per-thread scratch buffers that kernels reuse from call to call: consecutive layers
// of a network then work in warm, already-mapped memory instead of allocating (and
// page-faulting in) a fresh buffer each call. A buffer only grows; each Tag names one
// user, so two kernels never share a buffer.
#pragma once

#include <cstddef>
#include <vector>

namespace apb {

// At least `count` elements, contents unspecified. Call it outside parallel regions:
// it may throw std::bad_alloc. The pointer stays valid until the same thread asks
// the same Tag for more.
template <typename Tag, typename T>
T *thread_workspace(size_t count) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < count) {
        buffer = std::vector<T>();  // free the old one before allocating the new one
        buffer.resize(count);
    }
    return buffer.data();
}

}  // namespace apb
