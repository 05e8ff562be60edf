/* cpu.c: which instruction-set path qtc's row kernels take (qtc/runtime.h).
 * The path is chosen once, at first use, from what the CPU reports and the
 * QTC_CPU variable; the kernel tables of tensor/vec.c and quant/qvec.c are
 * indexed by it. One process-wide setting, like the CPU it describes. */
#include "qtc/runtime.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static qtc_cpu_path best_path;
static atomic_int current;

static qtc_cpu_path detect(void)
{
#if defined(QTC_VEC_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma"))
        return QTC_CPU_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return QTC_CPU_AVX2;
#endif
    return QTC_CPU_BASELINE;
}

static void init(void)
{
    best_path = detect();
    qtc_cpu_path p = best_path, want;
    const char *env = getenv("QTC_CPU");
    if (env && qtc_cpu_parse(env, &want) == 0 && want < p)
        p = want;
    atomic_store(&current, (int)p);
}

qtc_cpu_path qtc_cpu_get(void)
{
    pthread_once(&once, init);
    return (qtc_cpu_path)atomic_load_explicit(&current, memory_order_relaxed);
}

qtc_cpu_path qtc_cpu_best(void)
{
    pthread_once(&once, init);
    return best_path;
}

int qtc_cpu_set(qtc_cpu_path p)
{
    pthread_once(&once, init);
    if ((int)p < 0 || p > best_path)
        return -1;
    atomic_store(&current, (int)p);
    return 0;
}

static const char *const names[] = {"baseline", "avx2", "avx512"};

const char *qtc_cpu_name(qtc_cpu_path p)
{
    return (int)p >= 0 && (int)p < 3 ? names[p] : NULL;
}

int qtc_cpu_parse(const char *name, qtc_cpu_path *p)
{
    for (int i = 0; name && i < 3; i++)
        if (strcmp(name, names[i]) == 0) {
            *p = (qtc_cpu_path)i;
            return 0;
        }
    return -1;
}
