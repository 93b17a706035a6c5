/* The fused linear merge on the CPU in one pass: out[j] = round(acc_j [/ total]), where
 * acc_j = fma(t_{N-1}[j], w_{N-1}, ... fma(t_0[j], w_0, +0.0f)) - exactly what
 * merge_methods.linear computes with torch (addcmul_ in pool order is a fused multiply-add in
 * fp32, then one IEEE division, then one round-to-nearest-even cast). Torch runs that as N + 3
 * kernels, each a pass over an fp32 accumulator; here each entry is read once and written once.
 * Every step is exactly rounded IEEE arithmetic, so vector width and compiler flags do not
 * change a bit. Called from evaluators/native.py through ctypes, one call per thread. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512 /* entries per accumulator block: 2 KiB, stays in L1 */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* c10::BFloat16's round_to_nearest_even */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (f != f) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#define LINEAR(NAME, T, LOAD, STORE)                                                              \
    void NAME(const T *rows, int64_t row_stride, int64_t n, const float *w, int normalize,         \
              float total, T *out, int64_t len) {                                                  \
        float acc[BLOCK];                                                                          \
        for (int64_t s = 0; s < len; s += BLOCK) {                                                 \
            int64_t m = len - s < BLOCK ? len - s : BLOCK;                                         \
            for (int64_t j = 0; j < m; j++) acc[j] = 0.0f;                                         \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const T *r = rows + i * row_stride + s;                                            \
                const float wi = w[i];                                                             \
                for (int64_t j = 0; j < m; j++) acc[j] = fmaf(LOAD(r[j]), wi, acc[j]);             \
            }                                                                                      \
            if (normalize)                                                                         \
                for (int64_t j = 0; j < m; j++) acc[j] = acc[j] / total;                           \
            for (int64_t j = 0; j < m; j++) out[s + j] = STORE(acc[j]);                            \
        }                                                                                          \
    }

#define SAME(x) (x)
LINEAR(linear_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
LINEAR(linear_f32, float, SAME, SAME)
