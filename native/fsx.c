/*
 * fsx.node: the sparse-file system calls Node does not expose, for src/block/native-fs.ts.
 *
 *   seekData(fd, offset)          lseek(SEEK_DATA)  → offset, or -1 on ENXIO (no data after offset)
 *   seekHole(fd, offset)          lseek(SEEK_HOLE)  → offset, or -1 on ENXIO (offset past EOF)
 *   punchHole(fd, offset, length) fallocate(PUNCH_HOLE|KEEP_SIZE)
 *   zeroRange(fd, offset, length) fallocate(ZERO_RANGE|KEEP_SIZE), with fallbacks (below)
 *   fsType(fd)                    fstatfs → f_type of the filesystem the OPEN FILE lives on
 *                                 (src/block/open-guard.ts refuses procfs/sysfs by it: a
 *                                 check of the descriptor cannot be raced by renaming the
 *                                 path, unlike statfs(path) after open; docs/security.md)
 *
 * Design:
 * - Only Node-API (node_api.h, from the `node-api-headers` package), so one binary works on
 *   every Node version that has NAPI_VERSION 8; no node-gyp, no Node source headers.
 * - Every call is async work (napi_create_async_work): the syscall runs on a libuv worker
 *   thread and the Promise settles on the main thread. fallocate can take long on big
 *   ranges and lseek can block on network filesystems; neither may stall the event loop.
 * - Errors reject with an Error whose `code` is the errno name ('EIO', 'ENOTSUP', ...),
 *   plus `errno` (negative, like Node's fs errors) and `syscall`. EOPNOTSUPP is reported as
 *   'ENOTSUP' (they are the same number on Linux, and 'ENOTSUP' is the name libuv/Node fs
 *   use and the one DeviceError / the NBD server map). Bad arguments reject with EINVAL.
 * - lseek moves the descriptor's file position. That is harmless here: Node's FileHandle
 *   I/O used by the devices always passes explicit positions (pread/pwrite).
 * - zeroRange decision: the range must read as zeros AND stay allocated (NBD NO_HOLE).
 *     1. fallocate(ZERO_RANGE|KEEP_SIZE)                         (ext4, xfs: fast, allocated)
 *     2. on EOPNOTSUPP: fallocate(PUNCH_HOLE|KEEP_SIZE) then fallocate(KEEP_SIZE) to
 *        re-allocate the range as unwritten (reads as zeros) extents    (e.g. tmpfs, btrfs)
 *     3. if either of those answers EOPNOTSUPP: pwrite zeros over the range (always works,
 *        slow, but correct; after a successful punch the write re-allocates the blocks).
 *   So zeroRange only fails on real I/O errors (EIO, ENOSPC, EBADF, ...).
 *   punchHole has no fallback: it rejects with ENOTSUP and the caller decides.
 * - length 0 resolves immediately (fallocate would answer EINVAL).
 *
 * Non-blocking fast path (synchronous, on the calling thread):
 *   preadNoWait(fd, buf, position)   preadv2(RWF_NOWAIT)  → bytes read (0 = EOF), or
 *       -1 when the kernel would have to wait (data not in the page cache: EAGAIN) or any
 *          other error (the caller retries on the threadpool, which reports real errors),
 *       -2 when this kernel/filesystem does not support RWF_NOWAIT (EOPNOTSUPP/ENOSYS/EINVAL):
 *          the caller stops trying.
 *   (Buffered pwritev2(RWF_NOWAIT) answers EOPNOTSUPP on ext4 here, so writes use
 *   pwriteBatch below instead.)
 *   RWF_NOWAIT never sleeps on I/O, so calling it from the event loop costs a memcpy from
 *   the page cache — much cheaper than a threadpool round trip (measured: ~2 µs vs
 *   ~6 µs per 4 KiB read, and no futex/eventfd wake-ups) — and a cache miss simply falls
 *   back to the asynchronous path.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/uio.h>
#include <sys/vfs.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

typedef enum { OP_SEEK_DATA, OP_SEEK_HOLE, OP_PUNCH_HOLE, OP_ZERO_RANGE, OP_FSTATFS } op_kind;

static const char *const OP_NAMES[] = {"seekData", "seekHole", "punchHole", "zeroRange", "fsType"};

typedef struct {
  op_kind op;
  int fd;
  int64_t offset;
  int64_t length;
  /* Results, written on the worker thread, read in complete(). */
  int64_t result;
  int err;               /* errno, 0 on success */
  const char *syscall;   /* which call failed */
  napi_deferred deferred;
  napi_async_work work;
} request;

