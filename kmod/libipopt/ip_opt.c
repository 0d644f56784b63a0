// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * ip_opt.c - set_ip_opt / del_ip_opt, see ip_opt.h.
 * The option's layout comes from toa_opt.h, nowhere else.
 */
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "toa_opt.h"
#include "ip_opt.h"

static int fill_addrs(struct ip_option *o, const struct sockaddr *saddr,
		      const struct sockaddr *daddr)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)saddr;
	const struct sockaddr_in6 *d6 = (const struct sockaddr_in6 *)daddr;
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)saddr;
	const struct sockaddr_in *d4 = (const struct sockaddr_in *)daddr;

	if (saddr->sa_family == AF_INET) {
		o->sport = s4->sin_port;
		o->dport = d4->sin_port;
		memcpy(o->addrs.ipv4.saddr, &s4->sin_addr, 4);
		memcpy(o->addrs.ipv4.daddr, &d4->sin_addr, 4);
		return 0;
	}
	o->sport = s6->sin6_port;
	o->dport = d6->sin6_port;
	memcpy(o->addrs.ipv6.saddr, &s6->sin6_addr, 16);
	memcpy(o->addrs.ipv6.daddr, &d6->sin6_addr, 16);
	return 1;
}

int build_ip_opt(int fd_family, int l4proto, const struct sockaddr *saddr,
		 const struct sockaddr *daddr, void *buf, size_t buflen)
{
	struct ip_option o;
	int six, len;

	if (!saddr || !daddr || !buf ||
	    saddr->sa_family != daddr->sa_family ||
	    (saddr->sa_family != AF_INET && saddr->sa_family != AF_INET6) ||
	    (fd_family != AF_INET && fd_family != AF_INET6)) {
		errno = EINVAL;
		return -1;
	}
	memset(&o, 0, sizeof(o));
	six = fill_addrs(&o, saddr, daddr);
	len = six ? TOA_OPT_LEN_INNER6 : TOA_OPT_LEN_INNER4;
	if (buflen < (size_t)len) {
		errno = ENOSPC;
		return -1;
	}
	if (fd_family == AF_INET) {
		o.header.ipv4.type = IPV4_OPTION_TYPE;
		o.header.ipv4.length = len;
		o.header.ipv4.operation = six ? TOA_OP_INNER_IPV6 : 0;
		o.header.ipv4.padding = 0;
	} else {
		o.header.ipv6.nexthdr = l4proto;
		o.header.ipv6.hdrlen = six ? TOA_DSTOPT_HDRLEN_INNER6 :
					     TOA_DSTOPT_HDRLEN_INNER4;
		o.header.ipv6.option = IPV6_HEADER_OPTION;
		o.header.ipv6.optlen = six ? TOA_DSTOPT_OPTLEN_INNER6 :
					     TOA_DSTOPT_OPTLEN_INNER4;
	}
	memcpy(buf, &o, len);
	return len;
}

/* The IPv6 form's nexthdr: the socket's protocol, as on the wire. */
static int sock_l4proto(int fd)
{
	socklen_t sl = sizeof(int);
	int proto = 0, type = 0;

	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &sl) == 0 &&
	    proto > 0)
		return proto;
	sl = sizeof(int);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &sl) == 0)
		return type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
	return IPPROTO_TCP;
}

int set_ip_opt(int fd, int fd_family, struct sockaddr *saddr,
	       struct sockaddr *daddr)
{
	unsigned char buf[TOA_OPT_LEN_INNER6];
	int len;

	len = build_ip_opt(fd_family, sock_l4proto(fd), saddr, daddr,
			   buf, sizeof(buf));
	if (len < 0)
		return -1;
	if (fd_family == AF_INET)
		return setsockopt(fd, IPPROTO_IP, IP_OPTIONS, buf, len);
	return setsockopt(fd, IPPROTO_IPV6, IPV6_DSTOPTS, buf, len);
}

int del_ip_opt(int fd, int fd_family)
{
	if (fd_family == AF_INET)
		return setsockopt(fd, IPPROTO_IP, IP_OPTIONS, NULL, 0);
	if (fd_family == AF_INET6)
		return setsockopt(fd, IPPROTO_IPV6, IPV6_DSTOPTS, NULL, 0);
	errno = EINVAL;
	return -1;
}
