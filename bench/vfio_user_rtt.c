/*
 * vfio-user round-trip timer: the client side of a config-space REGION_READ,
 * done the way QEMU's vfio-user client does it (hw/vfio-user/proxy.c): the
 * request goes out in one sendmsg, the reply is read as the 16-byte header
 * (recvmsg with room for fds) and then the body.
 *
 * The program knows nothing of the vfio-user wire format: bench/vfio_user_c.py
 * negotiates VERSION on the socket, builds the request from the construct
 * declarations in vdev/vfio_user/wire.py, and passes the connected socket, the
 * request bytes and the expected reply (its header says how long it is).
 *
 *   vfio_user_rtt FD N REQUEST_HEX EXPECTED_REPLY_HEX
 *
 * Prints one round-trip time in nanoseconds per line; exits 1 on any error
 * or on a reply that differs from the expected one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE 16
#define MAX_FDS 16

static size_t unhex(const char *s, unsigned char *out, size_t max)
{
	size_t n = strlen(s) / 2;

	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		sscanf(s + 2 * i, "%2hhx", &out[i]);
	return n;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Read exactly len bytes; the first read carries a control buffer like QEMU's. */
static int read_exact(int fd, unsigned char *buf, size_t len, int with_cmsg)
{
	char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
	size_t got = 0;

	while (got < len) {
		struct iovec iov = { buf + got, len - got };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		if (with_cmsg) {
			msg.msg_control = control;
			msg.msg_controllen = sizeof(control);
		}
		n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static unsigned char req[4096], want[4096], got[4096];
	size_t req_len, want_len;
	long n;
	int fd;

	if (argc != 5) {
		fprintf(stderr, "usage: %s FD N REQUEST_HEX EXPECTED_REPLY_HEX\n", argv[0]);
		return 2;
	}
	fd = atoi(argv[1]);
	n = atol(argv[2]);
	req_len = unhex(argv[3], req, sizeof(req));
	want_len = unhex(argv[4], want, sizeof(want));
	if (!req_len || want_len < HEADER_SIZE)
		return 2;
	for (long i = 0; i < n; i++) {
		struct iovec iov = { req, req_len };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
		int64_t t0 = now_ns();

		if (sendmsg(fd, &msg, 0) != (ssize_t)req_len)
			return 1;
		if (read_exact(fd, got, HEADER_SIZE, 1) ||
		    read_exact(fd, got + HEADER_SIZE, want_len - HEADER_SIZE, 0))
			return 1;
		int64_t t1 = now_ns();

		if (memcmp(got, want, want_len)) {
			fprintf(stderr, "reply %ld differs from the expected one\n", i);
			return 1;
		}
		printf("%lld\n", (long long)(t1 - t0));
	}
	return 0;
}