/* Shared zero source for the write fallback; read-only, so safe across worker threads. */
#define ZERO_CHUNK (256 * 1024)
static const char ZEROS[ZERO_CHUNK];

/* ---- errno names ------------------------------------------------------------------- */

static const char *errno_name(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case ENODEV: return "ENODEV";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case EOPNOTSUPP: return "ENOTSUP"; /* == ENOTSUP on Linux; see the note at the top */
    case EOVERFLOW: return "EOVERFLOW";
    case EDQUOT: return "EDQUOT";
    default: return "EUNKNOWN";
  }
}

/* ---- the syscalls (worker thread: no napi_* calls here) ----------------------------- */

static int do_fallocate(int fd, int mode, int64_t offset, int64_t length) {
  int r;
  do {
    r = fallocate(fd, mode, (off_t)offset, (off_t)length);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? errno : 0;
}

static int write_zeros(int fd, int64_t offset, int64_t length) {
  while (length > 0) {
    size_t n = length < ZERO_CHUNK ? (size_t)length : ZERO_CHUNK;
    ssize_t w = pwrite(fd, ZEROS, n, (off_t)offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    offset += w;
    length -= w;
  }
  return 0;
}

static void zero_range(request *req) {
  const int keep = FALLOC_FL_KEEP_SIZE;
  req->syscall = "fallocate";
  req->err = do_fallocate(req->fd, FALLOC_FL_ZERO_RANGE | keep, req->offset, req->length);
  if (req->err != EOPNOTSUPP) return;

  req->err = do_fallocate(req->fd, FALLOC_FL_PUNCH_HOLE | keep, req->offset, req->length);
  if (req->err == 0) {
    req->err = do_fallocate(req->fd, keep, req->offset, req->length);
    if (req->err != EOPNOTSUPP) return;
  } else if (req->err != EOPNOTSUPP) {
    return;
  }

  req->syscall = "pwrite";
  req->err = write_zeros(req->fd, req->offset, req->length);
}

static void execute(napi_env env, void *data) {
  (void)env;
  request *req = data;
  switch (req->op) {
    case OP_SEEK_DATA:
    case OP_SEEK_HOLE: {
      req->syscall = "lseek";
      off_t r = lseek(req->fd, (off_t)req->offset, req->op == OP_SEEK_DATA ? SEEK_DATA : SEEK_HOLE);
      if (r >= 0) {
        req->result = r;
      } else if (errno == ENXIO) {
        req->result = -1; /* no data (or no hole) at or after offset: documented, not an error */
      } else {
        req->err = errno;
      }
      break;
    }
    case OP_PUNCH_HOLE:
      req->syscall = "fallocate";
      req->err = do_fallocate(req->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, req->offset,
                              req->length);
      break;
    case OP_ZERO_RANGE:
      zero_range(req);
      break;
    case OP_FSTATFS: {
      struct statfs st;
      int r;
      req->syscall = "fstatfs";
      do r = fstatfs(req->fd, &st);
      while (r < 0 && errno == EINTR);
      if (r < 0) req->err = errno;
      else req->result = (int64_t)(uint32_t)st.f_type; /* magic numbers are 32-bit; f_type may sign-extend */
      break;
    }
  }
}

/* ---- main-thread helpers ----------------------------------------------------------- */

/* Build Error(message) with .code, .errno, .syscall. Returns NULL if N-API itself failed. */
static napi_value make_error(napi_env env, const char *code, int err, const char *syscall,
                             const char *message) {
  napi_value code_v, msg_v, error;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg_v) != napi_ok) return NULL;
  if (napi_create_error(env, code_v, msg_v, &error) != napi_ok) return NULL;
  if (err != 0) {
    napi_value errno_v;
    if (napi_create_int32(env, -err, &errno_v) == napi_ok)
      napi_set_named_property(env, error, "errno", errno_v);
  }
  if (syscall != NULL) {
    napi_value sys_v;
    if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys_v) == napi_ok)
      napi_set_named_property(env, error, "syscall", sys_v);
  }
  return error;
}

static void complete(napi_env env, napi_status status, void *data) {
  request *req = data;
  if (status == napi_ok && req->err == 0) {
    napi_value result;
    if (req->op == OP_SEEK_DATA || req->op == OP_SEEK_HOLE || req->op == OP_FSTATFS)
      napi_create_int64(env, req->result, &result);
    else
      napi_get_undefined(env, &result);
    napi_resolve_deferred(env, req->deferred, result);
  } else {
    int err = status == napi_ok ? req->err : ECANCELED;
    const char *code = status == napi_ok ? errno_name(err) : "ECANCELED";
    char message[256];
    snprintf(message, sizeof message, "%s: %s %s(fd=%d, offset=%lld, length=%lld): %s", code,
             OP_NAMES[req->op], req->syscall ? req->syscall : "", req->fd, (long long)req->offset,
             (long long)req->length, strerror(err));
    napi_value error = make_error(env, code, err, req->syscall, message);
    if (error == NULL) napi_get_undefined(env, &error);
    napi_reject_deferred(env, req->deferred, error);
  }
  napi_delete_async_work(env, req->work);
  free(req);
}

