// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tcp_proxy.c - an L7 proxy in the seed's sense: it terminates the client's
 * TCP connection and opens its own to a real server, with set_ip_opt()
 * naming the client (getpeername of the accepted socket) and the address
 * the client connected to (its getsockname: the proxy's VIP).  toa.ko on
 * the real server then shows the client to the server's application.
 *
 *   tcp_proxy [-4|-6] [--json] [--count N|--once] PORT UPSTREAM UPORT
 *
 * One connection at a time: accept, connect upstream with the option,
 * del_ip_opt once connect() returned (the handshake's third packet, where
 * toa.ko reads the option, has gone out by then), relay both ways until both
 * sides closed.  JSON events: listening, accept {client, vip}, upstream
 * {sock, peer}, close {up, down} (bytes), error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ip_opt.h"
#include "util.h"

static void usage(void)
{
	fprintf(stderr, "usage: tcp_proxy [-4|-6] [--json] [--count N|--once] "
		"PORT UPSTREAM UPORT\n");
	exit(2);
}

/* A v4-mapped IPv6 address (a dual-stack listener's IPv4 peer) as AF_INET. */
static void unmap(struct sockaddr_storage *ss)
{
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in s4;

	if (ss->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
		return;
	memset(&s4, 0, sizeof(s4));
	s4.sin_family = AF_INET;
	s4.sin_port = s6->sin6_port;
	memcpy(&s4.sin_addr, &s6->sin6_addr.s6_addr[12], 4);
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, &s4, sizeof(s4));
}

/* Copy what @from has to @to; 0 on EOF (then shut @to's write side), -1 on error. */
static ssize_t pump(int from, int to, unsigned long *bytes)
{
	char buf[16384];
	ssize_t r = recv(from, buf, sizeof(buf), 0);
	ssize_t off = 0;

	if (r <= 0) {
		shutdown(to, SHUT_WR);
		return r;
	}
	while (off < r) {
		ssize_t w = send(to, buf + off, r - off, MSG_NOSIGNAL);

		if (w < 0)
			return -1;
		off += w;
	}
	*bytes += r;
	return r;
}

static void relay(int c, int u, int n)
{
	struct pollfd p[2] = { { .fd = c, .events = POLLIN }, { .fd = u, .events = POLLIN } };
	unsigned long up = 0, down = 0;

	while (!stop && (p[0].fd >= 0 || p[1].fd >= 0)) {
		if (poll(p, 2, 10000) <= 0)
			break;
		if (p[0].fd >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
		    pump(c, u, &up) <= 0)
			p[0].fd = -1;
		if (p[1].fd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)) &&
		    pump(u, c, &down) <= 0)
			p[1].fd = -1;
	}
	if (json_mode)
		printf("{\"event\":\"close\",\"n\":%d,\"up\":%lu,\"down\":%lu}\n", n, up, down);
	fflush(stdout);
}

static int upstream(const struct sockaddr_storage *srv, struct sockaddr_storage *cip,
		    struct sockaddr_storage *vip, int n)
{
	struct sockaddr_storage me;
	socklen_t len = sizeof(me);
	char a[160], b[160];
	int fd;

	fd = socket(srv->ss_family, SOCK_STREAM, 0);
	if (fd < 0)
		return report_error("socket", errno), -1;
	if (set_ip_opt(fd, srv->ss_family, (struct sockaddr *)cip, (struct sockaddr *)vip)) {
		report_error("set_ip_opt", errno);
		close(fd);
		return -1;
	}
	if (connect(fd, (const struct sockaddr *)srv, ss_len(srv))) {
		report_error("connect", errno);
		close(fd);
		return -1;
	}
	if (del_ip_opt(fd, srv->ss_family))
		report_error("del_ip_opt", errno);
	getsockname(fd, (struct sockaddr *)&me, &len);
	if (json_mode) {
		fmt_json(a, sizeof(a), (struct sockaddr *)&me);
		fmt_json(b, sizeof(b), (const struct sockaddr *)srv);
		printf("{\"event\":\"upstream\",\"n\":%d,\"sock\":%s,\"peer\":%s}\n", n, a, b);
	}
	fflush(stdout);
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { SERVER_OPTIONS, { NULL, 0, NULL, 0 } };
	struct sockaddr_storage ss, srv;
	struct server_args a;
	int lfd, n, o;

	server_init(&a);
	while ((o = getopt_long(argc, argv, "46", opts, NULL)) != -1)
		if (server_opt(&a, o))
			usage();
	if (argc - optind != 3 || server_addr(&a, optind + 1, argv, &ss) ||
	    parse_host(argv[optind + 1], argv[optind + 2], &srv))
		usage();
	install_signals();
	lfd = bound_socket(&ss, SOCK_STREAM);
	if (lfd < 0)
		return report_error("listen", errno);
	print_listening("tcp", &ss);

	for (n = 0; !stop && (!a.count || (unsigned long)n < a.count); n++) {
		struct sockaddr_storage cip, vip;
		socklen_t clen = sizeof(cip), vlen = sizeof(vip);
		char c[160], v[160];
		int fd, u;

		fd = accept(lfd, (struct sockaddr *)&cip, &clen);
		if (fd < 0) {
			if (errno == EINTR)
				break;
			report_error("accept", errno);
			continue;
		}
		getsockname(fd, (struct sockaddr *)&vip, &vlen);
		unmap(&cip);
		unmap(&vip);
		if (json_mode) {
			fmt_json(c, sizeof(c), (struct sockaddr *)&cip);
			fmt_json(v, sizeof(v), (struct sockaddr *)&vip);
			printf("{\"event\":\"accept\",\"n\":%d,\"client\":%s,\"vip\":%s}\n", n, c, v);
			fflush(stdout);
		}
		u = upstream(&srv, &cip, &vip, n);
		if (u >= 0) {
			relay(fd, u, n);
			close(u);
		}
		close(fd);
	}
	close(lfd);
	return 0;
}
