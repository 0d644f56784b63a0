// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * udp_client - send datagrams, optionally carrying the UOA option on
 * every one of them (set_ip_opt first, del_ip_opt at the end).
 *
 * udp_client [--json] [--opt CIP:CPORT VIP:VPORT] [--keep-opt]
 *            [--raw-opt HEX] [--count N|--once] [--size BYTES]
 *            [--interval-ms MS] [--wait-reply MS] [--bind ADDR[:PORT]]
 *            HOST PORT
 *
 * --raw-opt HEX puts the bytes verbatim in IP_OPTIONS / IPV6_DSTOPTS
 * instead of building the option (to send malformed or combined options).
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
		" [--keep-opt] [--raw-opt HEX] [--count N|--once] [--size BYTES]"
		" [--interval-ms MS] [--wait-reply MS] [--bind ADDR[:PORT]]"
		" HOST PORT\n");
	exit(2);
}

static void event(const char *name, const char *text)
{
	if (json_mode)
		printf("{\"event\":\"%s\",\"ok\":true}\n", name);
	else
		printf("%s\n", text);
	fflush(stdout);
}

static void sleep_ms(unsigned long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (!stop && nanosleep(&ts, &ts) && errno == EINTR)
		;
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
		{ "json", no_argument, NULL, 'j' },
		{ "opt", required_argument, NULL, 'o' },
		{ "keep-opt", no_argument, NULL, 'k' },
		{ "raw-opt", required_argument, NULL, 'r' },
		{ "count", required_argument, NULL, 'c' },
		{ "once", no_argument, NULL, '1' },
		{ "size", required_argument, NULL, 's' },
		{ "interval-ms", required_argument, NULL, 'i' },
		{ "wait-reply", required_argument, NULL, 'w' },
		{ "bind", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long count = 3, size = 64, interval = 0, wait = 0, i;
	unsigned long replies = 0;
	struct sockaddr_storage srv, cip, vip, src, me;
	const char *copt = NULL, *vopt = NULL, *bind_addr = NULL, *raw = NULL;
	socklen_t mlen = sizeof(me);
	int keep = 0, fd, o, opt_on = 0;
	char buf[160], dst[160];
	static char msg[65536];

	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'j': json_mode = 1; break;
		case 'o':
			copt = optarg;
			if (optind >= argc)
				usage();
			vopt = argv[optind++];
			break;
		case 'k': keep = 1; break;
		case 'r': raw = optarg; break;
		case 'c': count = parse_ulong(optarg, "count"); break;
		case '1': count = 1; break;
		case 's': size = parse_ulong(optarg, "size"); break;
		case 'i': interval = parse_ulong(optarg, "interval"); break;
		case 'w': wait = parse_ulong(optarg, "wait-reply"); break;
		case 'b': bind_addr = optarg; break;
		default: usage();
		}
	}
	if (optind + 2 != argc || parse_host(argv[optind], argv[optind + 1], &srv))
		usage();
	if (copt && (parse_addr_port(copt, &cip) || parse_addr_port(vopt, &vip)))
		usage();
	if (size > 65000)
		usage();
	install_signals();

	fd = socket(srv.ss_family, SOCK_DGRAM, 0);
	if (fd < 0)
		return report_error("socket", errno);
	if (bind_addr) {
		if (parse_addr_port(bind_addr, &src) ||
		    src.ss_family != srv.ss_family)
			usage();
		if (bind(fd, (struct sockaddr *)&src, ss_len(&src)))
			return report_error("bind", errno);
	}
	if (copt) {
		if (set_ip_opt(fd, srv.ss_family, (struct sockaddr *)&cip,
			       (struct sockaddr *)&vip))
			return report_error("set_ip_opt", errno);
		opt_on = 1;
		event("set_ip_opt", "set_ip_opt success");
	} else if (raw) {
		if (set_raw_opt(fd, srv.ss_family, raw))
			return report_error("set_raw_opt", errno);
		opt_on = 1;
		event("set_raw_opt", "set_raw_opt success");
	}
	if (connect(fd, (struct sockaddr *)&srv, ss_len(&srv)))
		return report_error("connect", errno);
	getsockname(fd, (struct sockaddr *)&me, &mlen);
	if (json_mode) {
		fmt_json(buf, sizeof(buf), (struct sockaddr *)&me);
		fmt_json(dst, sizeof(dst), (struct sockaddr *)&srv);
		printf("{\"event\":\"connect\",\"fd\":%d,\"sock\":%s,\"peer\":%s}\n",
		       fd, buf, dst);
	} else {
		fmt_text(buf, sizeof(buf), (struct sockaddr *)&me);
		fmt_text(dst, sizeof(dst), (struct sockaddr *)&srv);
		printf("socket %d from %s to %s\n", fd, buf, dst);
	}
	fflush(stdout);

	for (i = 0; i < size; i++)
		msg[i] = 'a' + i % 26;
	for (i = 0; i < count && !stop; i++) {
		if (i && interval)
			sleep_ms(interval);
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
	if (opt_on && !keep) {
		if (del_ip_opt(fd, srv.ss_family))
			return report_error("del_ip_opt", errno);
		event("del_ip_opt", "del_ip_opt success");
	}
	close(fd);
	if (json_mode)
		printf("{\"event\":\"done\",\"sent\":%lu,\"replies\":%lu}\n",
		       i, replies);
	return 0;
}