/* Reads args[i] as a JS number that is a safe, non-negative integer. */
static int get_integer(napi_env env, napi_value value, double max, int64_t *out) {
  napi_valuetype type;
  double d;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) return 0;
  if (napi_get_value_double(env, value, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= max) || d != (double)(int64_t)d) return 0; /* also rejects NaN */
  return napi_get_value_int64(env, value, out) == napi_ok;
}

/* Common entry: validate (fd, offset[, length]), queue the work, return the Promise. */
static napi_value start(napi_env env, napi_callback_info info, op_kind op) {
  static const char *const ARG_NAMES[] = {"fd", "offset", "length"};
  const double MAX_SAFE = 9007199254740991.0; /* Number.MAX_SAFE_INTEGER */
  size_t want = op == OP_FSTATFS ? 1 : (op == OP_SEEK_DATA || op == OP_SEEK_HOLE) ? 2 : 3;
  size_t argc = 3;
  napi_value args[3], promise, name;
  napi_deferred deferred;

  if (napi_get_cb_info(env, info, &argc, args, NULL, NULL) != napi_ok) return NULL;
  if (napi_create_promise(env, &deferred, &promise) != napi_ok) return NULL;

  int64_t values[3] = {0, 0, 0};
  for (size_t i = 0; i < want; i++) {
    double max = i == 0 ? 2147483647.0 : MAX_SAFE;
    if (i >= argc || !get_integer(env, args[i], max, &values[i])) {
      char message[160];
      snprintf(message, sizeof message, "EINVAL: %s: argument %s must be a non-negative safe integer",
               OP_NAMES[op], ARG_NAMES[i]);
      napi_value error = make_error(env, "EINVAL", EINVAL, NULL, message);
      if (error == NULL) napi_get_undefined(env, &error);
      napi_reject_deferred(env, deferred, error);
      return promise;
    }
  }
  if (want == 3 && values[1] + values[2] > (int64_t)MAX_SAFE) {
    napi_value error = make_error(env, "EINVAL", EINVAL, NULL, "EINVAL: offset + length overflows");
    if (error == NULL) napi_get_undefined(env, &error);
    napi_reject_deferred(env, deferred, error);
    return promise;
  }
  if (want == 3 && values[2] == 0) { /* nothing to do; fallocate would say EINVAL */
    napi_value undef;
    napi_get_undefined(env, &undef);
    napi_resolve_deferred(env, deferred, undef);
    return promise;
  }

  request *req = calloc(1, sizeof *req);
  if (req == NULL) {
    napi_value error = make_error(env, "ENOMEM", ENOMEM, NULL, "ENOMEM: out of memory");
    if (error == NULL) napi_get_undefined(env, &error);
    napi_reject_deferred(env, deferred, error);
    return promise;
  }
  req->op = op;
  req->fd = (int)values[0];
  req->offset = values[1];
  req->length = values[2];
  req->deferred = deferred;

  if (napi_create_string_utf8(env, OP_NAMES[op], NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute, complete, req, &req->work) != napi_ok ||
      napi_queue_async_work(env, req->work) != napi_ok) {
    if (req->work != NULL) napi_delete_async_work(env, req->work);
    free(req);
    napi_value error = make_error(env, "EIO", 0, NULL, "EIO: could not queue async work");
    if (error == NULL) napi_get_undefined(env, &error);
    napi_reject_deferred(env, deferred, error);
  }
  return promise;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return start(env, info, OP_SEEK_DATA);
}
static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return start(env, info, OP_SEEK_HOLE);
}
static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return start(env, info, OP_PUNCH_HOLE);
}
static napi_value zero_range_js(napi_env env, napi_callback_info info) {
  return start(env, info, OP_ZERO_RANGE);
}
static napi_value fs_type(napi_env env, napi_callback_info info) {
  return start(env, info, OP_FSTATFS);
}

