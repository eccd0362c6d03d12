/* The CPU backend's device_info slot: the processor's model name from
 * /proc/cpuinfo and the host's memory from /proc/meminfo (MemTotal and
 * MemAvailable, the kernel's estimate of what can be allocated without
 * swapping), with sysconf as the fallback where /proc is missing. The rated
 * bandwidth of host memory is not something the OS reports, so peak_gb_s
 * stays 0 (unknown); SM count and compute capability are 0 on a CPU. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cpu_internal.h"

/* The value of the first "key<spaces/tabs>: value" line of a /proc file
 * into out (trailing newline removed); false when absent. */
static bool proc_field(const char *path, const char *key, char *out, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char line[512];
  size_t klen = strlen(key);
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    const char *p = line + klen;
    while (*p == ' ' || *p == '\t')
      p++;
    if (*p != ':') continue; /* a longer key with this prefix */
    p++;
    while (*p == ' ' || *p == '\t')
      p++;
    snprintf(out, cap, "%s", p);
    out[strcspn(out, "\n")] = '\0';
    found = true;
  }
  fclose(f);
  return found;
}

/* A /proc/meminfo field ("MemTotal", in kB there) in bytes; 0 when absent. */
static uint64_t meminfo_bytes(const char *key) {
  char v[64];
  unsigned long long kb = 0;
  if (!proc_field("/proc/meminfo", key, v, sizeof v) || sscanf(v, "%llu", &kb) != 1) return 0;
  return (uint64_t)kb * 1024;
}

static uint64_t sysconf_bytes(int name) {
  long pages = sysconf(name), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

bl_status cpu_device_info(const bk_backend *be, bk_device_info *out) {
  memset(out, 0, sizeof *out);
  if (!proc_field("/proc/cpuinfo", "model name", out->name, sizeof out->name) || !out->name[0])
    snprintf(out->name, sizeof out->name, "unknown CPU"); /* e.g. arm64, which has no such line */
  out->mem_total = meminfo_bytes("MemTotal");
  out->mem_free = meminfo_bytes("MemAvailable");
  if (!out->mem_total) out->mem_total = sysconf_bytes(_SC_PHYS_PAGES);
  if (!out->mem_free) out->mem_free = sysconf_bytes(_SC_AVPHYS_PAGES);
  return BL_OK;
}
