// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * toa_bench - load generator and meter for the TOA/UOA cost figures
 * (bench/bench_kmod.py).  One JSON object per line on stdout.
 *
 * toa_bench tcp-server [-6] [--count N] [--calls M] PORT
 *	accept N connections; for each: accept(), getpeername(), close().
 *	Reports the accept rate from the first accept to the last
 *	(accept + getpeername per connection).  The last connection stays
 *	open while getpeername() is called M times on it: ns per call.
 * toa_bench tcp-client [--opt CIP:CPORT VIP:VPORT] [--count N] HOST PORT
 *	N sequential connections, each carrying the option (set_ip_opt
 *	before connect), each waiting for the server to close first.
 * toa_bench udp-server [-6] [--count N] [--idle-ms MS] PORT
 *	receive until N datagrams arrived or none came for MS ms; reports the
 *	datagrams/s from the first to the last.
 * toa_bench udp-client [--opt CIP:CPORT VIP:VPORT] [--count N] [--size B] HOST PORT
 *	send N datagrams as fast as possible, every one carrying the option.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ip_opt.h"
#include "util.h"

static void usage(void)
{
	fprintf(stderr,
		"usage: toa_bench tcp-server [-6] [--count N] [--calls M] PORT\n"
		"       toa_bench tcp-client [--opt CIP:CPORT VIP:VPORT] [--count N] HOST PORT\n"
		"       toa_bench udp-server [-6] [--count N] [--idle-ms MS] PORT\n"
		"       toa_bench udp-client [--opt CIP:CPORT VIP:VPORT] [--count N]"
		" [--size B] HOST PORT\n");
	exit(2);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *op)
{
	int err = errno;

	printf("{\"event\":\"error\",\"op\":\"%s\",\"errno\":%d,\"error\":\"%s\"}\n",
	       op, err, errno_name(err));
	fflush(stdout);
	return 1;
}

struct args {
	int six;
	unsigned long count, calls, idle_ms, size;
	const char *copt, *vopt;
	const char *host, *port;
};

static void parse(int argc, char **argv, struct args *a, int client)
{
	static const struct option opts[] = {
		{ "count", required_argument, NULL, 'c' },
		{ "calls", required_argument, NULL, 'm' },
		{ "idle-ms", required_argument, NULL, 'i' },
		{ "size", required_argument, NULL, 's' },
		{ "opt", required_argument, NULL, 'o' },
		{ NULL, 0, NULL, 0 },
	};
	int o;

	while ((o = getopt_long(argc, argv, "6", opts, NULL)) != -1) {
		switch (o) {
		case '6': a->six = 1; break;
		case 'c': a->count = parse_ulong(optarg, "count"); break;
		case 'm': a->calls = parse_ulong(optarg, "calls"); break;
		case 'i': a->idle_ms = parse_ulong(optarg, "idle-ms"); break;
		case 's': a->size = parse_ulong(optarg, "size"); break;
		case 'o':
			a->copt = optarg;
			if (optind >= argc)
				usage();
			a->vopt = argv[optind++];
			break;
		default: usage();
		}
	}
	if (optind + (client ? 2 : 1) != argc || a->count < 1)
		usage();
	if (client) {
		a->host = argv[optind];
		a->port = argv[optind + 1];
	} else {
		a->port = argv[optind];
	}
}