/* (fd, Uint8Array, position) for the NOWAIT calls; returns 0 on bad arguments. */
static int nowait_args(napi_env env, napi_callback_info info, int *fd, void **data, size_t *len, int64_t *pos) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3) return 0;
  int32_t fd32;
  if (napi_get_value_int32(env, argv[0], &fd32) != napi_ok || fd32 < 0) return 0;
  napi_typedarray_type type;
  size_t length, byte_offset;
  napi_value arraybuffer;
  void *base;
  if (napi_get_typedarray_info(env, argv[1], &type, &length, &base, &arraybuffer, &byte_offset) != napi_ok ||
      type != napi_uint8_array)
    return 0;
  if (napi_get_value_int64(env, argv[2], pos) != napi_ok || *pos < 0) return 0;
  *fd = fd32;
  *data = base; /* already points at the view's first byte */
  *len = length;
  return 1;
}

static napi_value nowait_result(napi_env env, ssize_t n) {
  int64_t r = n;
  if (n < 0) r = (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) ? -2 : -1;
  napi_value out;
  napi_create_int64(env, r, &out);
  return out;
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  int fd;
  void *data;
  size_t len;
  int64_t pos;
  if (!nowait_args(env, info, &fd, &data, &len, &pos)) return nowait_result(env, (errno = EINVAL, -1));
  struct iovec iov = {data, len};
  ssize_t n;
  do n = preadv2(fd, &iov, 1, pos, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  return nowait_result(env, n);
}

/*
 * seekDataSync(fd, offset) / seekHoleSync(fd, offset): lseek on the calling thread, same
 * answers as seekData/seekHole (-1 on ENXIO), other errors thrown. For the image tools
 * (map/check/info), which have no event loop to keep responsive: a `map` of a 1 TiB
 * overlay with 10 000 scattered writes asks ~20 000 of them, and a threadpool round trip
 * each left the process idle most of the time.
 */
static napi_value seek_sync(napi_env env, napi_callback_info info, int whence) {
  size_t argc = 2;
  napi_value argv[2];
  int64_t fd, offset;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      !get_integer(env, argv[0], 2147483647.0, &fd) || !get_integer(env, argv[1], 9007199254740991.0, &offset)) {
    napi_throw(env, make_error(env, "EINVAL", EINVAL, "lseek", "lseek: bad arguments (fd, offset)"));
    return NULL;
  }
  off_t r = lseek((int)fd, (off_t)offset, whence);
  if (r < 0 && errno != ENXIO) {
    int err = errno;
    char message[96];
    snprintf(message, sizeof message, "%s: lseek failed", errno_name(err));
    napi_throw(env, make_error(env, errno_name(err), err, "lseek", message));
    return NULL;
  }
  napi_value out;
  napi_create_int64(env, r < 0 ? -1 : (int64_t)r, &out);
  return out;
}

static napi_value seek_data_sync(napi_env env, napi_callback_info info) {
  return seek_sync(env, info, SEEK_DATA);
}
static napi_value seek_hole_sync(napi_env env, napi_callback_info info) {
  return seek_sync(env, info, SEEK_HOLE);
}

/*
 * pwriteBatch(fd, buffers: Uint8Array[], positions: number[]) → Promise<number[]>
 *
 * Runs every pwrite of the batch, in order, in ONE threadpool job: result[i] is the byte
 * count (always the full length) or -errno. Submitting one job per write made the main
 * thread spend ~30% of its time in uv_queue_work's futex wake-ups at QD32; a batch per
 * event-loop turn pays that once. The buffers are kept alive by references held until
 * the job completes.
 */
typedef struct {
  int fd;
  size_t count;
  void **data;
  size_t *lengths;
  int64_t *positions;
  int64_t *results;
  napi_ref *refs;
  napi_deferred deferred;
  napi_async_work work;
} batch;

static void batch_free(napi_env env, batch *b) {
  if (b->refs != NULL) {
    for (size_t i = 0; i < b->count; i++)
      if (b->refs[i] != NULL) napi_delete_reference(env, b->refs[i]);
  }
  free(b->refs);
  free(b->data);
  free(b->lengths);
  free(b->positions);
  free(b->results);
  free(b);
}

static void batch_execute(napi_env env, void *arg) {
  (void)env;
  batch *b = arg;
  for (size_t i = 0; i < b->count; i++) {
    size_t done = 0;
    int64_t r = 0;
    while (done < b->lengths[i]) {
      ssize_t n = pwrite(b->fd, (char *)b->data[i] + done, b->lengths[i] - done, b->positions[i] + (int64_t)done);
      if (n < 0) {
        if (errno == EINTR) continue;
        r = -errno;
        break;
      }
      done += (size_t)n;
    }
    b->results[i] = r < 0 ? r : (int64_t)done;
  }
}

