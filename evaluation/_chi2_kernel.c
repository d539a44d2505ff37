/* Exact chi-square distances between two blocks of row vectors (float32, row-major).
 * out[i * ldo + j] = 0.5 * sum_k (q[i,k] - a[j,k])^2 / (q[i,k] + a[j,k] + 1e-10)
 * Compiled on first use by evaluation/distances.py (GCC/Clang vector extensions, so any
 * architecture; the compiler maps a 16-lane vector onto its SIMD registers).
 *
 * The division per pair and dimension is what bounds the speed, so the kernel keeps the
 * divider busy instead of waiting on memory: the archive is walked in tiles that stay in
 * the L2 cache while every query row passes over them, and each archive row is combined with
 * ROWS query rows (held in L1) in one sweep over the dimensions.
 *
 * Every pair is summed in one fixed order, whatever its place in the tiles: lane l of a
 * 16-lane accumulator adds dimensions l, l + 16, ... in turn (the last partial chunk is padded
 * with zeros, which add exactly 0), then the lanes are added by a fixed tree. Equal rows thus
 * get bit-equal distances (ties stay ties), and the result does not depend on block sizes or
 * thread splits. Build without -ffast-math/-fassociative-math, with -ffp-contract=off. */
#include <string.h>

#define LANES 16
#define ROWS 4                       /* query rows per sweep over an archive row */
#define TILE_BYTES (256 * 1024)      /* archive rows per tile: about this many bytes */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef float vf8 __attribute__((vector_size(8 * sizeof(float))));
typedef float vf4 __attribute__((vector_size(4 * sizeof(float))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static inline vf load_tail(const float *p, long n) {
    float buf[LANES] = {0};
    memcpy(buf, p, (size_t)n * sizeof(float));
    return load(buf);
}

static inline vf term(vf u, vf v) {
    const vf eps = (vf){0} + 1e-10f;
    vf t = u - v;
    return t * t / (u + v + eps);
}

/* 0.5 * (sum of the 16 lanes), always added in the same tree order. */
static inline float finish(vf acc) {
    vf8 lo, hi; vf4 a, b; float s[4];
    memcpy(&lo, &acc, sizeof lo); memcpy(&hi, (const char *)&acc + sizeof lo, sizeof hi);
    vf8 s8 = lo + hi;
    memcpy(&a, &s8, sizeof a); memcpy(&b, (const char *)&s8 + sizeof a, sizeof b);
    vf4 s4 = a + b;
    memcpy(s, &s4, sizeof s);
    return 0.5f * ((s[0] + s[2]) + (s[1] + s[3]));
}

/* ROWS query rows u[0..ROWS) against archive row v; out[r * ldo] gets row r's distance. */
static void rows_vs_one(const float *const *u, const float *v, float *out, long ldo, long d) {
    vf acc[ROWS] = {{0}};
    long k = 0;
    for (; k + LANES <= d; k += LANES) {
        vf vv = load(v + k);
        for (int r = 0; r < ROWS; r++) acc[r] += term(load(u[r] + k), vv);
    }
    if (k < d) {
        vf vv = load_tail(v + k, d - k);
        for (int r = 0; r < ROWS; r++) acc[r] += term(load_tail(u[r] + k, d - k), vv);
    }
    for (int r = 0; r < ROWS; r++) out[r * ldo] = finish(acc[r]);
}

/* One query row against archive row v (same lane order as rows_vs_one). */
static float one_vs_one(const float *u, const float *v, long d) {
    vf acc = {0};
    long k = 0;
    for (; k + LANES <= d; k += LANES) acc += term(load(u + k), load(v + k));
    if (k < d) acc += term(load_tail(u + k, d - k), load_tail(v + k, d - k));
    return finish(acc);
}

/* Distances of query rows q (nq, d) to archive rows a (na, d) into out (nq rows, stride ldo). */
void chi2_tiled(const float *q, const float *a, float *out, long nq, long na, long d, long ldo) {
    long tile = TILE_BYTES / ((d > 0 ? d : 1) * (long)sizeof(float));
    if (tile < 8) tile = 8;
    for (long j0 = 0; j0 < na; j0 += tile) {
        long j1 = j0 + tile < na ? j0 + tile : na;
        long i = 0;
        for (; i + ROWS <= nq; i += ROWS) {
            const float *u[ROWS];
            for (int r = 0; r < ROWS; r++) u[r] = q + (i + r) * d;
            for (long j = j0; j < j1; j++) rows_vs_one(u, a + j * d, out + i * ldo + j, ldo, d);
        }
        for (; i < nq; i++)
            for (long j = j0; j < j1; j++) out[i * ldo + j] = one_vs_one(q + i * d, a + j * d, d);
    }
}

/* The division-bound ceiling for benchmarks/bench_retrieval.py: ``reps`` passes of the same
 * arithmetic over ROWS query rows and one archive row that all stay in L1 (nothing to wait
 * for but the divider). out: ROWS floats. */
void chi2_l1_loop(const float *q, const float *a, float *out, long d, long reps) {
    const float *u[ROWS];
    for (int r = 0; r < ROWS; r++) u[r] = q + r * d;
    for (long n = 0; n < reps; n++) {
        rows_vs_one(u, a, out, 1, d);
        __asm__ __volatile__("" ::: "memory");  /* recompute every pass */
    }
}

/* The kernel before tiling, kept as the benchmark's reference: every query row streams the
 * whole archive block (the compiler vectorises the inner loop in its own order, which needs
 * reassociation: allowed for this function only). */
#if defined(__clang__)
#define REASSOCIATE _Pragma("clang fp reassociate(on)")
#define REASSOCIATE_FN
#else
#define REASSOCIATE
#define REASSOCIATE_FN __attribute__((optimize("associative-math", "no-signed-zeros")))
#endif
REASSOCIATE_FN void chi2_rows(const float *q, const float *a, float *out, long nq, long na, long d) {
    for (long i = 0; i < nq; i++) {
        const float *u = q + i * d;
        for (long j = 0; j < na; j++) {
            const float *v = a + j * d;
            float s = 0.0f;
            REASSOCIATE
            for (long k = 0; k < d; k++) {
                float t = u[k] - v[k];
                s += t * t / (u[k] + v[k] + 1e-10f);
            }
            out[i * na + j] = 0.5f * s;
        }
    }
}
