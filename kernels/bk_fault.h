/* A backend that fails on purpose: the test hook for device errors.
 *
 * bk_fault_wrap puts a wrapper around a backend. Its ops forward to the
 * inner backend and count their calls until the spec's call fails:
 *
 *   OP:N          the N-th call of OP returns BL_EDEVICE, and from then on
 *                 every op of the wrapper returns BL_EDEVICE (alloc returns
 *                 NULL): sticky, as an illegal address is on a GPU.
 *   OP:N:device   the same.
 *   OP:N:inval    that one call returns BL_EINVAL, every other goes through
 *   OP:N:nomem    (BL_ENOMEM): a failure that is not the device's.
 *
 * OP is the name of an op slot of bk_backend (backend.h): upload, download,
 * copy, memset0, sync, weight_prepare, embed, rmsnorm, qk_norm_rope,
 * matmul, silu_mul, add, kv_write, attention. N >= 1 counts calls of that
 * op from the wrapper's creation (model loading included). free,
 * weight_release and destroy always forward, so nothing leaks. The
 * wrapper's last_error says what happened, as a real backend would:
 * "cpu: injected device error in matmul (call 200)".
 *
 * ballastd wraps a pool's backend when BALLAST_INJECT_FAULT names it
 * (docs/development.md); unit tests wrap theirs. */
#ifndef BK_FAULT_H
#define BK_FAULT_H

#include <stdint.h>

#include "backend.h"

typedef struct bk_fault_spec {
  int op;           /* index into the op names (bk_fault_op_name) */
  uint64_t n;       /* the failing call of op, from 1 */
  bl_status status; /* BL_EDEVICE (sticky), BL_EINVAL or BL_ENOMEM (that call only) */
} bk_fault_spec;

/* Parse "OP:N[:device|inval|nomem]"; BL_EINVAL with the reason otherwise. */
bl_status bk_fault_parse(const char *spec, bk_fault_spec *out, bl_err *err);
/* The name of op index i ("matmul"), or NULL past the last. */
const char *bk_fault_op_name(int i);

/* Wrap inner per spec. On success *out owns inner (its destroy destroys
 * inner); on failure (a bad spec, no memory) inner stays the caller's. */
bl_status bk_fault_wrap(bk_backend *inner, const char *spec, bk_backend **out, bl_err *err);

/* Has be's injected failure happened (be from bk_fault_wrap)? */
bool bk_fault_fired(const bk_backend *be);

#endif
