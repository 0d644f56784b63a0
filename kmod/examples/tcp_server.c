// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tcp_server - accept TCP connections and show the addresses the kernel
 * reports (with toa.ko loaded: the client's and the VIP's).
 *
 * tcp_server [-4|-6] [--bind ADDR] [--json] [--count N|--once]
 *            [--timeout SEC] PORT
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "util.h"

static void usage(void)
{
	fprintf(stderr, "usage: tcp_server [-4|-6] [--bind ADDR] [--json] "
		"[--count N|--once] [--timeout SEC] PORT\n");
	exit(2);
}

/* TOA_SO_GET_LOOKUP: 0 and l filled, or an errno */
static int toa_lookup(int fd, struct toa_lookup *l)
{
	socklen_t len = sizeof(*l);

	memset(l, 0, sizeof(*l));
	if (getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP, l, &len))
		return errno;
	return 0;
}

static void show_conn(int n, int fd, struct sockaddr_storage *acc,
		      socklen_t acc_len)
{
	struct sockaddr_storage peer, sock, c, v;
	socklen_t plen = sizeof(peer), slen = sizeof(sock);
	char a[160], p[160], s[160], lc[160], lv[160];
	struct toa_lookup l;
	int perr = 0, serr = 0, lerr;

	memset(&peer, 0, sizeof(peer));
	memset(&sock, 0, sizeof(sock));
	if (getpeername(fd, (struct sockaddr *)&peer, &plen))
		perr = errno;
	if (getsockname(fd, (struct sockaddr *)&sock, &slen))
		serr = errno;
	lerr = toa_lookup(fd, &l);
	ep_to_ss(&l.client, &c);
	ep_to_ss(&l.vip, &v);

	if (!json_mode) {
		fmt_text(a, sizeof(a), (struct sockaddr *)acc);
		fmt_text(p, sizeof(p), (struct sockaddr *)&peer);
		fmt_text(s, sizeof(s), (struct sockaddr *)&sock);
		printf("%d's connection %d from %s\n", n, fd, a);
		printf("getpeername: %s\n", perr ? strerror(perr) : p);
		printf("getsockname: %s\n", serr ? strerror(serr) : s);
		fmt_text(lc, sizeof(lc), (struct sockaddr *)&c);
		fmt_text(lv, sizeof(lv), (struct sockaddr *)&v);
		if (lerr)
			printf("toa lookup: %s\n", errno_name(lerr));
		else
			printf("toa lookup: %s -> %s\n", lc, lv);
		printf("worker on %d\n", fd);
		fflush(stdout);
		return;
	}
	fmt_json(a, sizeof(a), (struct sockaddr *)acc);
	fmt_json(p, sizeof(p), (struct sockaddr *)&peer);
	fmt_json(s, sizeof(s), (struct sockaddr *)&sock);
	fmt_json(lc, sizeof(lc), (struct sockaddr *)&c);
	fmt_json(lv, sizeof(lv), (struct sockaddr *)&v);
	printf("{\"event\":\"accept\",\"n\":%d,\"fd\":%d,"
	       "\"accept\":%s,\"accept_len\":%u,"
	       "\"peer\":%s,\"peer_len\":%u,\"sock\":%s,\"sock_len\":%u,",
	       n, fd, a, (unsigned int)acc_len,
	       perr ? "null" : p, (unsigned int)plen,
	       serr ? "null" : s, (unsigned int)slen);
	if (lerr)
		printf("\"lookup\":null,\"lookup_error\":\"%s\"}\n",
		       errno_name(lerr));
	else
		printf("\"lookup\":{\"client\":%s,\"vip\":%s},"
		       "\"lookup_error\":null}\n", lc, lv);
	fflush(stdout);
}

static void serve(int n, int fd)
{
	unsigned long bytes = 0, reads = 0;
	char buf[4096];
	ssize_t r;

	while (!stop) {
		r = recv(fd, buf, sizeof(buf), 0);
		if (r <= 0)
			break;
		bytes += r;
		reads++;
		if (!json_mode)
			printf("recv_len: %zd\n", r);
	}
	if (json_mode)
		printf("{\"event\":\"close\",\"n\":%d,\"fd\":%d,\"bytes\":%lu,"
		       "\"reads\":%lu}\n", n, fd, bytes, reads);
	fflush(stdout);
	close(fd);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		SERVER_OPTIONS,
		{ "timeout", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long count, timeout = 0;
	struct sockaddr_storage ss;
	struct server_args a;
	int lfd, fd, n, o;

	server_init(&a);
	while ((o = getopt_long(argc, argv, "46", opts, NULL)) != -1) {
		if (o == 't')
			timeout = parse_ulong(optarg, "timeout");
		else if (server_opt(&a, o))
			usage();
	}
	if (server_addr(&a, argc, argv, &ss))
		usage();
	count = a.count;
	install_signals();

	lfd = bound_socket(&ss, SOCK_STREAM);
	if (lfd < 0)
		return report_error("listen", errno);
	print_listening("tcp", &ss);

	for (n = 0; !stop && (!count || (unsigned long)n < count); n++) {
		struct sockaddr_storage acc;
		socklen_t alen = sizeof(acc);

		memset(&acc, 0, sizeof(acc));
		fd = accept(lfd, (struct sockaddr *)&acc, &alen);
		if (fd < 0) {
			if (errno == EINTR)
				break;
			report_error("accept", errno);
			n--;
			continue;
		}
		if (timeout) {
			struct timeval tv = { .tv_sec = timeout };

			setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		}
		show_conn(n, fd, &acc, alen);
		serve(n, fd);
	}
	if (json_mode)
		printf("{\"event\":\"exit\",\"connections\":%d}\n", n);
	close(lfd);
	return 0;
}
