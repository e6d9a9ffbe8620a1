/* AVX2 + FMA + F16C helpers of the half-precision top-K pre-pass (_topk_half.pyx).
 *
 * Item factors are float16 in tiles of 8 items: tile[j * 8 + lane] is factor j of item
 * (8 * t + lane), so one tile's scores for one query are f FMAs of 8 lanes,
 *     acc += broadcast(q_j) * cvtph2ps(tile[j * 8 .. j * 8 + 7]),
 * with no horizontal sums. Tiles are scored in pairs (their count is even). Compiled only into the module built with -mavx2 -mfma -mf16c.
 */
#ifndef TIMBRAL_TOPK_HALF_H
#define TIMBRAL_TOPK_HALF_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define TH_TILE 8      /* items per tile: one __m256 of float32 scores */
#define TH_PAIR 16     /* items scored per call: two tiles, each query value loaded once for both */
#define TH_MAX_GROUP 4 /* queries scored together per pair (8 accumulators in registers) */

/* Scores of n queries (rows q, q + ldq, ...) on the two tiles from `tile` (16 items);
 * bits[r] gets the items (bit l: item l of the pair) where acc * up + add[r] >= thr[r]
 * (the upper bound reaches the query's threshold) and, when any does,
 * acc_out[16 r .. 16 r + 15] the scores. Returns the OR of the bits. n is a constant at
 * each call site below, so the loops unroll and the accumulators stay in registers.
 * Two tiles per query value halve the broadcasts per FMA (measured ~25 % less time per
 * tile at 4 and 8 queries). An FMA waits ~5 cycles for its accumulator, so fewer than 4
 * queries split the factors over 4 / n chains (j mod chains), summed at the end. The pair
 * after next is prefetched: the hardware prefetcher alone left the loop waiting on memory
 * once the FMAs of several queries spaced the loads out. */
static inline __attribute__((always_inline)) int th_pair_n(
    const uint16_t *tile, int f, const float *q, ptrdiff_t ldq, float up, const float *add,
    const float *thr, float *acc_out, int *bits, const int n)
{
    const int chains = n >= 4 ? 1 : n >= 2 ? 2 : 4;
    const uint16_t *next = tile + TH_TILE * f;
    __m256 acc[4][2 * TH_MAX_GROUP];
    const char *ahead = (const char *)(tile + 2 * TH_PAIR * f);
    for (int b = 0; b < TH_PAIR * f * 2; b += 64)
        _mm_prefetch(ahead + b, _MM_HINT_T0);
#pragma GCC unroll 4
    for (int c = 0; c < chains; c++)
#pragma GCC unroll 8
        for (int r = 0; r < 2 * n; r++)
            acc[c][r] = _mm256_setzero_ps();
    int j = 0;
    for (; j + chains <= f; j += chains) {
#pragma GCC unroll 4
        for (int c = 0; c < chains; c++) {
            __m256 h0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile + TH_TILE * (j + c))));
            __m256 h1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(next + TH_TILE * (j + c))));
#pragma GCC unroll 4
            for (int r = 0; r < n; r++) {
                __m256 v = _mm256_broadcast_ss(q + r * ldq + j + c);
                acc[c][2 * r] = _mm256_fmadd_ps(v, h0, acc[c][2 * r]);
                acc[c][2 * r + 1] = _mm256_fmadd_ps(v, h1, acc[c][2 * r + 1]);
            }
        }
    }
    for (; j < f; j++) {
        __m256 h0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(tile + TH_TILE * j)));
        __m256 h1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(next + TH_TILE * j)));
#pragma GCC unroll 4
        for (int r = 0; r < n; r++) {
            __m256 v = _mm256_broadcast_ss(q + r * ldq + j);
            acc[0][2 * r] = _mm256_fmadd_ps(v, h0, acc[0][2 * r]);
            acc[0][2 * r + 1] = _mm256_fmadd_ps(v, h1, acc[0][2 * r + 1]);
        }
    }
#pragma GCC unroll 4
    for (int c = 1; c < chains; c++)
#pragma GCC unroll 8
        for (int r = 0; r < 2 * n; r++)
            acc[0][r] = _mm256_add_ps(acc[0][r], acc[c][r]);
    __m256 vup = _mm256_set1_ps(up);
    int any = 0;
