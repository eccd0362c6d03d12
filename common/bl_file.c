/* Read-only file mappings. The descriptor is closed at once: the mapping
 * outlives it. A file that shrinks while mapped can still raise SIGBUS;
 * model files are not expected to change under a running process. */
#include "bl_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

bl_status bl_map_file(const char *path, size_t min_size, const char *what, bl_map *out,
                      bl_err *err) {
  *out = (bl_map){0};
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bl_fail(err, BL_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  bl_status st = BL_OK;
  if (fstat(fd, &sb) != 0) {
    st = bl_fail(err, BL_EIO, "%s: cannot stat: %s", path, strerror(errno));
  } else if (!S_ISREG(sb.st_mode)) {
    st = bl_fail(err, BL_EIO, "%s: not a regular file", path);
  } else if ((uint64_t)sb.st_size < min_size) {
    st = bl_fail(err, BL_EFORMAT, "%s: file is %lld bytes, too short for %s", path,
                 (long long)sb.st_size, what);
  } else if ((uint64_t)sb.st_size > SIZE_MAX) {
    st = bl_fail(err, BL_ERANGE, "%s: file too large to map", path);
  } else {
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
      st = bl_fail(err, BL_EIO, "%s: cannot map: %s", path, strerror(errno));
    else
      *out = (bl_map){m, (size_t)sb.st_size};
  }
  close(fd);
  return st;
}

void bl_unmap(bl_map *m) {
  if (m->data) munmap((void *)m->data, m->size);
  *m = (bl_map){0};
}
