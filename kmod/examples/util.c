// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* util.c - small helpers shared by the example programs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ip_opt.h"
#include "util.h"

int json_mode;
volatile sig_atomic_t stop;

static int set_port(struct sockaddr_storage *ss, const char *port)
{
	char *end;
	unsigned long p = strtoul(port, &end, 10);

	if (!*port || *end || p > 65535)
		return -1;
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons(p);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons(p);
	return 0;
}

static int set_host(struct sockaddr_storage *ss, const char *host)
{
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		return 0;
	}
	return -1;
}

int parse_host(const char *host, const char *port, struct sockaddr_storage *ss)
{
	if (set_host(ss, host))
		return -1;
	return port ? set_port(ss, port) : 0;
}

int parse_addr_port(const char *s, struct sockaddr_storage *ss)
{
	char buf[128], *colon, *port = NULL;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	if (buf[0] == '[') {
		char *close = strchr(buf, ']');

		if (!close)
			return -1;
		*close = 0;
		if (close[1] == ':')
			port = close + 2;
		else if (close[1])
			return -1;
		return parse_host(buf + 1, port, ss);
	}
	colon = strchr(buf, ':');
	if (colon && !strchr(colon + 1, ':')) {	/* exactly one: v4:port */
		*colon = 0;
		port = colon + 1;
	}
	return parse_host(buf, port, ss);
}

socklen_t ss_len(const struct sockaddr_storage *ss)
{
	return ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) :
					  sizeof(struct sockaddr_in6);
}

static int addr_str(const struct sockaddr *sa, char *ip, size_t n,
		    unsigned int *port)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &s4->sin_addr, ip, n);
		*port = ntohs(s4->sin_port);
		return 4;
	}
	if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, n);
		*port = ntohs(s6->sin6_port);
		return 6;
	}
	snprintf(ip, n, "?");
	*port = 0;
	return 0;
}

void fmt_text(char *buf, size_t n, const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN];
	unsigned int port;
	int v = addr_str(sa, ip, sizeof(ip), &port);

	if (v == 6)
		snprintf(buf, n, "ipv6: [%s]:%u", ip, port);
	else if (v == 4)
		snprintf(buf, n, "ipv4: %s:%u", ip, port);
	else
		snprintf(buf, n, "family %u", sa->sa_family);
}

void fmt_json(char *buf, size_t n, const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN];
	unsigned int port;
	int v = addr_str(sa, ip, sizeof(ip), &port);

	if (v)
		snprintf(buf, n,
			 "{\"family\":\"ipv%d\",\"addr\":\"%s\",\"port\":%u}",
			 v, ip, port);
	else
		snprintf(buf, n, "{\"family\":%u}", sa->sa_family);
}

void ep_to_ss(const struct toa_ep *ep, struct sockaddr_storage *ss)
{
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	ss->ss_family = ep->family;
	if (ep->family == AF_INET) {
		s4->sin_port = ep->port;
		s4->sin_addr.s_addr = ep->addr.ip4;
	} else if (ep->family == AF_INET6) {
		s6->sin6_port = ep->port;
		memcpy(&s6->sin6_addr, ep->addr.ip6, 16);
	}
}

void ss_to_ep(const struct sockaddr_storage *ss, struct uoa_ep *ep)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

	memset(ep, 0, sizeof(*ep));
	ep->family = ss->ss_family;
	if (ss->ss_family == AF_INET) {
		ep->port = s4->sin_port;
		ep->addr.ip4 = s4->sin_addr.s_addr;
	} else if (ss->ss_family == AF_INET6) {
		ep->port = s6->sin6_port;
		memcpy(ep->addr.ip6, &s6->sin6_addr, 16);
	}
}

