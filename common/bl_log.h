/* Leveled logging to stderr: one line per call, with level and time. */
#ifndef BL_LOG_H
#define BL_LOG_H

typedef enum bl_log_level { BL_LOG_DEBUG, BL_LOG_INFO, BL_LOG_WARN, BL_LOG_ERROR } bl_log_level;

void bl_log_set_level(bl_log_level lvl);
void bl_log(bl_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Check a status-returning expression; on failure log where and jump to fail. */
#define BL_TRY(expr)                                                                               \
  do {                                                                                             \
    st = (expr);                                                                                   \
    if (st != BL_OK) {                                                                             \
      bl_log(BL_LOG_DEBUG, "%s:%d: %s -> %s", __FILE__, __LINE__, #expr, bl_status_str(st));       \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

#endif
