/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * toa_ep.h - the endpoint (address and port) of toa.h and uoa.h.
 *
 * Only <linux/types.h> is needed, so that the modules include this too.
 */
#ifndef _TOA_EP_H
#define _TOA_EP_H

#include <linux/types.h>

/* One address and port; family is AF_INET (2) or AF_INET6 (10). */
struct toa_ep {
	__u16 family;
	__be16 port;
	union {
		__be32 ip4;
		__u8 ip6[16];
	} addr;
};

#endif /* _TOA_EP_H */
