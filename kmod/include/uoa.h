/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * uoa.h - what an application can ask the uoa module.
 *
 * UDP has no connection, so uoa.ko remembers, for every datagram that
 * carried the TOA/UOA option (see toa_opt.h), the packet's
 *
 *   (saddr, sport, daddr, dport) = (LB local ip, lport, RS ip, RS port)
 *
 * and maps it to (cip, cport, vip, vport) for uoa_map_timeout seconds
 * (refreshed by every datagram that carries the option).  An application
 * that received a datagram passes the addresses it saw and gets the
 * originals:
 *
 *   struct uoa_lookup l = { 0 };
 *   l.peer  = source of the datagram (recvfrom's address)
 *   l.local = destination of the datagram (IP_PKTINFO / IPV6_PKTINFO, or
 *             the address the socket is bound to)
 *   socklen_t len = sizeof(l);
 *   getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP, &l, &len);
 *
 * (IPPROTO_IPV6 works too on an IPv6 socket.)
 *
 * - l.local may be left as a wildcard: family 0, or an all-zero address;
 *   then only its port is compared (port 0 = any port too).
 * - v4-mapped IPv6 addresses (::ffff:a.b.c.d, what an IPv6 socket sees
 *   for an IPv4 datagram) are accepted and treated as IPv4.
 * - If l.peer.family is 0 and the socket is connected, the socket's own
 *   peer and local addresses are used (for languages whose getsockopt
 *   cannot pass input, e.g. Python's socket.getsockopt).
 *
 * Returns 0 and fills l.client and l.vip (whose family is that of the
 * addresses inside the option: IPv6 for 6to4 even on an IPv4 socket);
 * -1 with errno ENOENT if no live entry matches, EINVAL for a short
 * buffer or a bad family, ENOPROTOOPT if uoa.ko is not loaded.
 *
 * Only <linux/types.h> is needed, so that the module includes this too.
 */
#ifndef _UOA_H
#define _UOA_H

#include <linux/types.h>

#include "toa_ep.h"

#define UOA_BASE_CTL		2112
#define UOA_SO_GET_LOOKUP	(UOA_BASE_CTL + 0)
#define UOA_SO_GET_MAX		(UOA_BASE_CTL + 1)	/* exclusive */

/* The same endpoint as toa.h's: struct uoa_ep is struct toa_ep. */
#define uoa_ep toa_ep

struct uoa_lookup {
	struct uoa_ep peer;	/* in: the datagram's source (LB lip:lport) */
	struct uoa_ep local;	/* in: the datagram's destination (rip:rport) */
	struct uoa_ep client;	/* out: cip, cport */
	struct uoa_ep vip;	/* out: vip, vport */
};

#endif /* _UOA_H */
