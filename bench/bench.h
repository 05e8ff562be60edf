/* bench.h: timing helpers shared by the benchmarks (header-only). */
#ifndef QTC_BENCH_H
#define QTC_BENCH_H

#include <time.h>

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best time of one call over repeated calls lasting at least min_seconds in total. */
#define BENCH_BEST(min_seconds, body)                        \
    ({                                                       \
        double best_ = 1e30, start_ = bench_now();           \
        do {                                                 \
            double t0_ = bench_now();                        \
            body;                                            \
            double dt_ = bench_now() - t0_;                  \
            if (dt_ < best_)                                 \
                best_ = dt_;                                 \
        } while (bench_now() - start_ < (min_seconds));      \
        best_;                                               \
    })

#endif
