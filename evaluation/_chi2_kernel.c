/* Exact chi-square distances between two blocks of row vectors (float32, row-major).
 * out[i * na + j] = 0.5 * sum_k (q[i,k] - a[j,k])^2 / (q[i,k] + a[j,k] + 1e-10)
 * Compiled on first use by evaluation/distances.py; the inner loop vectorises (one
 * division per pair and dimension, as the formula demands). */
void chi2_block(const float *q, const float *a, float *out, long nq, long na, long d) {
    for (long i = 0; i < nq; i++) {
        const float *u = q + i * d;
        for (long j = 0; j < na; j++) {
            const float *v = a + j * d;
            float s = 0.0f;
            for (long k = 0; k < d; k++) {
                float t = u[k] - v[k];
                s += t * t / (u[k] + v[k] + 1e-10f);
            }
            out[i * na + j] = 0.5f * s;
        }
    }
}
