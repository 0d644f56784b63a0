/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * parse.h - bounds-checked header parsing for XDP programs.
 *
 * A struct hdr_cursor walks the packet; every parse_* helper checks the
 * header against data_end before touching it, advances the cursor past it
 * and returns 0, or returns a negative PARSE_* code and leaves the cursor
 * alone.  Multi-byte results (protocols) are returned in host order.
 *
 * Loops are bounded by compile-time constants.  The header walks (VLAN,
 * IPv6 extensions) are unrolled; the TCP option walk is a plain bounded
 * loop (verifier support since 5.3): unrolled, its 40 steps of packet
 * pointers cost the verifier ~4x more states, and clang 14 refuses to unroll
 * the scalar-offset form.  Nothing needs kfuncs or helpers after 5.15.
 */
#ifndef TOALAB_PARSE_H
#define TOALAB_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "bpf_common.h"

#define PARSE_OK	0
#define PARSE_TRUNC	(-1)	/* header runs past the end of the packet */
#define PARSE_INVALID	(-2)	/* header present but not well formed */

#ifndef ETH_P_8021Q
#define ETH_P_8021Q	0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD	0x88A8
#endif
#define PARSE_VLAN_MAX	2	/* QinQ */
#define IPV6_EXT_MAX	6	/* extension headers skipped before giving up */
#ifndef TCP_OPT_WALK_MAX
#define TCP_OPT_WALK_MAX 40	/* options are at most 40 bytes: 40 NOPs */
#endif

/* TCP option kinds (RFC 9293, RFC 7323); not in the UAPI headers */
#define TCPOPT_EOL		0
#define TCPOPT_NOP		1
#define TCPOPT_MSS		2
#define TCPOPT_WINDOW		3
#define TCPOPT_SACK_PERM	4
#define TCPOPT_TIMESTAMP	8
#define TCPOLEN_TIMESTAMP	10

#define IP_MF_BIT	0x2000
#define IP_OFFSET_MASK	0x1fff

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* IPv6 Fragment header (RFC 8200 4.5) */
struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;	/* offset << 3 | M */
	__be32 identification;
};

/* What parse_ipv6 learned beyond the fixed header. */
struct ipv6_info {
	__u8 l4proto;		/* first header that is not an extension */
	__u8 is_fragment;	/* a Fragment header was seen */
	__u16 frag_offset;	/* in 8-octet units; non-zero: no L4 header here */
	__u8 *dstopt;		/* first Destination Options header, or NULL */
	__u8 dstopt31;		/* some Destination Options header starts with option 31 */
};

/* Ethernet, then up to PARSE_VLAN_MAX 802.1Q/802.1ad tags. */
static __always_inline int parse_eth(struct hdr_cursor *c, void *data_end,
				     struct ethhdr **ethp, __u16 *proto)
{
	struct ethhdr *eth = c->pos;
	void *pos;
	__be16 p;

	if ((void *)(eth + 1) > data_end)
		return PARSE_TRUNC;
	pos = eth + 1;
	p = eth->h_proto;
#pragma unroll
	for (int i = 0; i < PARSE_VLAN_MAX; i++) {
		struct vlan_hdr *vh = pos;

		if (p != bpf_htons(ETH_P_8021Q) && p != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return PARSE_TRUNC;
		p = vh->encap_proto;
		pos = vh + 1;
	}
	c->pos = pos;
	*ethp = eth;
	*proto = bpf_ntohs(p);
	return PARSE_OK;
}

/* IPv4 header with its options; the cursor ends on the L4 header. */
static __always_inline int parse_ipv4(struct hdr_cursor *c, void *data_end,
				      struct iphdr **iphp)
{
	struct iphdr *iph = c->pos;
	__u32 hlen;

	if ((void *)(iph + 1) > data_end)
		return PARSE_TRUNC;
	if (iph->version != 4 || iph->ihl < 5)
		return PARSE_INVALID;
	hlen = iph->ihl * 4;
	if (c->pos + hlen > data_end)
		return PARSE_TRUNC;
	c->pos += hlen;
	*iphp = iph;
	return PARSE_OK;
}

/* More fragments follow, or this is not the first: true for any fragment. */
static __always_inline int ipv4_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(IP_MF_BIT | IP_OFFSET_MASK)) != 0;
}

static __always_inline int ipv6_is_ext(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING ||
	       nh == IPPROTO_DSTOPTS || nh == IPPROTO_FRAGMENT ||
	       nh == IPPROTO_AH;
}

/*
 * IPv6 fixed header, then extension headers (Hop-by-Hop, Routing,
 * Destination Options, Fragment, AH), at most IPV6_EXT_MAX of them; the
 * cursor ends on the first header that is not an extension (info->l4proto).
 * A fragment with a non-zero offset stops the walk: its payload is not an
 * L4 header.  info->dstopt points at the first Destination Options header
 * (the TOA option lives there) or is NULL; info->dstopt31 says whether any
 * of them starts with option 31.
 */
