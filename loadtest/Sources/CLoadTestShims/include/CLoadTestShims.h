#ifndef CLOADTESTSHIMS_H
#define CLOADTESTSHIMS_H
#include <stdint.h>
#include <sys/types.h>

/// epoll_create1(EPOLL_CLOEXEC).
int lt_epoll_create(void);
/// Adds or modifies `fd` with `want_read`/`want_write` (level-triggered); `op` 0 = add, 1 = modify, 2 = delete.
int lt_epoll_ctl(int epfd, int op, int fd, int want_read, int want_write);
/// epoll_wait, unpacked: for each ready fd, `fds[i]` and `flags[i]` (bit 0 readable or error/hangup, bit 1 writable).
int lt_epoll_wait(int epfd, int *fds, uint32_t *flags, int max, int timeout_ms);
/// A non-blocking TCP socket bound to `source` (IPv4 dotted, port chosen at connect time through
/// IP_BIND_ADDRESS_NO_PORT so each source address has its own ephemeral port range), connecting to
/// `dest:port`. Returns the fd (connect in progress) or -errno.
int lt_connect(const char *source, const char *dest, int port);
/// Pending socket error (SO_ERROR) after a non-blocking connect.
int lt_socket_error(int fd);
/// Sets O_NONBLOCK.
int lt_set_nonblocking(int fd);
/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of this machine.
uint64_t lt_now_ns(void);
/// Current errno.
int lt_errno(void);
/// RLIMIT_NOFILE soft limit raised to the hard limit; returns the new soft limit.
long lt_raise_nofile(void);
/// A free TCP port on 127.0.0.1 (bound and released).
int lt_free_port(void);
/// Remembers a server process the harness started, so that SIGINT/SIGTERM/SIGHUP stop it (by PID) before the
/// harness exits. At most 64 at once.
void lt_register_child(int pid);
void lt_unregister_child(int pid);
/// Installs that handler (async-signal-safe: kill(2) and _exit(2) only).
void lt_install_cleanup_handler(void);
/// Index of the first `needle` (`m` bytes) in `hay` (`n` bytes), or -1 (memmem, a GNU extension).
long lt_find(const void *hay, size_t n, const void *needle, size_t m);
#endif
