/* File helpers for tests: whole-file write/read and an in-memory file for
 * truncation sweeps. Test-only: failures to set up exit(2). */
#ifndef T_FILE_H
#define T_FILE_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((unused)) static void write_file(const char *path, const void *p, size_t n) {
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(p, 1, n, fp) != n || fclose(fp) != 0) {
    perror(path);
    exit(2);
  }
}

__attribute__((unused)) static uint8_t *read_file(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return NULL;
  fseek(fp, 0, SEEK_END);
  *n = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *p = malloc(*n ? *n : 1);
  if (fread(p, 1, *n, fp) != *n) abort();
  fclose(fp);
  return p;
}

/* A file for truncation runs: a memfd named by /proc/self/fd/N when the
 * kernel has them (every length is then an ftruncate in memory, not a file
 * write), else a file in tmpdir. Holds p[0..n) on return. */
__attribute__((unused)) static int trunc_file(const char *fallback, const void *p, size_t n,
                                              char *path, size_t cap) {
  int fd = memfd_create("bl_trunc", MFD_CLOEXEC);
  if (fd >= 0) {
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    if (access(path, R_OK) != 0) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    snprintf(path, cap, "%s", fallback);
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (fd < 0 || write(fd, p, n) != (ssize_t)n) {
    perror(path);
    exit(2);
  }
  return fd;
}

#endif
