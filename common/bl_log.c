/* Logging: a process-wide level is the one deliberate global; it is set once
 * at start-up and read with a relaxed atomic. */
#include "bl_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static _Atomic int g_level = BL_LOG_INFO;

void bl_log_set_level(bl_log_level lvl) {
  atomic_store_explicit(&g_level, lvl, memory_order_relaxed);
}

void bl_log(bl_log_level lvl, const char *fmt, ...) {
  if ((int)lvl < atomic_load_explicit(&g_level, memory_order_relaxed)) return;
  static const char *names[] = {"debug", "info", "warn", "error"};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char line[1024];
  int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, names[lvl]);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && n < (int)sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}
