/* The two loops of aggregation that Python cannot run at memory speed, over a batch of
 * stacks whose rows are read in place (entry b's row i starts at rows[b * n + i]: rows of one
 * tensor, or of several, never gathered into a (B, n, d) copy). aggregation/_kernels.py
 * compiles this file on first use and falls back to torch/numpy without a C compiler.
 *
 * gm_network: per column, mix the n rows (optional), run a comparator program on them (the
 *   sorting/selection networks of aggregation/_columns.py, the same programs), and average the
 *   rows the program leaves the wanted values on. A few hundred columns at a time, in L1.
 * gm_gram: per entry, the Gram matrix of the rows centred on one of them, in float64 (each
 *   block of columns summed in float32, in a fixed order, then added in float64).
 *
 * Every entry's numbers depend on its own rows only (never on the batch around it).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLK 256
/* a comparator may write its max over one of its inputs (same index read first): no
 * dependence between iterations, which `GCC ivdep` tells the vectorizer */
#define LANES 16
#define GBLK 2048 /* columns per Gram block: float32 sums of this many, then float64 */

typedef const float *row_t;

#define TILE 4

/* LANES floats as one value: GCC's vector extension (AVX-512, or split into narrower registers) */
typedef float vf __attribute__((vector_size(4 * LANES)));
static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline double hsum(vf a) { /* the lanes added in float64, in order */
    double s = 0.0;
    for (int l = 0; l < LANES; l++) s += (double)a[l];
    return s;
}

/* r[i][0..c) = sum_j w[i][j] x_j[c0..c0+c) for i < m (or, with centre >= 0, x_centre + sum_j
 * w[i][j] (x_j - x_centre)), TILE output rows and LANES columns at a time in registers, each
 * value summed over j in order */
static const float ZERO[BLK]; /* the centre when there is none: x - 0 and 0 + s are exact */

static void mix_block(row_t *x, int64_t c0, int64_t c, int32_t n, const float *w, int32_t m, int32_t centre,
                      float **r) {
    const float *xc = centre >= 0 ? x[centre] + c0 : ZERO;
    for (int32_t i0 = 0; i0 < m; i0 += TILE) {
        int32_t ti = m - i0 < TILE ? m - i0 : TILE;
        const float *w0 = w + (int64_t)i0 * n; /* a tile's missing rows repeat its last (never stored) */
        const float *w1 = w + (int64_t)(i0 + (ti > 1 ? 1 : 0)) * n;
        const float *w2 = w + (int64_t)(i0 + (ti > 2 ? 2 : ti - 1)) * n;
        const float *w3 = w + (int64_t)(i0 + (ti > 3 ? 3 : ti - 1)) * n;
        int64_t k = 0;
        for (; k + LANES <= c; k += LANES) {
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, vc = load(xc + k);
            for (int32_t j = 0; j < n; j++) {
                vf v = load(x[j] + c0 + k) - vc;
                a0 += w0[j] * v;
                a1 += w1[j] * v;
                a2 += w2[j] * v;
                a3 += w3[j] * v;
            }
            vf acc[TILE] = {a0, a1, a2, a3};
            for (int32_t t = 0; t < ti; t++) store(r[i0 + t] + k, vc + acc[t]);
        }
        for (; k < c; k++) /* the last columns, fewer than LANES: the same sums one at a time */
            for (int32_t t = 0; t < ti; t++) {
                float a = 0.0f;
                for (int32_t j = 0; j < n; j++) a += w[(int64_t)(i0 + t) * n + j] * (x[j][c0 + k] - xc[k]);
                r[i0 + t][k] = xc[k] + a;
            }
    }
}

/* out[b] = mean over keep of program(mix[b] @ rows[b]) per column; see aggregation/_kernels.py */
int gm_network(const int64_t *rows, int64_t batch, int32_t n, int64_t d,
               const float *mix, int32_t m, int32_t centre,
               const int32_t *steps, int32_t nsteps,
               const int32_t *keep, int32_t nkeep, float *out) {
    int32_t inputs = mix ? m : n;
    int32_t total = 2 * inputs + 1;
    float *scratch = (float *)malloc(sizeof(float) * (size_t)total * BLK);
    float **r = (float **)malloc(sizeof(float *) * (size_t)total);
    if (!scratch || !r) {
        free(scratch);
        free(r);
        return -1;
    }
    for (int64_t b = 0; b < batch; b++) {
        row_t *x = (row_t *)(rows + b * n);
        const float *mb = mix ? mix + b * (int64_t)m * n : NULL;
        for (int64_t c0 = 0; c0 < d; c0 += BLK) {
            int64_t c = d - c0 < BLK ? d - c0 : BLK;
            for (int32_t i = 0; i < total; i++)
                r[i] = scratch + (int64_t)i * BLK;
            if (!mb) {
                for (int32_t i = 0; i < n; i++)
                    r[i] = (float *)(x[i] + c0); /* read in place, never written */
            } else {
                mix_block(x, c0, c, n, mb, m, centre, r);
            }
            for (int32_t s = 0; s < nsteps; s++) {
                const float *pa = r[steps[4 * s]], *pb = r[steps[4 * s + 1]];
                int32_t lo = steps[4 * s + 2], hi = steps[4 * s + 3];
                if (lo >= 0 && hi >= 0) {
                    float *pl = r[lo], *ph = r[hi];
                    _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) {
                        float u = pa[k], v = pb[k];
                        pl[k] = v < u ? v : u;
                        ph[k] = u < v ? v : u;
                    }
                } else if (lo >= 0) {
                    float *pl = r[lo];
                    _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) pl[k] = pb[k] < pa[k] ? pb[k] : pa[k];
                } else {
                    float *ph = r[hi];
                    _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) ph[k] = pa[k] < pb[k] ? pb[k] : pa[k];
                }
            }
            float *o = out + b * d + c0;
            const float *k0 = r[keep[0]];
            if (nkeep == 1) {
                memcpy(o, k0, sizeof(float) * (size_t)c);
                continue;
            }
            const float *k1 = r[keep[1]];
            _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) o[k] = k0[k] + k1[k];
            for (int32_t q = 2; q < nkeep; q++) {
                const float *kq = r[keep[q]];
                _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) o[k] += kq[k];
            }
            _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) o[k] /= (float)nkeep;
        }
    }
    free(scratch);
    free(r);
    return 0;
}

