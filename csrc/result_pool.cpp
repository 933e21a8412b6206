// The result pool of result_pool.h. Each block carries its size in a 64-byte header in
// front of the pointer handed out, so release needs nothing but the pointer.
#include "result_pool.h"

#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace apb {

namespace {

constexpr size_t kHeader = 64;  // keeps the payload 64-byte aligned
constexpr std::align_val_t kAlign{64};

struct Pool {
    std::mutex mutex;
    std::vector<std::pair<size_t, void *>> kept;  // (payload bytes, block)
    ResultPoolStats stats;
};

// Never destroyed: arrays may be released while the interpreter shuts down.
Pool &pool() {
    static Pool *p = new Pool;
    return *p;
}

void *block_of(void *payload) { return static_cast<char *>(payload) - kHeader; }

void free_block(void *block) noexcept { ::operator delete[](block, kAlign); }

}  // namespace

void *acquire_result(size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes >= kPooledBytes) {
        Pool &p = pool();
        std::lock_guard<std::mutex> lock(p.mutex);
        // The smallest kept block that fits and wastes at most half of itself.
        size_t best = p.kept.size();
        for (size_t i = 0; i < p.kept.size(); ++i) {
            const size_t size = p.kept[i].first;
            if (size >= bytes && size / 2 <= bytes &&
                (best == p.kept.size() || size < p.kept[best].first)) {
                best = i;
            }
        }
        if (best < p.kept.size()) {
            void *block = p.kept[best].second;
            p.stats.kept_bytes -= p.kept[best].first;
            p.stats.kept_blocks -= 1;
            p.stats.reused += 1;
            p.kept[best] = p.kept.back();
            p.kept.pop_back();
            return static_cast<char *>(block) + kHeader;
        }
        p.stats.allocated += 1;
    }
    void *block = ::operator new[](bytes + kHeader, kAlign);
    *static_cast<size_t *>(block) = bytes;
    return static_cast<char *>(block) + kHeader;
}

void release_result(void *payload) noexcept {
    if (payload == nullptr) return;
    void *block = block_of(payload);
    const size_t bytes = *static_cast<size_t *>(block);
    if (bytes >= kPooledBytes) {
        Pool &p = pool();
        std::lock_guard<std::mutex> lock(p.mutex);
        if (p.stats.kept_bytes + bytes <= kMaxKeptBytes) {
            try {
                p.kept.emplace_back(bytes, block);
            } catch (...) {  // no room to remember it: free it instead
                free_block(block);
                return;
            }
            p.stats.kept_bytes += bytes;
            p.stats.kept_blocks += 1;
            return;
        }
    }
    free_block(block);
}

ResultPoolStats result_pool_stats() {
    Pool &p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    return p.stats;
}

size_t empty_result_pool() {
    Pool &p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    size_t freed = 0;
    for (auto &[bytes, block] : p.kept) {
        freed += bytes;
        free_block(block);
    }
    p.kept.clear();
    p.stats.kept_bytes = 0;
    p.stats.kept_blocks = 0;
    return freed;
}

}  // namespace apb
