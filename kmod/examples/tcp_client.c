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
		CLIENT_OPTIONS,
		{ NULL, 0, NULL, 0 },
	};
	unsigned long count, size, i, bytes = 0;
	struct client_args a;
	char dst[160];
	int fd, o;
	char *msg;

	client_init(&a);
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1)
		if (client_opt(&a, o, argc, argv))
			usage();
	if (client_addrs(&a, argc, argv))
		usage();
	if (a.size < 1 || a.size > 65536)
		usage();
	count = a.count;
	size = a.size;
	install_signals();

	fd = client_connect(&a, SOCK_STREAM, usage);
	if (fd < 0)
		return 1;
	if (!json_mode) {
		fmt_text(dst, sizeof(dst), (struct sockaddr *)&a.srv);
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
		if (a.opt_on && !a.keep && (i == 1 || count == 0)) {
			if (del_ip_opt(fd, a.srv.ss_family))
				return report_error("del_ip_opt", errno);
			a.opt_on = 0;
			event_ok("del_ip_opt", "del_ip_opt success");
			if (!json_mode)
				printf("worker on %d\n", fd);
		}
		if (i == count)
			break;
		if (i && a.interval)
			sleep_ms(a.interval);
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
