/* The CPU's peak float32 multiply-add rate, the ceiling for any fp32 sampling step (docs/performance.md).
 * Each thread runs 12 independent chains of vector FMAs (enough to keep two FMA pipes busy through their
 * latency); 2 flops per lane per FMA, as FlopCounterMode counts a matrix product.
 * Build and run (the vector width follows the compiler's target: 512 bits with AVX-512, else 256):
 *   gcc -O2 -march=native -ffp-contract=fast -fopenmp tools/cpu_fma_peak.c -o fma_peak
 *   OMP_NUM_THREADS=2 ./fma_peak */
#include <omp.h>
#include <stdio.h>

#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8
#endif
#define CHAINS 12

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

int main(void) {
    const long iters = 400000000L / (LANES / 8);
    double best = 0;
    for (int round = 0; round < 3; round++) {
        double start = omp_get_wtime();
        float sink = 0;
#pragma omp parallel reduction(+ : sink)
        {
            vec acc[CHAINS], mul, add;
            for (int l = 0; l < LANES; l++) {
                mul[l] = 0.9999999f;
                add[l] = 1e-7f;
            }
            for (int k = 0; k < CHAINS; k++)
                for (int l = 0; l < LANES; l++) acc[k][l] = (float)k;
            for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
                for (int k = 0; k < CHAINS; k++) acc[k] = acc[k] * mul + add;
            }
            for (int k = 0; k < CHAINS; k++)
                for (int l = 0; l < LANES; l++) sink += acc[k][l];  /* keeps the chains alive */
        }
        double seconds = omp_get_wtime() - start;
        double rate = 2.0 * omp_get_max_threads() * iters * CHAINS * LANES / seconds / 1e9;
        if (rate > best) best = rate;
        printf("round %d: %.1f GFLOP/s (%d threads, %d-lane vectors, %.2f s; %g)\n", round, rate,
               omp_get_max_threads(), LANES, seconds, sink);
    }
    printf("peak %.1f GFLOP/s\n", best);
    return 0;
}
