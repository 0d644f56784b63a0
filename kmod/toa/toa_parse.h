/* SPDX-License-Identifier: GPL-2.0 */
/*
 * toa_parse.h - find the TOA/UOA option in a received skb (kernel only).
 *
 * Shared by toa.ko and uoa.ko.  The wire layout and its validation are
 * those of toa_opt.h; this file only walks the headers to find the
 * option and copies its fields out.
 */
#ifndef _TOA_PARSE_H
#define _TOA_PARSE_H

#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/skbuff.h>
#include <linux/socket.h>
#include <linux/string.h>
#include <net/ip.h>
#include <net/ipv6.h>

#include "toa_opt.h"

union toa_inaddr {
	__be32 ip4;
	struct in6_addr ip6;
};

/* What the option says: the original client and virtual endpoints. */
struct toa_addrs {
	u16 family;		/* of the addresses inside: AF_INET/AF_INET6 */
	__be16 cport;
	__be16 vport;
	union toa_inaddr cip;
	union toa_inaddr vip;
};

/* Result of a parse: > 0 found, 0 absent, < 0 -(enum toa_opt_err). */
#define TOA_FOUND	1
#define TOA_ABSENT	0

/* Largest thing we copy out of a packet: the 40 bytes of IPv4 options. */
#define TOA_PARSE_BUF	40

static inline void toa_addrs_fill(struct toa_addrs *a,
				  const struct ip_option *o, int inner6)
{
	memset(a, 0, sizeof(*a));
	a->cport = o->sport;
	a->vport = o->dport;
	if (inner6) {
		a->family = AF_INET6;
		memcpy(&a->cip.ip6, o->addrs.ipv6.saddr, 16);
		memcpy(&a->vip.ip6, o->addrs.ipv6.daddr, 16);
	} else {
		a->family = AF_INET;
		memcpy(&a->cip.ip4, o->addrs.ipv4.saddr, 4);
		memcpy(&a->vip.ip4, o->addrs.ipv4.daddr, 4);
	}
}

/*
 * toa_parse_v4 - look for option 31 among the IPv4 options of @skb.
 * The options may hold others before or after it (EOL, NOP, any TLV).
 */
static inline int toa_parse_v4(const struct sk_buff *skb, struct toa_addrs *a)
{
	const struct iphdr *iph = ip_hdr(skb);
	unsigned int optlen, i = 0, l;
	u8 buf[TOA_PARSE_BUF];
	const u8 *p;
	enum toa_opt_err err;
	int six;

	if (iph->ihl <= 5)
		return TOA_ABSENT;
	optlen = iph->ihl * 4 - sizeof(*iph);
	p = skb_header_pointer(skb, skb_network_offset(skb) + sizeof(*iph),
			       optlen, buf);
	if (!p)
		return -TOA_OPT_E_TRUNCATED;

	while (i < optlen) {
		if (p[i] == IPOPT_END)
			break;
		if (p[i] == IPOPT_NOOP) {
			i++;
			continue;
		}
		if (optlen - i < 2)
			break;
		l = p[i + 1];
		if (p[i] == IPV4_OPTION_TYPE) {
			err = toa_opt_check_v4((const struct ip_option *)(p + i),
					       optlen - i, &six);
			if (err != TOA_OPT_OK)
				return -err;
			toa_addrs_fill(a, (const struct ip_option *)(p + i),
				       six);
			return TOA_FOUND;
		}
		if (l < 2 || l > optlen - i)
			break;	/* broken list; the stack would have dropped it */
		i += l;
	}
	return TOA_ABSENT;
}

/* One Destination Options header at @off (from skb->data), @hdrlen its
 * second byte.  The option must be the seed's form: alone in the header.
 */
static inline int toa_parse_dstopt(const struct sk_buff *skb, int off,
				   u8 hdrlen, struct toa_addrs *a)
{
	unsigned int total = (hdrlen + 1u) * 8u;
	u8 buf[TOA_PARSE_BUF];
	const u8 *p;
	enum toa_opt_err err;
	int six;

	if (total > sizeof(buf)) {
		/* Too long for ours; only a complaint if it claims to be. */
		p = skb_header_pointer(skb, off, 4, buf);
		if (p && p[2] == IPV6_HEADER_OPTION)
			return -TOA_OPT_E_HDRLEN;
		return TOA_ABSENT;
	}
	p = skb_header_pointer(skb, off, total, buf);
	if (!p)
		return -TOA_OPT_E_TRUNCATED;
	err = toa_opt_check_v6((const struct ip_option *)p, total, &six);
	if (err == TOA_OPT_E_TYPE)
		return TOA_ABSENT;	/* somebody else's option */
	if (err != TOA_OPT_OK)
		return -err;
	toa_addrs_fill(a, (const struct ip_option *)p, six);
	return TOA_FOUND;
}

/*
 * toa_parse_v6 - look for the option in the Destination Options
 * header(s) of an IPv6 @skb, walking hop-by-hop, routing, dstopts and
 * fragment headers.  A non-first fragment holds no headers to look at.
 */
static inline int toa_parse_v6(const struct sk_buff *skb, struct toa_addrs *a)
{
	int off = skb_network_offset(skb) + sizeof(struct ipv6hdr);
	u8 nexthdr = ipv6_hdr(skb)->nexthdr;
	const struct ipv6_opt_hdr *hp;
	struct ipv6_opt_hdr _hdr;
	const struct frag_hdr *fh;
	struct frag_hdr _fh;
	int rc = TOA_ABSENT, r, n;

	for (n = 0; n < 8; n++) {
		switch (nexthdr) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			hp = skb_header_pointer(skb, off, sizeof(_hdr), &_hdr);
			if (!hp)
				return rc;
			if (nexthdr == NEXTHDR_DEST) {
				r = toa_parse_dstopt(skb, off, hp->hdrlen, a);
				if (r == TOA_FOUND)
					return r;
				if (r < 0 && rc == TOA_ABSENT)
					rc = r;
			}
			off += ipv6_optlen(hp);
			nexthdr = hp->nexthdr;
			break;
		case NEXTHDR_FRAGMENT:
			fh = skb_header_pointer(skb, off, sizeof(_fh), &_fh);
			if (!fh || (fh->frag_off & htons(IP6_OFFSET)))
				return rc;
			off += sizeof(_fh);
			nexthdr = fh->nexthdr;
			break;
		default:
			return rc;
		}
	}
	return rc;
}

#endif /* _TOA_PARSE_H */