#pragma GCC unroll 4
    for (int r = 0; r < n; r++) {
        __m256 vadd = _mm256_set1_ps(add[r]), vthr = _mm256_set1_ps(thr[r]);
        int b = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_fmadd_ps(acc[0][2 * r], vup, vadd), vthr, _CMP_GE_OQ))
              | _mm256_movemask_ps(_mm256_cmp_ps(_mm256_fmadd_ps(acc[0][2 * r + 1], vup, vadd), vthr, _CMP_GE_OQ))
                    << TH_TILE;
        bits[r] = b;
        if (b) {
            _mm256_storeu_ps(acc_out + TH_PAIR * r, acc[0][2 * r]);
            _mm256_storeu_ps(acc_out + TH_PAIR * r + TH_TILE, acc[0][2 * r + 1]);
        }
        any |= b;
    }
    return any;
}

/* th_pair_n for 1 <= n <= TH_MAX_GROUP queries. */
static int th_pair(const uint16_t *tile, int f, const float *q, ptrdiff_t ldq, int n, float up,
                   const float *add, const float *thr, float *acc_out, int *bits)
{
    switch (n) {
    case 1: return th_pair_n(tile, f, q, ldq, up, add, thr, acc_out, bits, 1);
    case 2: return th_pair_n(tile, f, q, ldq, up, add, thr, acc_out, bits, 2);
    case 3: return th_pair_n(tile, f, q, ldq, up, add, thr, acc_out, bits, 3);
    default: return th_pair_n(tile, f, q, ldq, up, add, thr, acc_out, bits, 4);
    }
}

/* r[c] <- column c of the 8 x 8 block whose rows are r[0..7]. */
static inline void th_transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* One tile from n_rows (<= 8) consecutive rows of f floats: tile[j * 8 + l] =
 * fp16(scale * rows[l * f + j]), rounded to nearest even, zeros for l >= n_rows.
 * Full tiles go 8 factors at a time through an 8 x 8 transpose. */
static inline void th_pack(const float *rows, int f, int n_rows, float scale, uint16_t *tile)
{
    __m256 vscale = _mm256_set1_ps(scale), r[8];
    int j = 0;
    if (n_rows == TH_TILE) {
        for (; j + TH_TILE <= f; j += TH_TILE) {
            for (int l = 0; l < TH_TILE; l++)
                r[l] = _mm256_mul_ps(_mm256_loadu_ps(rows + (ptrdiff_t)l * f + j), vscale);
            th_transpose8(r);
            for (int c = 0; c < TH_TILE; c++)
                _mm_storeu_si128((__m128i *)(tile + TH_TILE * (j + c)),
                                 _mm256_cvtps_ph(r[c], _MM_FROUND_TO_NEAREST_INT));
        }
    }
    for (; j < f; j++)
        for (int l = 0; l < TH_TILE; l++)
            tile[TH_TILE * j + l] = l < n_rows
                ? (uint16_t)_cvtss_sh(scale * rows[(ptrdiff_t)l * f + j], _MM_FROUND_TO_NEAREST_INT) : 0;
}

/* Over n rows of f floats: 1 when every value is finite and >= 0, with *top the largest
 * value and *top_row the largest row sum (summed in float32); else 0. */
static inline int th_bounds(const float *x, ptrdiff_t n, int f, float *top, float *top_row)
{
    const __m256 zero = _mm256_setzero_ps(), big = _mm256_set1_ps(3.4028234663852886e38f);
    __m256 bad = zero, vtop = zero;
    float best_row = 0.0f, tail_top = 0.0f;
    int tail_bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *row = x + i * f;
        __m256 sum = zero;
        int j = 0;
        for (; j + TH_TILE <= f; j += TH_TILE) {
            __m256 v = _mm256_loadu_ps(row + j);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, zero, _CMP_NGE_UQ)); /* negative or NaN */
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, big, _CMP_NLE_UQ));  /* infinite or NaN */
            vtop = _mm256_max_ps(vtop, v);
            sum = _mm256_add_ps(sum, v);
        }
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        float rs = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        for (; j < f; j++) {
            float v = row[j];
            tail_bad |= !(v >= 0.0f && v <= 3.4028234663852886e38f);
            tail_top = v > tail_top ? v : tail_top;
            rs += v;
        }
        best_row = rs > best_row ? rs : best_row;
    }
    float lanes[TH_TILE];
    _mm256_storeu_ps(lanes, vtop);
    for (int l = 0; l < TH_TILE; l++)
        tail_top = lanes[l] > tail_top ? lanes[l] : tail_top;
    *top = tail_top;
    *top_row = best_row;
    return !tail_bad && !_mm256_movemask_ps(bad);
}

/* x · y in float32: 8 FMA lanes, then their sum, then the tail of f mod 8 terms. */
static inline float th_dot(const float *x, const float *y, int f)
{
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + TH_TILE <= f; j += TH_TILE)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float out = _mm_cvtss_f32(s);
    for (; j < f; j++)
        out += x[j] * y[j];
    return out;
}

#endif