static void batch_complete(napi_env env, napi_status status, void *arg) {
  batch *b = arg;
  napi_value out;
  if (status == napi_ok && napi_create_array_with_length(env, b->count, &out) == napi_ok) {
    for (size_t i = 0; i < b->count; i++) {
      napi_value v;
      napi_create_int64(env, b->results[i], &v);
      napi_set_element(env, out, (uint32_t)i, v);
    }
    napi_resolve_deferred(env, b->deferred, out);
  } else {
    napi_value error = make_error(env, "EIO", 0, NULL, "EIO: pwriteBatch was cancelled");
    if (error == NULL) napi_get_undefined(env, &error);
    napi_reject_deferred(env, b->deferred, error);
  }
  napi_delete_async_work(env, b->work);
  batch_free(env, b);
}

static napi_value pwrite_batch(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], promise;
  napi_deferred deferred;
  if (napi_create_promise(env, &deferred, &promise) != napi_ok) return NULL;
  batch *b = calloc(1, sizeof *b);
  uint32_t count = 0, count2 = 0;
  int32_t fd = -1;
  int ok = b != NULL && napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc >= 3 &&
           napi_get_value_int32(env, argv[0], &fd) == napi_ok && fd >= 0 &&
           napi_get_array_length(env, argv[1], &count) == napi_ok &&
           napi_get_array_length(env, argv[2], &count2) == napi_ok && count == count2 && count > 0;
  if (ok) {
    b->fd = fd;
    b->count = count;
    b->data = calloc(count, sizeof *b->data);
    b->lengths = calloc(count, sizeof *b->lengths);
    b->positions = calloc(count, sizeof *b->positions);
    b->results = calloc(count, sizeof *b->results);
    b->refs = calloc(count, sizeof *b->refs);
    ok = b->data && b->lengths && b->positions && b->results && b->refs;
  }
  for (uint32_t i = 0; ok && i < count; i++) {
    napi_value buf, pos, arraybuffer;
    napi_typedarray_type type;
    size_t length, byte_offset;
    void *base;
    ok = napi_get_element(env, argv[1], i, &buf) == napi_ok &&
         napi_get_typedarray_info(env, buf, &type, &length, &base, &arraybuffer, &byte_offset) == napi_ok &&
         type == napi_uint8_array && napi_get_element(env, argv[2], i, &pos) == napi_ok &&
         napi_get_value_int64(env, pos, &b->positions[i]) == napi_ok && b->positions[i] >= 0 &&
         napi_create_reference(env, buf, 1, &b->refs[i]) == napi_ok;
    if (ok) {
      b->data[i] = base;
      b->lengths[i] = length;
    }
  }
  napi_value name;
  if (ok) {
    b->deferred = deferred;
    ok = napi_create_string_utf8(env, "pwriteBatch", NAPI_AUTO_LENGTH, &name) == napi_ok &&
         napi_create_async_work(env, NULL, name, batch_execute, batch_complete, b, &b->work) == napi_ok &&
         napi_queue_async_work(env, b->work) == napi_ok;
    if (ok) return promise;
    if (b->work != NULL) napi_delete_async_work(env, b->work);
  }
  if (b != NULL) batch_free(env, b);
  napi_value error = make_error(env, "EINVAL", EINVAL, NULL, "EINVAL: pwriteBatch(fd, Uint8Array[], number[]) with equal, non-empty lists");
  if (error == NULL) napi_get_undefined(env, &error);
  napi_reject_deferred(env, deferred, error);
  return promise;
}

/*
 * mallocTrim(): give free heap memory back to the kernel (glibc malloc_trim). Freed large
 * buffers (pooled READ/WRITE memory of idle connections) otherwise stay resident in
 * glibc's heap; the server calls this from its idle sweep, after a GC. Returns whether
 * memory was released (false where malloc_trim does not exist).
 */
static napi_value malloc_trim_js(napi_env env, napi_callback_info info) {
  (void)info;
  int released = 0;
#ifdef __GLIBC__
  released = malloc_trim(0);
#endif
  napi_value out;
  napi_get_boolean(env, released != 0, &out);
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"zeroRange", NULL, zero_range_js, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"preadNoWait", NULL, pread_nowait, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"seekDataSync", NULL, seek_data_sync, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"seekHoleSync", NULL, seek_hole_sync, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"pwriteBatch", NULL, pwrite_batch, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"mallocTrim", NULL, malloc_trim_js, NULL, NULL, NULL, napi_default_jsproperty, NULL},
      {"fsType", NULL, fs_type, NULL, NULL, NULL, napi_default_jsproperty, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok)
    return NULL;
  return exports;
}