static int listener(const struct args *a, int type)
{
	struct sockaddr_storage ss;
	int fd, one = 1, zero = 0, big = 4 << 20;

	if (parse_host(a->six ? "::" : "0.0.0.0", a->port, &ss))
		usage();
	fd = socket(ss.ss_family, type, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (a->six)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (type == SOCK_DGRAM)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	if (bind(fd, (struct sockaddr *)&ss, ss_len(&ss)))
		return -1;
	if (type == SOCK_STREAM && listen(fd, 1024))
		return -1;
	printf("{\"event\":\"listening\",\"proto\":\"%s\"}\n",
	       type == SOCK_STREAM ? "tcp" : "udp");
	fflush(stdout);
	return fd;
}

static int tcp_server(const struct args *a)
{
	struct sockaddr_storage peer, first;
	socklen_t len;
	double t0 = 0, t1 = 0;
	unsigned long i;
	int lfd, fd = -1;
	char p[160], f[160];

	lfd = listener(a, SOCK_STREAM);
	if (lfd < 0)
		return fail("listen");
	memset(&first, 0, sizeof(first));
	for (i = 0; i < a->count; i++) {
		fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			return fail("accept");
		len = sizeof(peer);
		if (getpeername(fd, (struct sockaddr *)&peer, &len))
			return fail("getpeername");
		if (i == 0) {
			t0 = now();
			first = peer;
		}
		if (i + 1 < a->count)
			close(fd);
	}
	t1 = now();
	fmt_json(f, sizeof(f), (struct sockaddr *)&first);
	fmt_json(p, sizeof(p), (struct sockaddr *)&peer);
	printf("{\"event\":\"tcp_accept\",\"connections\":%lu,\"seconds\":%.6f,"
	       "\"per_s\":%.1f,\"first_peer\":%s,\"last_peer\":%s}\n",
	       a->count, t1 - t0, a->count > 1 ? (a->count - 1) / (t1 - t0) : 0.0,
	       f, p);
	fflush(stdout);
	if (a->calls) {
		t0 = now();
		for (i = 0; i < a->calls; i++) {
			len = sizeof(peer);
			if (getpeername(fd, (struct sockaddr *)&peer, &len))
				return fail("getpeername");
		}
		t1 = now();
		fmt_json(p, sizeof(p), (struct sockaddr *)&peer);
		printf("{\"event\":\"getpeername\",\"calls\":%lu,\"seconds\":%.6f,"
		       "\"ns_per_call\":%.1f,\"peer\":%s}\n",
		       a->calls, t1 - t0, (t1 - t0) * 1e9 / a->calls, p);
		fflush(stdout);
	}
	close(fd);
	close(lfd);
	return 0;
}

static int client_socket(const struct args *a, int type,
			 struct sockaddr_storage *srv)
{
	struct sockaddr_storage cip, vip;
	int fd;

	fd = socket(srv->ss_family, type, 0);
	if (fd < 0)
		return -1;
	if (a->copt) {
		if (parse_addr_port(a->copt, &cip) || parse_addr_port(a->vopt, &vip))
			usage();
		if (set_ip_opt(fd, srv->ss_family, (struct sockaddr *)&cip,
			       (struct sockaddr *)&vip))
			return -1;
	}
	return fd;
}

static int tcp_client(const struct args *a)
{
	struct sockaddr_storage srv;
	unsigned long i;
	double t0 = now();
	char buf[64];
	int fd;

	if (parse_host(a->host, a->port, &srv))
		usage();
	for (i = 0; i < a->count; i++) {
		fd = client_socket(a, SOCK_STREAM, &srv);
		if (fd < 0)
			return fail("socket/set_ip_opt");
		if (connect(fd, (struct sockaddr *)&srv, ss_len(&srv)))
			return fail("connect");
		while (read(fd, buf, sizeof(buf)) > 0)	/* the server closes first */
			;
		close(fd);
	}
	printf("{\"event\":\"tcp_connect\",\"connections\":%lu,\"seconds\":%.6f}\n",
	       a->count, now() - t0);
	return 0;
}

static int udp_server(const struct args *a)
{
	struct timeval tv = { a->idle_ms / 1000, (a->idle_ms % 1000) * 1000 };
	double t0 = 0, t1 = 0;
	unsigned long n = 0;
	char buf[65536];
	int fd;

	fd = listener(a, SOCK_DGRAM);
	if (fd < 0)
		return fail("bind");
	while (n < a->count) {
		if (recv(fd, buf, sizeof(buf), 0) < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN && n)
				break;	/* idle: the sender is done, the rest was lost */
			return fail("recv");
		}
		t1 = now();
		if (n++ == 0) {
			t0 = t1;
			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		}
	}
	printf("{\"event\":\"udp_rx\",\"received\":%lu,\"seconds\":%.6f,\"per_s\":%.1f}\n",
	       n, t1 - t0, n > 1 ? (n - 1) / (t1 - t0) : 0.0);
	close(fd);
	return 0;
}

static int udp_client(const struct args *a)
{
	struct sockaddr_storage srv;
	unsigned long i, nobufs = 0;
	char buf[65536];
	double t0;
	int fd;

	if (parse_host(a->host, a->port, &srv) || a->size > sizeof(buf))
		usage();
	fd = client_socket(a, SOCK_DGRAM, &srv);
	if (fd < 0)
		return fail("socket/set_ip_opt");
	if (connect(fd, (struct sockaddr *)&srv, ss_len(&srv)))
		return fail("connect");
	memset(buf, 'u', a->size);
	t0 = now();
	for (i = 0; i < a->count; i++) {
		if (send(fd, buf, a->size, 0) < 0) {
			if (errno == ENOBUFS || errno == ECONNREFUSED) {
				nobufs++;
				continue;
			}
			return fail("send");
		}
	}
	printf("{\"event\":\"udp_tx\",\"sent\":%lu,\"errors\":%lu,\"seconds\":%.6f}\n",
	       a->count, nobufs, now() - t0);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	struct args a = { .count = 1000, .idle_ms = 1000, .size = 64 };
	const char *mode;

	if (argc < 2)
		usage();
	mode = argv[1];
	argv++;
	argc--;
	if (!strcmp(mode, "tcp-server")) {
		parse(argc, argv, &a, 0);
		return tcp_server(&a);
	}
	if (!strcmp(mode, "tcp-client")) {
		parse(argc, argv, &a, 1);
		return tcp_client(&a);
	}
	if (!strcmp(mode, "udp-server")) {
		parse(argc, argv, &a, 0);
		return udp_server(&a);
	}
	if (!strcmp(mode, "udp-client")) {
		parse(argc, argv, &a, 1);
		return udp_client(&a);
	}
	usage();
	return 2;
}
