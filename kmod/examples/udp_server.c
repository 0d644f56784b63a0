// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * udp_server - receive datagrams, show who sent them as the kernel sees
 * it and what uoa.ko says was the original client and VIP.
 *
 * udp_server [-4|-6] [--bind ADDR] [--json] [--count N|--once] [--echo]
 *            PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

static void usage(void)
{
	fprintf(stderr, "usage: udp_server [-4|-6] [--bind ADDR] [--json] "
		"[--count N|--once] [--echo] PORT\n");
	exit(2);
}

/* The datagram's destination address, from IP_PKTINFO / IPV6_PKTINFO. */
static void local_addr(struct msghdr *mh, const struct sockaddr_storage *bound,
		       struct sockaddr_storage *local)
{
	struct sockaddr_in6 *l6 = (struct sockaddr_in6 *)local;
	struct sockaddr_in *l4 = (struct sockaddr_in *)local;
	in_port_t port = bound->ss_family == AF_INET ?
		((const struct sockaddr_in *)bound)->sin_port :
		((const struct sockaddr_in6 *)bound)->sin6_port;
	struct cmsghdr *c;

	memcpy(local, bound, sizeof(*local));
	for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
			struct in_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			memset(local, 0, sizeof(*local));
			l4->sin_family = AF_INET;
			l4->sin_port = port;
			l4->sin_addr = pi.ipi_addr;
		} else if (c->cmsg_level == IPPROTO_IPV6 &&
			   c->cmsg_type == IPV6_PKTINFO) {
			struct in6_pktinfo pi;

			memcpy(&pi, CMSG_DATA(c), sizeof(pi));
			memset(local, 0, sizeof(*local));
			l6->sin6_family = AF_INET6;
			l6->sin6_port = port;
			l6->sin6_addr = pi.ipi6_addr;
		}
	}
}

static int uoa_lookup(int fd, const struct sockaddr_storage *peer,
		      const struct sockaddr_storage *local,
		      struct uoa_lookup *l)
{
	socklen_t len = sizeof(*l);

	memset(l, 0, sizeof(*l));
	ss_to_ep(peer, &l->peer);
	ss_to_ep(local, &l->local);
	if (getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP, l, &len))
		return errno;
	return 0;
}

static void show(int n, ssize_t len, const struct sockaddr_storage *peer,
		 const struct sockaddr_storage *local, int lerr,
		 const struct uoa_lookup *l)
{
	struct sockaddr_storage c, v;
	char p[160], s[160], lc[160], lv[160];
	void (*fmt)(char *, size_t, const struct sockaddr *);

	fmt = json_mode ? fmt_json : fmt_text;
	ep_to_ss(&l->client, &c);
	ep_to_ss(&l->vip, &v);
	fmt(p, sizeof(p), (const struct sockaddr *)peer);
	fmt(s, sizeof(s), (const struct sockaddr *)local);
	fmt(lc, sizeof(lc), (const struct sockaddr *)&c);
	fmt(lv, sizeof(lv), (const struct sockaddr *)&v);
	if (!json_mode) {
		printf("datagram %d len %zd from %s to %s\n", n, len, p, s);
		if (lerr)
			printf("uoa lookup: %s\n", errno_name(lerr));
		else
			printf("uoa lookup: %s -> %s\n", lc, lv);
	} else {
		printf("{\"event\":\"datagram\",\"n\":%d,\"len\":%zd,"
		       "\"peer\":%s,\"sock\":%s,", n, len, p, s);
		if (lerr)
			printf("\"lookup\":null,\"lookup_error\":\"%s\"}\n",
			       errno_name(lerr));
		else
			printf("\"lookup\":{\"client\":%s,\"vip\":%s},"
			       "\"lookup_error\":null}\n", lc, lv);
	}
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		SERVER_OPTIONS,
		{ "echo", no_argument, NULL, 'e' },
		{ NULL, 0, NULL, 0 },
	};
	struct sockaddr_storage ss, peer, local;
	union { char buf[512]; struct cmsghdr align; } cbuf;
	int fd, n, o, echo = 0, lerr;
	struct server_args a;
	unsigned long count;
	struct uoa_lookup l;
	char data[65536];
	struct iovec iov;
	struct msghdr mh;
	ssize_t r;

	server_init(&a);
	while ((o = getopt_long(argc, argv, "46", opts, NULL)) != -1) {
		if (o == 'e')
			echo = 1;
		else if (server_opt(&a, o))
			usage();
	}
	if (server_addr(&a, argc, argv, &ss))
		usage();
	count = a.count;
	install_signals();

	fd = bound_socket(&ss, SOCK_DGRAM);
	if (fd < 0)
		return report_error("bind", errno);
	print_listening("udp", &ss);

	for (n = 0; !stop && (!count || (unsigned long)n < count); n++) {
		memset(&peer, 0, sizeof(peer));
		memset(&mh, 0, sizeof(mh));
		iov.iov_base = data;
		iov.iov_len = sizeof(data);
		mh.msg_name = &peer;
		mh.msg_namelen = sizeof(peer);
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cbuf.buf;
		mh.msg_controllen = sizeof(cbuf.buf);
		r = recvmsg(fd, &mh, 0);
		if (r < 0) {
			if (errno == EINTR)
				break;
			report_error("recvmsg", errno);
			n--;
			continue;
		}
		local_addr(&mh, &ss, &local);
		lerr = uoa_lookup(fd, &peer, &local, &l);
		show(n, r, &peer, &local, lerr, &l);
		if (echo)
			sendto(fd, data, r, 0, (struct sockaddr *)&peer,
			       mh.msg_namelen);
	}
	if (json_mode)
		printf("{\"event\":\"exit\",\"datagrams\":%d}\n", n);
	close(fd);
	return 0;
}
