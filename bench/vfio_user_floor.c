/*
 * The round-trip floor for a vfio-user server: a minimal blocking server in C
 * that does per request what libvfio-user's socket transport does
 * (lib/tran_sock.c: the 16-byte header with one recvmsg that also collects
 * fds, the body with one recv(MSG_WAITALL), the reply with one sendmsg of
 * header + payload iovecs), with config space as a plain 4 KiB array like
 * libvfio-user's own config space: REGION_READ of region 7 is a memcpy out
 * of it, REGION_WRITE a memcpy into it.  Everything else gets an ENOTSUP error
 * reply.  No device model, no validation beyond bounds: it is the floor any
 * server on this machine pays, not a server.
 *
 *   vfio_user_floor FD MODE CONFIG_HEX
 *
 * FD is the connected server end of the socket; MODE is "blocking" (sleep in
 * recvmsg, libvfio-user's vfu_run_ctx in its default blocking mode: three
 * syscalls per request) or "poll" (poll() for POLLIN first, the way a server
 * driven by an event loop waits: four).  CONFIG_HEX is the config space
 * image.  Serves until the client closes the socket; exits 1 on a broken
 * stream.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define HEADER_SIZE 16
#define ACCESS_SIZE 16
#define MAX_FDS 16
#define MAX_BODY 4096
#define CONFIG_SIZE 4096
#define REGION_CONFIG 7
#define CMD_REGION_READ 9
#define CMD_REGION_WRITE 10
#define FLAG_REPLY 0x1
#define FLAG_NO_REPLY 0x10
#define FLAG_ERROR 0x20

struct header {
	uint16_t id;
	uint16_t cmd;
	uint32_t size;
	uint32_t flags;
	uint32_t error;
};

struct access {
	uint64_t offset;
	uint32_t region;
	uint32_t count;
};

static unsigned char config[CONFIG_SIZE];

static int reply(int fd, struct header *req, const void *payload, size_t len, int err)
{
	struct header hdr = {
		.id = req->id, .cmd = req->cmd, .size = HEADER_SIZE + (uint32_t)len,
		.flags = FLAG_REPLY | (err ? FLAG_ERROR : 0), .error = (uint32_t)err,
	};
	struct iovec iov[2] = { { &hdr, HEADER_SIZE }, { (void *)payload, len } };
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };

	if (req->flags & FLAG_NO_REPLY)
		return 0;
	return sendmsg(fd, &msg, 0) == (ssize_t)(HEADER_SIZE + len) ? 0 : -1;
}

static int serve_one(int fd)
{
	static unsigned char body[MAX_BODY], out[ACCESS_SIZE + MAX_BODY];
	char control[CMSG_SPACE(MAX_FDS * sizeof(int))];
	struct header hdr;
	struct iovec iov = { &hdr, HEADER_SIZE };
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control, .msg_controllen = sizeof(control),
	};
	struct access acc;
	size_t len;
	ssize_t n;

	n = recvmsg(fd, &msg, 0);	/* flags as libvfio-user's get_msg() */
	if (n == 0)
		return 1;	/* orderly close */
	if (n != HEADER_SIZE || hdr.size < HEADER_SIZE || hdr.size - HEADER_SIZE > MAX_BODY)
		return -1;
	len = hdr.size - HEADER_SIZE;
	if (len && recv(fd, body, len, MSG_WAITALL) != (ssize_t)len)
		return -1;
	if (len < ACCESS_SIZE || (hdr.cmd != CMD_REGION_READ && hdr.cmd != CMD_REGION_WRITE))
		return reply(fd, &hdr, NULL, 0, ENOTSUP);
	memcpy(&acc, body, ACCESS_SIZE);
	if (acc.region != REGION_CONFIG || acc.count > CONFIG_SIZE ||
	    acc.offset > CONFIG_SIZE - acc.count)
		return reply(fd, &hdr, NULL, 0, EINVAL);
	if (hdr.cmd == CMD_REGION_WRITE) {
		if (len != ACCESS_SIZE + acc.count)
			return reply(fd, &hdr, NULL, 0, EINVAL);
		memcpy(config + acc.offset, body + ACCESS_SIZE, acc.count);
		return reply(fd, &hdr, body, ACCESS_SIZE, 0);
	}
	memcpy(out, body, ACCESS_SIZE);
	memcpy(out + ACCESS_SIZE, config + acc.offset, acc.count);
	return reply(fd, &hdr, out, ACCESS_SIZE + acc.count, 0);
}

int main(int argc, char **argv)
{
	int fd, use_poll, rc;
	const char *hex;

	if (argc != 4 || strlen(argv[3]) != 2 * CONFIG_SIZE) {
		fprintf(stderr, "usage: %s FD blocking|poll CONFIG_HEX(4096 bytes)\n", argv[0]);
		return 2;
	}
	fd = atoi(argv[1]);
	use_poll = !strcmp(argv[2], "poll");
	hex = argv[3];
	for (int i = 0; i < CONFIG_SIZE; i++)
		sscanf(hex + 2 * i, "%2hhx", &config[i]);
	for (;;) {
		if (use_poll) {
			struct pollfd p = { .fd = fd, .events = POLLIN };

			if (poll(&p, 1, -1) < 0) {
				if (errno == EINTR)
					continue;
				return 1;
			}
		}
		rc = serve_one(fd);
		if (rc > 0)
			return 0;
		if (rc < 0) {
			fprintf(stderr, "vfio_user_floor: broken stream\n");
			return 1;
		}
	}
}
