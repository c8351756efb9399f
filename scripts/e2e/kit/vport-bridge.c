/*
 * vport-bridge: the guest half of the kernel-client tests' transport (no IP networking).
 *
 *   vport-bridge SOCKET PORT_DEVICE...
 *
 * Listens on the Unix socket SOCKET; every accepted connection (one per nbd-client
 * connection, so `-C 4` makes four) is bridged to the first PORT_DEVICE (a virtio-serial
 * port, /dev/vportNpM) not already in use, by a forked child that copies bytes both ways
 * until either side ends. Opening the port is what tells the host side to open a fresh
 * server connection (QEMU's VSERPORT_CHANGE event), and closing it ends that connection,
 * so one port carries exactly one NBD connection at a time (see docs/kernel-client.md).
 *
 * Built with `cc -static` by scripts/e2e/kernel-kit.sh: the initramfs has no C library.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PORTS 16

static int write_all(int to, const char *buf, ssize_t n) {
  for (ssize_t off = 0; off < n;) {
    ssize_t w = write(to, buf + off, (size_t)(n - off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    off += w;
  }
  return 0;
}

/* nbd side → port; the nbd side's end of file ends the session. */
static int copy_some(int from, int to) {
  char buf[65536];
  ssize_t n = read(from, buf, sizeof buf);
  if (n <= 0) return -1;
  return write_all(to, buf, n);
}

static void relay(int sock, const char *port) {
  int dev = open(port, O_RDWR);
  if (dev < 0) {
    fprintf(stderr, "vport-bridge: open %s: %s\n", port, strerror(errno));
    _exit(1);
  }
  /*
   * A port has no end of file of its own: while the host side is not attached, the guest
   * driver reports readable and read() returns 0 (virtio_console), and that happens both
   * before the host attaches (our open is what makes it attach) and in a short race after
   * it did, when the first data overtakes the "host connected" control message. So an
   * empty read only ends the session after it persisted: 60 s before the first byte (the
   * server speaks first in NBD), 2 s after it (the host really went away). The nbd side
   * closing ends it at once (nbd-client -d, or the kernel giving up).
   */
  char buf[65536];
  int seen = 0, empty = 0;
  struct pollfd p[2] = {{.fd = sock, .events = POLLIN}, {.fd = dev, .events = POLLIN}};
  for (;;) {
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents && copy_some(sock, dev) < 0) break;
    if (p[1].revents) {
      ssize_t n = read(dev, buf, sizeof buf);
      if (n > 0) {
        seen = 1;
        empty = 0;
        if (write_all(sock, buf, n) < 0) break;
      } else if (n == 0) {
        if (++empty > (seen ? 200 : 6000)) {
          fprintf(stderr, "vport-bridge: no host on %s\n", port);
          break;
        }
        usleep(10000);
      } else if (errno != EINTR) {
        break;
      }
    }
  }
  close(dev);
  close(sock);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc < 3 || argc - 2 > MAX_PORTS) {
    fprintf(stderr, "usage: vport-bridge SOCKET PORT_DEVICE... (at most %d ports)\n", MAX_PORTS);
    return 2;
  }
  int nports = argc - 2;
  pid_t busy[MAX_PORTS] = {0};
  int last = -1;
  int lsock = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  unlink(argv[1]);
  if (lsock < 0 || bind(lsock, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lsock, 16) < 0) {
    fprintf(stderr, "vport-bridge: listen %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    int c = accept(lsock, NULL, NULL);
    if (c < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    int slot = -1;
    while (slot < 0) {
      pid_t done;
      int st;
      /* Reap finished relays (their ports are free again); block when every port is busy. */
      while ((done = waitpid(-1, &st, WNOHANG)) > 0)
        for (int i = 0; i < nports; i++)
          if (busy[i] == done) busy[i] = 0;
      /* Round robin from the port after the last one used: a port just closed gets time
       * before it carries a new connection (the host relay may still be tearing the old
       * one down; a reused port once delivered the old session's last bytes). */
      for (int k = 0; k < nports && slot < 0; k++) {
        int i = (last + 1 + k) % nports;
        if (!busy[i]) slot = i;
      }
      if (slot < 0) {
        done = waitpid(-1, &st, 0);
        for (int i = 0; i < nports; i++)
          if (busy[i] == done) busy[i] = 0;
      }
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(lsock);
      relay(c, argv[2 + slot]);
    }
    if (pid > 0) busy[slot] = pid;
    last = slot;
    close(c);
  }
}