/* sum of a[k] b[k] for k < len (a multiple of LANES): LANES float32 sums, added in float64 */
static double dot(const float *a, const float *b, int64_t len) {
    vf acc = {0};
    for (int64_t k = 0; k < len; k += LANES) acc += load(a + k) * load(b + k);
    return hsum(acc);
}

/* out[b] (n, n) float64 = Xc Xc^T, Xc the rows of entry b minus its row `centre` (with
 * `diagonal`, only the diagonal: the squared distances to the centre row) */
int gm_gram(const int64_t *rows, int64_t batch, int32_t n, int64_t d, int32_t centre, int32_t diagonal,
            double *out) {
    float *cb = (float *)malloc(sizeof(float) * (size_t)n * GBLK);
    if (!cb) return -1;
    for (int64_t b = 0; b < batch; b++) {
        row_t *x = (row_t *)(rows + b * n);
        double *g = out + b * (int64_t)n * n;
        for (int64_t q = 0; q < (int64_t)n * n; q++) g[q] = 0.0;
        for (int64_t c0 = 0; c0 < d; c0 += GBLK) {
            int64_t c = d - c0 < GBLK ? d - c0 : GBLK;
            int64_t padded = (c + LANES - 1) / LANES * LANES;
            const float *xc = x[centre] + c0;
            for (int32_t i = 0; i < n; i++) {
                const float *xi = x[i] + c0;
                float *ci = cb + (int64_t)i * GBLK;
                _Pragma("GCC ivdep") for (int64_t k = 0; k < c; k++) ci[k] = xi[k] - xc[k];
                for (int64_t k = c; k < padded; k++) ci[k] = 0.0f;
            }
            for (int32_t i = 0; i < n; i++) {
                const float *ci = cb + (int64_t)i * GBLK;
                if (diagonal) {
                    g[(int64_t)i * n + i] += dot(ci, ci, padded);
                    continue;
                }
                /* four rows j at a time: four independent sums (a lone one waits on its own latency) */
                for (int32_t j0 = 0; j0 <= i; j0 += 4) {
                    const float *p0 = cb + (int64_t)j0 * GBLK;
                    const float *p1 = cb + (int64_t)(j0 + 1 <= i ? j0 + 1 : i) * GBLK;
                    const float *p2 = cb + (int64_t)(j0 + 2 <= i ? j0 + 2 : i) * GBLK;
                    const float *p3 = cb + (int64_t)(j0 + 3 <= i ? j0 + 3 : i) * GBLK;
                    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                    for (int64_t k = 0; k < padded; k += LANES) {
                        vf v = load(ci + k);
                        a0 += v * load(p0 + k);
                        a1 += v * load(p1 + k);
                        a2 += v * load(p2 + k);
                        a3 += v * load(p3 + k);
                    }
                    vf acc[4] = {a0, a1, a2, a3};
                    for (int t = 0; t < 4 && j0 + t <= i; t++) g[(int64_t)i * n + j0 + t] += hsum(acc[t]);
                }
            }
        }
        for (int32_t i = 0; i < n; i++)
            for (int32_t j = i + 1; j < n; j++) g[(int64_t)i * n + j] = g[(int64_t)j * n + i];
    }
    free(cb);
    return 0;
}

/* out[k] = the row at rows[k], for k < count: a few chosen rows copied out */
void gm_pick(const int64_t *rows, int64_t count, int64_t d, float *out) {
    for (int64_t k = 0; k < count; k++) memcpy(out + k * d, (const float *)rows[k], sizeof(float) * (size_t)d);
}

/* out[k] = 1 where row k (of `count` rows of d floats from `base`) holds only finite values:
 * x * 0 is 0 for a finite x and NaN for NaN or +-Inf, and a sum of zeros stays exactly 0 */
void gm_finite_rows(const float *base, int64_t count, int64_t d, uint8_t *out) {
    for (int64_t q = 0; q < count; q++) {
        const float *x = base + q * d;
        float acc[LANES] = {0};
        int64_t k = 0;
        for (; k + LANES <= d; k += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += x[k + l] * 0.0f;
        float s = 0.0f;
        for (; k < d; k++) s += x[k] * 0.0f;
        for (int l = 0; l < LANES; l++) s += acc[l];
        out[q] = s == 0.0f;
    }
}
