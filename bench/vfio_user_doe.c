/*
 * DOE exchanges over vfio-user from C: the config accesses of Linux's
 * drivers/pci/doe.c (pci_doe_send_req, the DATA_OBJECT_READY poll,
 * pci_doe_recv_resp), each a REGION_READ or REGION_WRITE of region 7 sent and
 * received the way QEMU does (one sendmsg; the reply's header with one recvmsg
 * that has room for fds, then its body).  With no interpreter on the client
 * side, the time of an exchange is the server's and the kernel's.
 *
 *   vfio_user_doe FD N CAP REQUEST_HEX RESPONSE_DW
 *
 * FD is a connected socket on which VERSION is done; CAP the DOE capability's
 * config offset; REQUEST_HEX the request data object (DOE header included, DW
 * padded); RESPONSE_DW the length the response object must have.  Prints the
 * config accesses of one exchange, then one exchange time in ns per line;
 * exits 1 on an error reply, a DOE error or a response of another length.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define HEADER_SIZE 16
#define MAX_FDS 16
#define REGION_CONFIG 7
#define CMD_REGION_READ 9
#define CMD_REGION_WRITE 10
#define FLAG_ERROR 0x20
#define DOE_CTRL 0x08
#define DOE_STATUS 0x0c
#define DOE_WRITE 0x10
#define DOE_READ 0x14
#define STATUS_BUSY 0x1u
#define STATUS_ERROR 0x4u
#define STATUS_READY 0x80000000u
#define CTRL_GO 0x80000000u

struct msg {
	uint16_t id, cmd;
	uint32_t size, flags, error;
	uint64_t offset;
	uint32_t region, count;
	uint32_t data;
} __attribute__((packed));

static int fd;
static uint16_t next_id;
static long accesses;

static int read_exact(void *buf, size_t len, int with_cmsg)
{
	char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
	size_t got = 0;

	while (got < len) {
		struct iovec iov = { (char *)buf + got, len - got };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		if (with_cmsg) {
			m.msg_control = control;
			m.msg_controllen = sizeof(control);
		}
		n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

/* One config access: a DW read (write == 0) or write; exits on any failure. */
static uint32_t access(uint32_t offset, int write, uint32_t value)
{
	struct msg req = {
		.id = next_id++, .cmd = write ? CMD_REGION_WRITE : CMD_REGION_READ,
		.size = write ? 36 : 32, .offset = offset, .region = REGION_CONFIG,
		.count = 4, .data = value,
	};
	struct msg rep;
	struct iovec iov = { &req, req.size };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

	accesses++;
	if (sendmsg(fd, &m, 0) != (ssize_t)req.size || read_exact(&rep, HEADER_SIZE, 1))
		exit(1);
	if (rep.flags & FLAG_ERROR || rep.id != req.id || rep.size < HEADER_SIZE ||
	    rep.size > sizeof(rep)) {
		fprintf(stderr, "access %#x: error reply (errno %u)\n", offset, rep.error);
		exit(1);
	}
	if (read_exact((char *)&rep + HEADER_SIZE, rep.size - HEADER_SIZE, 0))
		exit(1);
	return write ? 0 : rep.data;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	static uint32_t request[1024];
	uint32_t cap, status, length, want;
	size_t dws;
	long n;

	if (argc != 6) {
		fprintf(stderr, "usage: %s FD N CAP REQUEST_HEX RESPONSE_DW\n", argv[0]);
		return 2;
	}
	fd = atoi(argv[1]);
	n = atol(argv[2]);
	cap = (uint32_t)strtoul(argv[3], NULL, 0);
	dws = strlen(argv[4]) / 8;
	want = (uint32_t)strtoul(argv[5], NULL, 0);
	if (!dws || dws > 1024 || strlen(argv[4]) % 8)
		return 2;
	for (size_t i = 0; i < dws; i++)
		sscanf(argv[4] + 8 * i, "%2hhx%2hhx%2hhx%2hhx", (unsigned char *)&request[i],
		       (unsigned char *)&request[i] + 1, (unsigned char *)&request[i] + 2,
		       (unsigned char *)&request[i] + 3);
	for (long e = 0; e < n; e++) {
		int64_t t0 = now_ns();

		accesses = 0;
		/* pci_doe_send_req: BUSY/ERROR check, the object, GO. */
		status = access(cap + DOE_STATUS, 0, 0);
		if (status & (STATUS_BUSY | STATUS_ERROR))
			return 1;
		for (size_t i = 0; i < dws; i++)
			access(cap + DOE_WRITE, 1, request[i]);
		access(cap + DOE_CTRL, 1, CTRL_GO);
		/* Poll for DATA_OBJECT_READY (the device answers at GO). */
		do {
			status = access(cap + DOE_STATUS, 0, 0);
			if (status & STATUS_ERROR)
				return 1;
		} while (!(status & STATUS_READY));
		/* pci_doe_recv_resp: header DWs, payload, DOR check before the last ack. */
		access(cap + DOE_READ, 0, 0);
		access(cap + DOE_READ, 1, 0);
		length = access(cap + DOE_READ, 0, 0) & 0x3ffff;
		access(cap + DOE_READ, 1, 0);
		if (length != want) {
			fprintf(stderr, "response of %u DW, wanted %u\n", length, want);
			return 1;
		}
		for (uint32_t i = 2; i < length; i++) {
			access(cap + DOE_READ, 0, 0);
			if (i == length - 1 && !(access(cap + DOE_STATUS, 0, 0) & STATUS_READY))
				return 1;
			access(cap + DOE_READ, 1, 0);
		}
		if (access(cap + DOE_STATUS, 0, 0) & STATUS_ERROR)
			return 1;
		if (!e)
			printf("%ld\n", accesses);
		printf("%lld\n", (long long)(now_ns() - t0));
	}
	return 0;
}
