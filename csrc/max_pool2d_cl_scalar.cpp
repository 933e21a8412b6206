// max_pool2d_channels_last's row (max_pool2d_cl.h) one float at a time; compiled without
// ISA flags.
#include "max_pool2d_cl.h"

namespace {

struct Scalar {
    using reg = float;
    static constexpr int64_t kLanes = 1;
    static float load(const float *p) { return *p; }
    static void store(float *p, float v) { *p = v; }
    static float broadcast(float v) { return v; }
    static float nan_max(float a, float b) { return apb::max_pool_detail::nan_max_scalar(a, b); }
    static float bound(float y, float lower, float upper) {
        return apb::max_pool_detail::bound(y, lower, upper);
    }
};

}  // namespace

void apb::max_pool2d_cl_row_scalar(const float *image, const MaxPool2dGeometry &g,
                                   int64_t channels, int64_t oy, PoolBounds bounds, float *row,
                                   float *out) {
    max_pool_cl::pool_row<Scalar>(image, g, channels, oy, bounds, row, out);
}