const char *errno_name(int err)
{
	switch (err) {
	case 0: return "OK";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EINVAL: return "EINVAL";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case ENOPROTOOPT: return "ENOPROTOOPT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EADDRINUSE: return "EADDRINUSE";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	case ENETUNREACH: return "ENETUNREACH";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ECONNRESET: return "ECONNRESET";
	case ETIMEDOUT: return "ETIMEDOUT";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case EAGAIN: return "EAGAIN";
	case ENOTCONN: return "ENOTCONN";
	case EPIPE: return "EPIPE";
	default: return "E?";
	}
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

void install_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: accept/recv return */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

int report_error(const char *op, int err)
{
	if (json_mode)
		printf("{\"event\":\"error\",\"op\":\"%s\",\"errno\":%d,"
		       "\"error\":\"%s\",\"msg\":\"%s\"}\n",
		       op, err, errno_name(err), strerror(err));
	else
		fprintf(stderr, "%s: %s\n", op, strerror(err));
	fflush(stdout);
	return 1;
}

unsigned long parse_ulong(const char *s, const char *what)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (!*s || *end || errno) {
		fprintf(stderr, "bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

int set_raw_opt(int fd, int family, const char *hex)
{
	unsigned char buf[256];
	size_t n = 0;
	unsigned int b;

	while (*hex && n < sizeof(buf)) {
		if (*hex == ':' || *hex == ' ') {
			hex++;
			continue;
		}
		if (sscanf(hex, "%2x", &b) != 1 || !hex[1]) {
			errno = EINVAL;
			return -1;
		}
		buf[n++] = b;
		hex += 2;
	}
	if (family == AF_INET)
		return setsockopt(fd, IPPROTO_IP, IP_OPTIONS, buf, n);
	return setsockopt(fd, IPPROTO_IPV6, IPV6_DSTOPTS, buf, n);
}

void event_ok(const char *name, const char *text)
{
	if (json_mode)
		printf("{\"event\":\"%s\",\"ok\":true}\n", name);
	else
		printf("%s\n", text);
	fflush(stdout);
}

void sleep_ms(unsigned long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (!stop && nanosleep(&ts, &ts) && errno == EINTR)
		;
}

void client_init(struct client_args *a)
{
	memset(a, 0, sizeof(*a));
	a->count = 3;
	a->size = 64;
}

int client_opt(struct client_args *a, int o, int argc, char **argv)
{
	switch (o) {
	case 'j': json_mode = 1; break;
	case 'o':
		a->copt = optarg;
		if (optind >= argc)
			return -1;
		a->vopt = argv[optind++];
		break;
	case 'k': a->keep = 1; break;
	case 'r': a->raw = optarg; break;
	case 'c': a->count = parse_ulong(optarg, "count"); break;
	case '1': a->count = 1; break;
	case 's': a->size = parse_ulong(optarg, "size"); break;
	case 'i': a->interval = parse_ulong(optarg, "interval"); break;
	case 'b': a->bind_addr = optarg; break;
	default: return -1;
	}
	return 0;
}

int client_addrs(struct client_args *a, int argc, char **argv)
{
	if (optind + 2 != argc ||
	    parse_host(argv[optind], argv[optind + 1], &a->srv))
		return -1;
	if (a->copt && (parse_addr_port(a->copt, &a->cip) ||
			parse_addr_port(a->vopt, &a->vip)))
		return -1;
	return 0;
}

static int client_fail(const char *op)
{
	report_error(op, errno);
	return -1;
}

int client_connect(struct client_args *a, int type, void (*usage)(void))
{
	struct sockaddr *srv = (struct sockaddr *)&a->srv;
	socklen_t mlen = sizeof(a->me);
	char buf[160], dst[160];
	int fd;

	fd = socket(a->srv.ss_family, type, 0);
	if (fd < 0)
		return client_fail("socket");
	if (a->bind_addr) {
		if (parse_addr_port(a->bind_addr, &a->src) ||
		    a->src.ss_family != a->srv.ss_family)
			usage();
		if (bind(fd, (struct sockaddr *)&a->src, ss_len(&a->src)))
			return client_fail("bind");
	}
	if (a->copt) {
		if (set_ip_opt(fd, a->srv.ss_family, (struct sockaddr *)&a->cip,
			       (struct sockaddr *)&a->vip))
			return client_fail("set_ip_opt");
		a->opt_on = 1;
		event_ok("set_ip_opt", "set_ip_opt success");
	} else if (a->raw) {
		if (set_raw_opt(fd, a->srv.ss_family, a->raw))
			return client_fail("set_raw_opt");
		a->opt_on = 1;
		event_ok("set_raw_opt", "set_raw_opt success");
	}
	if (connect(fd, srv, ss_len(&a->srv)))
		return client_fail("connect");
	getsockname(fd, (struct sockaddr *)&a->me, &mlen);
	if (json_mode) {
		fmt_json(buf, sizeof(buf), (struct sockaddr *)&a->me);
		fmt_json(dst, sizeof(dst), srv);
		printf("{\"event\":\"connect\",\"fd\":%d,\"sock\":%s,\"peer\":%s}\n",
		       fd, buf, dst);
	}
	return fd;
}

void server_init(struct server_args *a)
{
	memset(a, 0, sizeof(*a));
	a->family = AF_INET;
}

int server_opt(struct server_args *a, int o)
{
	switch (o) {
	case '4': a->family = AF_INET; break;
	case '6': a->family = AF_INET6; break;
	case 'j': json_mode = 1; break;
	case 'c': a->count = parse_ulong(optarg, "count"); break;
	case '1': a->count = 1; break;
	case 'b': a->bind_addr = optarg; break;
	default: return -1;
	}
	return 0;
}

int server_addr(const struct server_args *a, int argc, char **argv,
		struct sockaddr_storage *ss)
{
	if (optind + 1 != argc)
		return -1;
	return parse_host(a->bind_addr ? a->bind_addr :
			  a->family == AF_INET ? "0.0.0.0" : "::",
			  argv[optind], ss);
}

int bound_socket(struct sockaddr_storage *ss, int type)
{
	int one = 1, zero = 0, fd;
	socklen_t len = ss_len(ss);

	fd = socket(ss->ss_family, type, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* IPv4 datagrams (also those reaching a dual-stack IPv6 socket) */
	if (type == SOCK_DGRAM)
		setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof(one));
	if (ss->ss_family == AF_INET6) {
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
		if (type == SOCK_DGRAM)
			setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one,
				   sizeof(one));
	}
	if (bind(fd, (struct sockaddr *)ss, len) ||
	    (type == SOCK_STREAM && listen(fd, 128)) ||
	    getsockname(fd, (struct sockaddr *)ss, &len)) {
		close(fd);
		return -1;
	}
	return fd;
}

void print_listening(const char *proto, const struct sockaddr_storage *ss)
{
	char buf[160];

	if (json_mode) {
		fmt_json(buf, sizeof(buf), (const struct sockaddr *)ss);
		printf("{\"event\":\"listening\",\"proto\":\"%s\",\"sock\":%s}\n",
		       proto, buf);
	} else {
		fmt_text(buf, sizeof(buf), (const struct sockaddr *)ss);
		printf("listening on %s\n", buf);
	}
	fflush(stdout);
}
