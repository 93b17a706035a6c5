/* Task arithmetic and TIES on the CPU in one pass per block of entries, with the arithmetic of
 * merge_methods._combine step for step (compiled with -ffp-contract=off, so d * w + s stays a
 * rounded product and a rounded sum, as torch computes them):
 *   d_i = float(t_i) - float(base)                                  (task_vectors)
 *   TIES: d_i * (rank_i < k_i)  (mode 0), d_i (mode 1), +0 (mode 2) (magnitude_prune)
 *   x_i = d_i * w_i;  s = ((0 + x_0) + x_1) + ...                   (torch's sum over N <= 4
 *                                                                    rows, in every code path)
 *   TIES: keep x_i whose sign is the sign elected by s >= 0; divisor = sum of kept w_i
 *   mixed (/ divisor) (* lambda), out = round(float(base) + mixed).
 * evaluators/native.py checks N and dtypes; tests/test_native.py checks every step bit for bit. */
#include <stdint.h>
#include <string.h>

#define BLOCK 256
#define MAX_N 4

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if (f != f) return 0x7FC0;
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#define SAME(x) (x)

#define TASK_ARITHMETIC(NAME, T, LOAD, STORE)                                                     \
    void NAME(const T *rows, int64_t row_stride, const T *base, int64_t n, const float *w,         \
              int normalize, float divisor, int scale, float lambda, T *out, int64_t len) {        \
        float b[BLOCK], s[BLOCK];                                                                  \
        for (int64_t o = 0; o < len; o += BLOCK) {                                                 \
            int64_t m = len - o < BLOCK ? len - o : BLOCK;                                         \
            for (int64_t j = 0; j < m; j++) b[j] = LOAD(base[o + j]), s[j] = 0.0f;                 \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const T *r = rows + i * row_stride + o;                                            \
                const float wi = w[i];                                                             \
                for (int64_t j = 0; j < m; j++) s[j] = s[j] + (LOAD(r[j]) - b[j]) * wi;            \
            }                                                                                      \
            for (int64_t j = 0; j < m; j++) {                                                      \
                float x = s[j];                                                                    \
                if (normalize) x = x / divisor;                                                    \
                if (scale) x = x * lambda;                                                         \
                out[o + j] = STORE(b[j] + x);                                                      \
            }                                                                                      \
        }                                                                                          \
    }

#define TIES(NAME, T, LOAD, STORE)                                                                \
    void NAME(const T *rows, int64_t row_stride, const int32_t *ranks, int64_t rank_stride,        \
              const T *base, int64_t n, const float *w, const int64_t *k, const int8_t *mode,       \
              int normalize, int scale, float lambda, T *out, int64_t len) {                       \
        float b[BLOCK], s[BLOCK], kept[BLOCK], div[BLOCK], x[MAX_N][BLOCK];                        \
        for (int64_t o = 0; o < len; o += BLOCK) {                                                 \
            int64_t m = len - o < BLOCK ? len - o : BLOCK;                                         \
            for (int64_t j = 0; j < m; j++) b[j] = LOAD(base[o + j]), s[j] = 0.0f;                 \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const T *r = rows + i * row_stride + o;                                            \
                const int32_t *q = ranks + i * rank_stride + o;                                    \
                const float wi = w[i];                                                             \
                const int64_t ki = k[i];                                                           \
                for (int64_t j = 0; j < m; j++) {                                                  \
                    float d = LOAD(r[j]) - b[j];                                                   \
                    float t = mode[i] == 0 ? d * (q[j] < ki ? 1.0f : 0.0f) : mode[i] == 1 ? d : 0.0f; \
                    x[i][j] = t * wi;                                                              \
                    s[j] = s[j] + x[i][j];                                                         \
                }                                                                                  \
            }                                                                                      \
            for (int64_t j = 0; j < m; j++) kept[j] = 0.0f, div[j] = 0.0f;                         \
            for (int64_t i = 0; i < n; i++) {                                                      \
                const float wi = w[i];                                                             \
                for (int64_t j = 0; j < m; j++) {                                                  \
                    float v = x[i][j];                                                             \
                    float sign = (float)((v > 0.0f) - (v < 0.0f));                                 \
                    float keep = sign == (s[j] >= 0.0f ? 1.0f : -1.0f) ? 1.0f : 0.0f;              \
                    kept[j] = kept[j] + v * keep;                                                  \
                    div[j] = div[j] + wi * keep;                                                   \
                }                                                                                  \
            }                                                                                      \
            for (int64_t j = 0; j < m; j++) {                                                      \
                float v = kept[j];                                                                 \
                if (normalize) v = v / (div[j] == 0.0f ? 1.0f : div[j]);                           \
                if (scale) v = v * lambda;                                                         \
                out[o + j] = STORE(b[j] + v);                                                      \
            }                                                                                      \
        }                                                                                          \
    }

TASK_ARITHMETIC(task_arithmetic_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
TASK_ARITHMETIC(task_arithmetic_f32, float, SAME, SAME)
TIES(ties_bf16, uint16_t, bf16_to_f32, f32_to_bf16)
TIES(ties_f32, float, SAME, SAME)
