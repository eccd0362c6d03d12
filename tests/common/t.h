/* Minimal assertions for unit tests: failures print file:line and the
 * expression, the test goes on, and T_DONE() returns the exit status meson
 * reads (0 all passed, 1 any failed). */
#ifndef T_H
#define T_H

#include <math.h>
#include <stdio.h>

static int t_failed, t_checked;

#define T_CHECK(cond)                                                                              \
  do {                                                                                             \
    t_checked++;                                                                                   \
    if (!(cond)) {                                                                                 \
      t_failed++;                                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                     \
    }                                                                                              \
  } while (0)

#define T_CHECKF(cond, ...)                                                                        \
  do {                                                                                             \
    t_checked++;                                                                                   \
    if (!(cond)) {                                                                                 \
      t_failed++;                                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                     \
      fprintf(stderr, __VA_ARGS__);                                                                \
      fputc('\n', stderr);                                                                         \
    }                                                                                              \
  } while (0)

/* |got - want| <= atol + rtol*|want| */
#define T_NEAR(got, want, atol, rtol)                                                              \
  T_CHECKF(fabs((double)(got) - (double)(want)) <= (atol) + (rtol)*fabs((double)(want)),           \
           "got %.9g want %.9g", (double)(got), (double)(want))

#define T_DONE() (fprintf(stderr, "%d checks, %d failed\n", t_checked, t_failed), t_failed ? 1 : 0)

#endif
