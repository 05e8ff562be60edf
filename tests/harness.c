/* harness.c: registration, the runner and comparisons for the unit tests.
 * Usage: qtc-tests [substring ...] runs the tests whose name contains one of
 * the substrings (all without arguments). Ends with "unit: N passed, N failed". */
#include "harness.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qtc/runtime.h"

#define MAX_TESTS 1024

static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests, current_failed;
static const char *current_name;

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests == MAX_TESTS) {
        fprintf(stderr, "harness: more than %d tests\n", MAX_TESTS);
        exit(2);
    }
    tests[n_tests].name = name;
    tests[n_tests].file = file;
    tests[n_tests].fn = fn;
    n_tests++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "FAIL %s (%s:%d): ", current_name, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    current_failed = 1;
}

int test_failed(void)
{
    return current_failed;
}

int check_close_d(const char *what, const double *got, const double *want, int64_t n,
                  double rtol, double atol)
{
    int64_t bad = 0, worst = -1;
    double max_abs = 0, max_rel = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        int nan_mismatch = isnan(got[i]) != isnan(want[i]);
        if (d > max_abs || nan_mismatch) {
            max_abs = nan_mismatch ? INFINITY : d;
            worst = i;
        }
        if (want[i] != 0 && d / fabs(want[i]) > max_rel)
            max_rel = d / fabs(want[i]);
        if (nan_mismatch || d > atol + rtol * fabs(want[i])) {
            if (bad < 5)
                fprintf(stderr, "  %s[%lld]: got %.9g, want %.9g\n", what, (long long)i, got[i], want[i]);
            bad++;
        }
    }
    if (bad)
        fprintf(stderr, "  %s: %lld of %lld differ; max abs diff %.3g at %lld, max rel diff %.3g\n",
                what, (long long)bad, (long long)n, max_abs, (long long)worst, max_rel);
    return bad == 0;
}

int check_close_f(const char *what, const float *got, const double *want, int64_t n,
                  double rtol, double atol)
{
    double *g = malloc((size_t)(n ? n : 1) * sizeof *g);
    if (!g)
        return 0;
    for (int64_t i = 0; i < n; i++)
        g[i] = got[i];
    int ok = check_close_d(what, g, want, n, rtol, atol);
    free(g);
    return ok;
}

char *test_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    if (size)
        *size = (size_t)n;
    return buf;
}

const char *shared_path(const char *rel)
{
    /* a few rotating buffers, so two paths can be used in one call */
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    const char *dir = getenv("QTC_SHARED");
    snprintf(b, sizeof buf[0], "%s/%s", dir ? dir : "../shared", rel);
    return b;
}

static int selected(const char *name, int argc, char **argv)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i]))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < n_tests; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        current_name = tests[i].name;
        current_failed = 0;
        qtc_set_threads(0);
        tests[i].fn();
        if (current_failed)
            failed++;
        else
            passed++;
        if (getenv("QTC_TEST_VERBOSE"))
            fprintf(stderr, "%s %s\n", current_failed ? "FAIL" : "ok  ", tests[i].name);
    }
    printf("unit: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
