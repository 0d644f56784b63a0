/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * toa.h - what an application can ask the toa module.
 *
 * With toa.ko loaded, a TCP socket accepted from a connection whose
 * handshake carried the TOA option (see toa_opt.h) reports:
 *
 *   accept(), getpeername()  -> cip:cport
 *   getsockname()            -> vip:vport
 *
 * Address families:
 *   IPv4 socket, IPv4 inside (4to4):  struct sockaddr_in, as usual.
 *   IPv6 socket, IPv6 inside (6to6):  struct sockaddr_in6, as usual.
 *   IPv6 socket, IPv4 inside:         struct sockaddr_in6 holding the
 *                                     v4-mapped address ::ffff:a.b.c.d.
 *   IPv4 socket, IPv6 inside (6to4):  a struct sockaddr_in6 is written and
 *                                     its length (28) returned.  A caller
 *                                     that passes a struct sockaddr_storage
 *                                     gets the whole IPv6 address; one that
 *                                     passes a struct sockaddr_in (16 bytes)
 *                                     gets it truncated and *addrlen == 28,
 *                                     which tells it so.  Kernel threads
 *                                     calling kernel_getpeername() are left
 *                                     with the original address, because
 *                                     they may use a 16-byte buffer.
 *
 * Whatever the socket family, the original addresses can also be asked
 * for explicitly, which is the portable way for 6to4:
 *
 *   struct toa_lookup l;
 *   socklen_t len = sizeof(l);
 *   getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP, &l, &len);
 *
 * (IPPROTO_IPV6 works too on an IPv6 socket.)  Returns 0 and fills @l;
 * -1 with errno ENOENT if the socket has no TOA entry, EINVAL if len is
 * smaller than sizeof(struct toa_lookup), ENOPROTOOPT if toa.ko is not
 * loaded.  The input content of the buffer is ignored.
 *
 * Only <linux/types.h> is needed, so that the module includes this too.
 */
#ifndef _TOA_H
#define _TOA_H

#include <linux/types.h>

#include "toa_ep.h"

#define TOA_BASE_CTL		4160
#define TOA_SO_GET_LOOKUP	(TOA_BASE_CTL + 0)
#define TOA_SO_GET_MAX		(TOA_BASE_CTL + 1)	/* exclusive */

struct toa_lookup {
	struct toa_ep client;	/* out: cip, cport */
	struct toa_ep vip;	/* out: vip, vport */
};

#endif /* _TOA_H */
