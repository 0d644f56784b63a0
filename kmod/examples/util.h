/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* util.h - small helpers shared by the example programs. */
#ifndef _EXAMPLES_UTIL_H
#define _EXAMPLES_UTIL_H

#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>

#include "toa.h"
#include "uoa.h"

extern int json_mode;			/* --json: one object per line */
extern volatile sig_atomic_t stop;	/* set by SIGTERM / SIGINT */

/* "10.0.0.1:1", "[2001:db8::1]:1", "2001:db8::1" (port 0), "10.0.0.1" */
int parse_addr_port(const char *s, struct sockaddr_storage *ss);
/* host and port separately (the CLI's "HOST PORT") */
int parse_host(const char *host, const char *port, struct sockaddr_storage *ss);
socklen_t ss_len(const struct sockaddr_storage *ss);

/* "ipv4: 10.0.0.1:1" / "ipv6: [2001:db8::1]:1" */
void fmt_text(char *buf, size_t n, const struct sockaddr *sa);
/* {"family":"ipv4","addr":"10.0.0.1","port":1} */
void fmt_json(char *buf, size_t n, const struct sockaddr *sa);
/* the same from the modules' endpoint structs (identical layouts) */
void ep_to_ss(const struct toa_ep *ep, struct sockaddr_storage *ss);
void ss_to_ep(const struct sockaddr_storage *ss, struct uoa_ep *ep);

const char *errno_name(int err);
void install_signals(void);
/* print an error event (JSON) or a line on stderr; returns 1 */
int report_error(const char *op, int err);
unsigned long parse_ulong(const char *s, const char *what);
/* --raw-opt HEX: put these bytes verbatim in IP_OPTIONS (AF_INET) or
 * IPV6_DSTOPTS (AF_INET6), e.g. to send malformed options; 0 or -1 */
int set_raw_opt(int fd, int family, const char *hex);

/* {"event":NAME,"ok":true} (JSON) or TEXT */
void event_ok(const char *name, const char *text);
/* sleep, cut short by SIGTERM / SIGINT */
void sleep_ms(unsigned long ms);

/* ---- the clients: [--json] [--opt CIP:CPORT VIP:VPORT] [--keep-opt]
 *      [--raw-opt HEX] [--count N|--once] [--size BYTES]
 *      [--interval-ms MS] [--bind ADDR[:PORT]] HOST PORT */
#define CLIENT_OPTIONS							\
	{ "json", no_argument, NULL, 'j' },				\
	{ "opt", required_argument, NULL, 'o' },			\
	{ "keep-opt", no_argument, NULL, 'k' },				\
	{ "raw-opt", required_argument, NULL, 'r' },			\
	{ "count", required_argument, NULL, 'c' },			\
	{ "once", no_argument, NULL, '1' },				\
	{ "size", required_argument, NULL, 's' },			\
	{ "interval-ms", required_argument, NULL, 'i' },		\
	{ "bind", required_argument, NULL, 'b' }

struct client_args {
	struct sockaddr_storage srv, cip, vip, src, me;
	unsigned long count, size, interval;
	const char *copt, *vopt, *bind_addr, *raw;
	int keep;
	int opt_on;	/* the option is set on the socket */
};

/* defaults: --count 3 --size 64 */
void client_init(struct client_args *a);
/* option @o of CLIENT_OPTIONS (optarg, optind); 0, or -1: usage */
int client_opt(struct client_args *a, int o, int argc, char **argv);
/* after the options: HOST PORT and --opt's addresses; 0 or -1: usage */
int client_addrs(struct client_args *a, int argc, char **argv);
/*
 * socket of @type, --bind, --opt / --raw-opt, connect, a->me; the connect
 * event in JSON mode.  The fd; -1 after report_error(); calls @usage for a
 * bad --bind.
 */
int client_connect(struct client_args *a, int type, void (*usage)(void));

/* ---- the servers: [-4|-6] [--bind ADDR] [--json] [--count N|--once] */
#define SERVER_OPTIONS							\
	{ "json", no_argument, NULL, 'j' },				\
	{ "count", required_argument, NULL, 'c' },			\
	{ "once", no_argument, NULL, '1' },				\
	{ "bind", required_argument, NULL, 'b' }

struct server_args {
	int family;
	const char *bind_addr;
	unsigned long count;	/* 0: for ever */
};

void server_init(struct server_args *a);
/* option @o of "46" and SERVER_OPTIONS; 0, or -1: usage */
int server_opt(struct server_args *a, int o);
/* after the options: PORT, with --bind or the wildcard; 0 or -1: usage */
int server_addr(const struct server_args *a, int argc, char **argv,
		struct sockaddr_storage *ss);
/*
 * A socket of @type bound to @ss (dual-stack if IPv6; listening if
 * SOCK_STREAM; with IP_PKTINFO / IPV6_RECVPKTINFO if SOCK_DGRAM), @ss
 * updated to the bound address; -1 with errno.
 */
int bound_socket(struct sockaddr_storage *ss, int type);
/* the listening event / line */
void print_listening(const char *proto, const struct sockaddr_storage *ss);

#endif /* _EXAMPLES_UTIL_H */
