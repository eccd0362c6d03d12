/* Status names and the first-error-wins message buffer. */
#include "bl_status.h"

#include <stdarg.h>
#include <stdio.h>

const char *bl_status_str(bl_status s) {
  switch (s) {
  case BL_OK: return "ok";
  case BL_AGAIN: return "again";
  case BL_EINVAL: return "invalid argument";
  case BL_ENOMEM: return "out of memory";
  case BL_EIO: return "i/o error";
  case BL_EFORMAT: return "bad format";
  case BL_EUNSUPPORTED: return "unsupported";
  case BL_EDEVICE: return "device error";
  case BL_ERANGE: return "out of range";
  case BL_ECANCELED: return "cancelled";
  }
  return "unknown status";
}

bl_status bl_fail(bl_err *err, bl_status s, const char *fmt, ...) {
  if (err && err->status == BL_OK) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->status = s;
  }
  return s;
}

void bl_err_clear(bl_err *err) {
  if (err) {
    err->status = BL_OK;
    err->msg[0] = '\0';
  }
}
