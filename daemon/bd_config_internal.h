/* Private to the configuration (bd_config.c, bd_config_view.c): the key
 * table, defined in bd_config.c, and what walking it takes. Parsing, the
 * defaults and the reload diff walk it in bd_config.c; the JSON view and the
 * Markdown reference in bd_config_view.c. */
#ifndef BD_CONFIG_INTERNAL_H
#define BD_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "bd_config.h"

enum {
  F_RESTART = 1,   /* read at start-up only; a reload reports the change */
  F_SENSITIVE = 2, /* "<redacted>" in JSON */
  F_REQUIRED = 4,  /* must be set when its group is present */
};

typedef enum bd_kind {
  K_STR,  /* char *; empty means unset when the default is unset */
  K_ENUM, /* char *, one of choices */
  K_ADDR, /* char *, HOST:PORT */
  K_INT,  /* int32_t in [min, max] */
  K_DBL,  /* double in [min, max]; an integer literal is accepted */
  K_BOOL, /* bool */
  K_INTS, /* int32_t[BD_MAX_DEVICES] and a count at off_n; each in [min, max] */
} bd_kind;

typedef struct bd_row {
  const char *key; /* "group.key" or "pools.executor.key" */
  bd_kind type;
  size_t off;   /* into bd_config (or sched_policy for bd_config_policy_rows) */
  size_t off_n; /* K_INTS: the count */
  double min, max;
  double def;          /* K_INT, K_DBL, K_BOOL; K_INTS: the one default element */
  const char *def_s;   /* string kinds; NULL: unset */
  const char *choices; /* K_ENUM: "a|b|c" */
  unsigned flags;
  const char *help;
} bd_row;

/* Every scalar key, in the order the JSON view builds them. */
extern const bd_row bd_config_rows[];
extern const size_t bd_config_n_rows;

/* Fields of a named policy (controls.policies), offsets into sched_policy. */
enum { PR_NAME, PR_BASE, PR_FALLBACK, PR_INTS, N_PR = PR_INTS + 5 };
extern const bd_row bd_config_policy_rows[N_PR];

/* Row r's field in c. */
static inline void *field(bd_config *c, const bd_row *r) { return (char *)c + r->off; }
static inline const void *cfield(const bd_config *c, const bd_row *r) {
  return (const char *)c + r->off;
}
/* A char * field (K_STR, K_ENUM, K_ADDR). */
static inline bool is_str(const bd_row *r) {
  return r->type == K_STR || r->type == K_ENUM || r->type == K_ADDR;
}

#endif
