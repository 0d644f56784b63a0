// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tcp_client - connect, optionally carrying the TOA option during the
 * handshake (set_ip_opt before connect, del_ip_opt after the first send),
 * and send a few messages.
 *
 * tcp_client [--json] [--opt CIP:CPORT VIP:VPORT] [--keep-opt]
 *            [--raw-opt HEX] [--count N|--once] [--size BYTES]
 *            [--interval-ms MS] [--bind ADDR[:PORT]] HOST PORT
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
	fprintf(stderr, "usage: tcp_client [--json] [--opt CIP:CPORT VIP:VPORT]"
		" [--keep-opt] [--raw-opt HEX] [--count N|--once] [--size BYTES]"
		" [--interval-ms MS] [--bind ADDR[:PORT]] HOST PORT\n");
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

/* half-close and wait (bounded) for the server to close its side */
static void drain(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char buf[512];

	shutdown(fd, SHUT_WR);
	while (!stop && poll(&p, 1, 5000) > 0 &&
	       recv(fd, buf, sizeof(buf), 0) > 0)
		;
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
		{ "bind", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	struct sockaddr_storage srv, cip, vip, src, me;
	unsigned long count = 3, size = 64, interval = 0, i, bytes = 0;
	const char *copt = NULL, *vopt = NULL, *bind_addr = NULL, *raw = NULL;
	int keep = 0, fd, o, opt_on = 0;
	socklen_t mlen = sizeof(me);
	char buf[160], dst[160];
	char *msg;

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
		case 'b': bind_addr = optarg; break;
		default: usage();
		}
	}
	if (optind + 2 != argc || parse_host(argv[optind], argv[optind + 1], &srv))
		usage();
	if (copt && (parse_addr_port(copt, &cip) || parse_addr_port(vopt, &vip)))
		usage();
	if (size < 1 || size > 65536)
		usage();
	install_signals();

	fd = socket(srv.ss_family, SOCK_STREAM, 0);
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
		fmt_text(dst, sizeof(dst), (struct sockaddr *)&srv);
		printf("establish connection %d to %s\n", fd, dst);
	}
	fflush(stdout);

	msg = malloc(size);
	if (!msg)
		return report_error("malloc", ENOMEM);
	for (i = 0; i < size; i++)
		msg[i] = 'a' + i % 26;
	/*
	 * After connect() returned, the third packet of the handshake has
	 * been queued with the option; the first payload carries it too.
	 */
	for (i = 0; i <= count && !stop; i++) {
		if (opt_on && !keep && (i == 1 || count == 0)) {
			if (del_ip_opt(fd, srv.ss_family))
				return report_error("del_ip_opt", errno);
			opt_on = 0;
			event("del_ip_opt", "del_ip_opt success");
			if (!json_mode)
				printf("worker on %d\n", fd);
		}
		if (i == count)
			break;
		if (i && interval)
			sleep_ms(interval);
		if (send(fd, msg, size, 0) != (ssize_t)size)
			return report_error("send", errno);
		bytes += size;
		if (json_mode)
			printf("{\"event\":\"send\",\"i\":%lu,\"len\":%lu}\n",
			       i, size);
		else
			printf("i: %lu\n", i);
		fflush(stdout);
	}
	drain(fd);
	close(fd);
	if (json_mode)
		printf("{\"event\":\"done\",\"sent\":%lu,\"bytes\":%lu}\n",
		       i, bytes);
	free(msg);
	return 0;
}