static __always_inline int parse_ipv6(struct hdr_cursor *c, void *data_end,
				      struct ipv6hdr **ip6hp, struct ipv6_info *info)
{
	struct ipv6hdr *ip6h = c->pos;
	void *pos;
	__u8 nh;

	if ((void *)(ip6h + 1) > data_end)
		return PARSE_TRUNC;
	if (ip6h->version != 6)
		return PARSE_INVALID;
	pos = ip6h + 1;
	nh = ip6h->nexthdr;
	info->is_fragment = 0;
	info->frag_offset = 0;
	info->dstopt = NULL;
	info->dstopt31 = 0;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		__u8 *eh = pos;
		__u32 len;

		if (!ipv6_is_ext(nh))
			break;
		if ((void *)(eh + 8) > data_end)
			return PARSE_TRUNC;
		if (nh == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr *fh = pos;

			info->is_fragment = 1;
			info->frag_offset = bpf_ntohs(fh->frag_off) >> 3;
			nh = fh->nexthdr;
			pos = fh + 1;
			if (info->frag_offset)
				break;
			continue;
		}
		if (nh == IPPROTO_DSTOPTS) {
			if (!info->dstopt)
				info->dstopt = eh;
			/* what TOA/UOA accept, in any of them: option 31 first */
			if (eh[2] == 31)
				info->dstopt31 = 1;
		}
		if (nh == IPPROTO_AH)
			len = ((__u32)eh[1] + 2) * 4;
		else
			len = ((__u32)eh[1] + 1) * 8;
		nh = eh[0];
		if (pos + len > data_end)
			return PARSE_TRUNC;
		pos += len;
	}
	if (ipv6_is_ext(nh) && !info->frag_offset)
		return PARSE_INVALID;	/* more extension headers than we walk */
	c->pos = pos;
	info->l4proto = nh;
	*ip6hp = ip6h;
	return PARSE_OK;
}

/* TCP header including its options (doff * 4 bytes). */
static __always_inline int parse_tcp(struct hdr_cursor *c, void *data_end,
				     struct tcphdr **tcphp)
{
	struct tcphdr *th = c->pos;
	__u32 hlen;

	if ((void *)(th + 1) > data_end)
		return PARSE_TRUNC;
	if (th->doff < 5)
		return PARSE_INVALID;
	hlen = th->doff * 4;
	if (c->pos + hlen > data_end)
		return PARSE_TRUNC;
	c->pos += hlen;
	*tcphp = th;
	return PARSE_OK;
}

static __always_inline int parse_udp(struct hdr_cursor *c, void *data_end,
				     struct udphdr **udphp)
{
	struct udphdr *uh = c->pos;

	if ((void *)(uh + 1) > data_end)
		return PARSE_TRUNC;
	c->pos = uh + 1;
	*udphp = uh;
	return PARSE_OK;
}

/*
 * Find TCP option @kind in the options of @th (already checked by
 * parse_tcp to lie inside the packet).  Walks kind/length pairs, skipping
 * NOPs, stopping at EOL, at a malformed length (< 2 or past the header) or
 * after TCP_OPT_WALK_MAX steps.  The first option of that kind must have
 * length @len, else there is no valid one: NULL.  On success the returned
 * pointer has @len readable bytes.  The walk keeps a scalar offset (masked
 * to 6 bits) rather than a moving packet pointer, which lets the verifier
 * prune; still, call it from a global (noinline) function so that it is
 * verified once rather than once per parsing path of the caller.
 */
static __always_inline __u8 *tcp_find_option(struct tcphdr *th, void *data_end,
					     __u8 kind, __u8 len)
{
	__u8 *opts = (__u8 *)(th + 1);
	__u32 optlen = th->doff * 4;
	__u32 off = 0;

	if (optlen < sizeof(*th) || (void *)opts + (optlen - sizeof(*th)) > data_end)
		return NULL;
	optlen -= sizeof(*th);
	for (int i = 0; i < TCP_OPT_WALK_MAX; i++) {
		__u8 *p;
		__u8 k, l;

		if (off >= optlen)
			return NULL;
		off &= 0x3f;	/* < 40 already; tells the verifier */
		p = opts + off;
		if ((void *)(p + 1) > data_end)
			return NULL;
		k = p[0];
		if (k == TCPOPT_EOL)
			return NULL;
		if (k == TCPOPT_NOP) {
			off++;
			continue;
		}
		if (off + 2 > optlen || (void *)(p + 2) > data_end)
			return NULL;
		l = p[1];
		if (l < 2 || off + l > optlen)
			return NULL;
		if (k == kind) {
			if (l != len || (void *)(p + len) > data_end)
				return NULL;
			return p;
		}
		off += l;
	}
	return NULL;
}

#endif /* TOALAB_PARSE_H */
