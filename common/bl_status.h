/* Shared status codes and error reporting.
 *
 * Every fallible function returns a bl_status. Functions that can fail for a
 * reason a user must see (a broken model file, a bad flag) also take a
 * bl_err and write a message naming what failed (file, tensor, key). The
 * message is the whole story: callers print it as is. */
#ifndef BL_STATUS_H
#define BL_STATUS_H

#include <stddef.h>

typedef enum bl_status {
  BL_OK = 0,
  BL_AGAIN,        /* nothing wrong, retry later (e.g. no KV blocks this step) */
  BL_EINVAL,       /* bad argument or malformed input */
  BL_ENOMEM,       /* allocation failed */
  BL_EIO,          /* file could not be opened, read or mapped */
  BL_EFORMAT,      /* file opened but its content is wrong (truncated, bad shape) */
  BL_EUNSUPPORTED, /* valid but not handled (unknown architecture, dtype) */
  BL_EDEVICE,      /* a device call failed */
  BL_ERANGE,       /* value outside limits */
  BL_ECANCELED,    /* the caller cancelled the work */
} bl_status;

const char *bl_status_str(bl_status s);

/* A message buffer owned by the caller; the first error written wins so the
 * innermost cause is kept when outer layers add nothing new. */
typedef struct bl_err {
  bl_status status;
  char msg[512];
} bl_err;

/* Record an error (printf format) and return its status, so a failure site
 * reads `return bl_fail(err, BL_EFORMAT, "%s: tensor %s ...", ...);`.
 * err may be NULL. Only the first error is kept. */
bl_status bl_fail(bl_err *err, bl_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clear an error buffer. */
void bl_err_clear(bl_err *err);

#endif
