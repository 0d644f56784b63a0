// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * udp_client - send datagrams, optionally carrying the UOA option on
 * every one of them (set_ip_opt first, del_ip_opt at the end).
 *
 * udp_client [--json] [--opt CIP:CPORT VIP:VPORT] [--keep-opt] [--opt-pkts N]
 *            [--raw-opt HEX] [--count N|--once] [--size BYTES]
 *            [--interval-ms MS] [--wait-reply MS] [--bind ADDR[:PORT]]
 *            HOST PORT
 *
 * --raw-opt HEX puts the bytes verbatim in IP_OPTIONS / IPV6_DSTOPTS
 * instead of building the option (to send malformed or combined options).
 * --opt-pkts N: the option on the first N datagrams only, as the LB does
 * (del_ip_opt after the Nth).
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ip_opt.h"
#include "util.h"

static void usage(void)
{
	fprintf(stderr, "usage: udp_client [--json] [--opt CIP:CPORT VIP:VPORT]"
		" [--keep-opt] [--opt-pkts N] [--raw-opt HEX] [--count N|--once] [--size BYTES]"
		" [--interval-ms MS] [--wait-reply MS] [--bind ADDR[:PORT]]"
		" HOST PORT\n");
	exit(2);
}

/* wait for one reply; print it; return 1 if one came */
static int wait_reply(int fd, unsigned long i, unsigned long ms, char *buf,
		      size_t n)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t r = -1;

	if (poll(&p, 1, ms) > 0)
		r = recv(fd, buf, n, 0);
	if (json_mode && r >= 0)
		printf("{\"event\":\"reply\",\"i\":%lu,\"len\":%zd}\n", i, r);
	else if (json_mode)
		printf("{\"event\":\"no_reply\",\"i\":%lu}\n", i);
	else
		printf(r >= 0 ? "reply %lu: %zd\n" : "reply %lu: none\n", i, r);
	fflush(stdout);
	return r >= 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		CLIENT_OPTIONS,
		{ "wait-reply", required_argument, NULL, 'w' },
		{ "opt-pkts", required_argument, NULL, 'n' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long count, size, wait = 0, opt_pkts = 0, i;
	unsigned long replies = 0;
	char buf[160], dst[160];
	static char msg[65536];
	struct client_args a;
	int fd, o;

	client_init(&a);
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (o == 'w')
			wait = parse_ulong(optarg, "wait-reply");
		else if (o == 'n')
			opt_pkts = parse_ulong(optarg, "opt-pkts");
		else if (client_opt(&a, o, argc, argv))
			usage();
	}
	if (client_addrs(&a, argc, argv))
		usage();
	if (a.size > 65000)
		usage();
	count = a.count;
	size = a.size;
	install_signals();

	fd = client_connect(&a, SOCK_DGRAM, usage);
	if (fd < 0)
		return 1;
	if (!json_mode) {
		fmt_text(buf, sizeof(buf), (struct sockaddr *)&a.me);
		fmt_text(dst, sizeof(dst), (struct sockaddr *)&a.srv);
		printf("socket %d from %s to %s\n", fd, buf, dst);
	}
	fflush(stdout);

	for (i = 0; i < size; i++)
		msg[i] = 'a' + i % 26;
	for (i = 0; i < count && !stop; i++) {
		if (i && a.interval)
			sleep_ms(a.interval);
		if (opt_pkts && i == opt_pkts && a.opt_on) {
			if (del_ip_opt(fd, a.srv.ss_family))
				return report_error("del_ip_opt", errno);
			a.opt_on = 0;
		}
		if (send(fd, msg, size, 0) < 0)
			return report_error("send", errno);
		if (json_mode)
			printf("{\"event\":\"send\",\"i\":%lu,\"len\":%lu}\n",
			       i, size);
		else
			printf("i: %lu\n", i);
		fflush(stdout);
		if (wait)
			replies += wait_reply(fd, i, wait, msg + size,
					      sizeof(msg) - size);
	}
	if (a.opt_on && !a.keep) {
		if (del_ip_opt(fd, a.srv.ss_family))
			return report_error("del_ip_opt", errno);
		event_ok("del_ip_opt", "del_ip_opt success");
	}
	close(fd);
	if (json_mode)
		printf("{\"event\":\"done\",\"sent\":%lu,\"replies\":%lu}\n",
		       i, replies);
	return 0;
}
