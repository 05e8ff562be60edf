/* harness.h: the unit-test harness. A test is `TEST(name_that_says_what_it_checks) { ... }`;
 * tests register themselves and run in file order. CHECK stops the test at the
 * first failure and says where; check_close compares arrays and prints the
 * first mismatches, the largest difference and its index. Silent on success. */
#ifndef QTC_TEST_HARNESS_H
#define QTC_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int test_failed(void);

#define TEST(name)                                                        \
    static void name(void);                                               \
    __attribute__((constructor)) static void name##_register(void)        \
    {                                                                     \
        test_register(#name, __FILE__, name);                             \
    }                                                                     \
    static void name(void)

#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) {                                                    \
            test_fail(__FILE__, __LINE__, "%s", #cond);                   \
            return;                                                       \
        }                                                                 \
    } while (0)

#define CHECK_MSG(cond, ...)                                              \
    do {                                                                  \
        if (!(cond)) {                                                    \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                   \
            return;                                                       \
        }                                                                 \
    } while (0)

/* |got - want| <= atol + rtol * |want| elementwise; prints up to 5 mismatches,
 * the max abs and relative differences and where. Returns 1 when close. */
int check_close_d(const char *what, const double *got, const double *want, int64_t n,
                  double rtol, double atol);
int check_close_f(const char *what, const float *got, const double *want, int64_t n,
                  double rtol, double atol);

#define CHECK_CLOSE(what, got, want, n, rtol, atol)                       \
    do {                                                                  \
        if (!_Generic((got), float *: check_close_f, const float *: check_close_f, \
                      default: check_close_d)(what, got, want, n, rtol, atol)) { \
            test_fail(__FILE__, __LINE__, "%s differs", what);            \
            return;                                                       \
        }                                                                 \
    } while (0)

/* A whole file in a malloc'd, NUL-terminated buffer (size without the NUL), or NULL. */
char *test_read_file(const char *path, size_t *size);

/* Path of a file under ../shared (QTC_SHARED overrides the folder); the
 * result stays valid for the next three calls. */
const char *shared_path(const char *rel);

#endif
