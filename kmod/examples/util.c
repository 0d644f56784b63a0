// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* util.c - small helpers shared by the example programs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
