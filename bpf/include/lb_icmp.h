/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * lb_icmp.h - what the fullnat LB needs to carry an ICMP error about one of
 * its flows across: which messages are errors, their type/code/MTU/pointer
 * in the other family (RFC 7915 sections 4.2 and 5.2), the quoted packet
 * read and written, and the checksum arithmetic over what changes.  The
 * packet logic (which flow, which way) is lb_icmp() in lb.c.
 */
#ifndef TOALAB_LB_ICMP_H
#define TOALAB_LB_ICMP_H

#include "lb_encap.h"

#define ICMP4_DEST_UNREACH	3
#define ICMP4_FRAG_NEEDED	4	/* code of DEST_UNREACH */
#define ICMP4_TIME_EXCEEDED	11
#define ICMP4_PARAMPROB		12
#define ICMP6_DEST_UNREACH	1
#define ICMP6_PKT_TOOBIG	2
#define ICMP6_TIME_EXCEED	3
#define ICMP6_PARAMPROB		4

#define ICMP4_MTU_MIN		68	/* RFC 791 */
#define ICMP6_MTU_MIN		1280	/* RFC 8200 */
#define LB_ICMP_QHDR_MAX	120	/* longest quoted IP header handled: ours with the option is 80 */

struct lb_icmp_hdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__u8 rest[4];		/* unused / MTU / pointer */
};

static __always_inline int icmp_is_error(__u8 type, __u8 family)
{
	if (family == 4)
		return type == ICMP4_DEST_UNREACH || type == ICMP4_TIME_EXCEEDED ||
		       type == ICMP4_PARAMPROB;
	return type >= ICMP6_DEST_UNREACH && type <= ICMP6_PARAMPROB;
}

static __always_inline __u32 mtu_for(__s32 mtu, __u8 family)
{
	__s32 min = family == 4 ? ICMP4_MTU_MIN : ICMP6_MTU_MIN;

	if (mtu < min)
		return min;
	return mtu > 0xffff && family == 4 ? 0xffff : (__u32)mtu;
}

static __always_inline void rest_be32(struct lb_icmp_hdr *h, __u32 v)
{
	h->rest[0] = v >> 24;
	h->rest[1] = v >> 16;
	h->rest[2] = v >> 8;
	h->rest[3] = v;
}

/* RFC 7915 figure 3 (IPv4 header field -> IPv6's), and its inverse (figure 6) */
static __always_inline int pointer_4to6(__u32 p)
{
	if (p <= 1)
		return p;
	if (p == 2 || p == 3)
		return 4;
	if (p == 8)
		return 7;
	if (p == 9)
		return 6;
	if (p >= 12 && p <= 15)
		return 8;
	if (p >= 16 && p <= 19)
		return 24;
	return -1;
}

static __always_inline int pointer_6to4(__u32 p)
{
	if (p <= 1)
		return p;
	if (p == 4 || p == 5)
		return 2;
	if (p == 6)
		return 9;
	if (p == 7)
		return 8;
	if (p >= 8 && p <= 23)
		return 12;
	if (p >= 24 && p <= 39)
		return 16;
	return -1;
}

/*
 * @h, an error of family @from, as family @to says it; @delta: what the LB
 * adds to a packet on the way the quoted packet went, so that the MTU the
 * recipient must use is the reported one less @delta.  0, or -1 when the
 * message has no equivalent (RFC 7915: silently dropped) or points into
 * what the recipient never sent (the option).
 */
static __always_inline int icmp_xlat(struct lb_icmp_hdr *h, __u8 from, __u8 to, __s32 delta)
{
	__u8 t = h->type, c = h->code;
	__u32 mtu, ptr;
	int np;

	if (from == 4) {
		mtu = (__u32)h->rest[2] << 8 | h->rest[3];
		ptr = h->rest[0];
	} else {
		mtu = (__u32)h->rest[0] << 24 | (__u32)h->rest[1] << 16 | (__u32)h->rest[2] << 8 | h->rest[3];
		ptr = mtu;
	}
	if (from == to) {
		if (from == 4 && t == ICMP4_DEST_UNREACH && c == ICMP4_FRAG_NEEDED && mtu) {
			mtu = mtu_for((__s32)mtu - delta, 4);
			h->rest[2] = mtu >> 8;
			h->rest[3] = mtu;
		} else if (from == 6 && t == ICMP6_PKT_TOOBIG) {
			rest_be32(h, mtu_for((__s32)mtu - delta, 6));
		} else if ((from == 4 && t == ICMP4_PARAMPROB && ptr >= 20) ||
			   (from == 6 && t == ICMP6_PARAMPROB && ptr >= 40)) {
			return -1;
		}
		return 0;
	}
	if (from == 4) {
		rest_be32(h, 0);
		if (t == ICMP4_TIME_EXCEEDED) {
			h->type = ICMP6_TIME_EXCEED;
			return 0;
		}
		if (t == ICMP4_PARAMPROB) {
			np = pointer_4to6(ptr);
			if ((c != 0 && c != 2) || np < 0)
				return -1;
			h->type = ICMP6_PARAMPROB;
			h->code = 0;
			h->rest[3] = np;
			return 0;
		}
		switch (c) {	/* DEST_UNREACH */
		case 0: case 1: case 5: case 6: case 7: case 8: case 11: case 12:
			h->type = ICMP6_DEST_UNREACH;
			h->code = 0;
			return 0;
		case 2:
			h->type = ICMP6_PARAMPROB;
			h->code = 1;
			h->rest[3] = 6;		/* Next Header */
			return 0;
		case 3:
			h->type = ICMP6_DEST_UNREACH;
			h->code = 4;
			return 0;
		case ICMP4_FRAG_NEEDED:
			h->type = ICMP6_PKT_TOOBIG;
			h->code = 0;
			/* no MTU (a pre-RFC 1191 router): the least IPv6 has */
			rest_be32(h, mtu ? mtu_for((__s32)mtu - delta, 6) : ICMP6_MTU_MIN);
			return 0;
		case 9: case 10: case 13: case 15:
			h->type = ICMP6_DEST_UNREACH;
			h->code = 1;
			return 0;
		}
		return -1;
	}
	rest_be32(h, 0);
	if (t == ICMP6_DEST_UNREACH) {
		h->type = ICMP4_DEST_UNREACH;
		if (c == 0 || c == 2 || c == 3)
			h->code = 1;
		else if (c == 1)
			h->code = 10;
		else if (c == 4)
			h->code = 3;
		else
			return -1;
		return 0;
	}
	if (t == ICMP6_PKT_TOOBIG) {
		mtu = mtu_for((__s32)mtu - delta, 4);
		h->type = ICMP4_DEST_UNREACH;
		h->code = ICMP4_FRAG_NEEDED;
		h->rest[2] = mtu >> 8;
		h->rest[3] = mtu;
		return 0;
	}
	if (t == ICMP6_TIME_EXCEED) {
		h->type = ICMP4_TIME_EXCEEDED;
		return 0;
	}
	if (c == 1) {	/* PARAMPROB: unrecognized Next Header */
		h->type = ICMP4_DEST_UNREACH;
		h->code = 2;
		return 0;
	}
	np = pointer_6to4(ptr);
	if (c != 0 || np < 0)
		return -1;
	h->type = ICMP4_PARAMPROB;
	h->code = 0;
	h->rest[0] = np;
	return 0;
}

/*
 * The packet an ICMP error quotes, at @off (right after the ICMP header):
 * its IP header (family @family, with options or extension headers) and
 * the first 8 bytes of its TCP/UDP header, into @q (q->l4off: the length
 * of that IP header; q->l4len: its L4 length as the IP header says; for
 * IPv4, q->flow holds the IP ID and q->df the fragment field).  0, or -1
 * when it is no unfragmented TCP/UDP packet we could have sent.
 */
static __always_inline int parse_quote(void *data, void *data_end, __u32 off, __u8 family,
				       struct pkt *q)
{
	struct hdr_cursor c = { .pos = data + off };
	__u32 hlen, iplen;
	__be16 *ports;

	__builtin_memset(q, 0, sizeof(*q));	/* an IPv4 address leaves 12 bytes of its union */
	if (family == 4) {
		struct iphdr *iph;

		if (parse_ipv4(&c, data_end, &iph) < 0 || ipv4_is_fragment(iph))
			return -1;
		hlen = iph->ihl * 4;
		iplen = lb_len16(iph->tot_len);
		q->src.v4 = iph->saddr;
		q->dst.v4 = iph->daddr;
		q->proto = iph->protocol;
		q->tos = iph->tos;
		q->ttl = iph->ttl;
		q->flow = iph->id;
		q->df = iph->frag_off & bpf_htons(IP_DF_BIT) ? 1 : 0;
	} else {
		struct ipv6_info info;
		struct ipv6hdr *ip6h;

		if (parse_ipv6(&c, data_end, &ip6h, &info) < 0 || info.is_fragment)
			return -1;
		hlen = c.pos - (data + off);
		iplen = lb_len16(ip6h->payload_len) + sizeof(*ip6h);
		__builtin_memcpy(q->src.b, &ip6h->saddr, 16);
		__builtin_memcpy(q->dst.b, &ip6h->daddr, 16);
		q->proto = info.l4proto;
		q->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		q->flow = ((__u32)(ip6h->flow_lbl[0] & 0x0f) << 16) |
			  ((__u32)ip6h->flow_lbl[1] << 8) | ip6h->flow_lbl[2];
		q->ttl = ip6h->hop_limit;
	}
	if ((q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP) || hlen > LB_ICMP_QHDR_MAX ||
	    iplen < hlen + 8)
		return -1;
	ports = c.pos;
	if ((void *)(ports + 4) > data_end)
		return -1;
	q->family = family;
	q->sport = ports[0];
	q->dport = ports[1];
	q->l4off = hlen;
	q->l4len = iplen - hlen;
	return 0;
}

/* One's complement sum of @len bytes (a multiple of 4, <= LB_ICMP_QHDR_MAX) at @pos; @neg: subtract. */
static __always_inline __u32 csum_words(__u32 acc, const __u8 *pos, void *data_end, __u32 len, int neg)
{
	for (__u32 i = 0; i < LB_ICMP_QHDR_MAX / 4; i++) {
		__u32 w;

		if (i * 4 >= len || (void *)(pos + i * 4 + 4) > data_end)
			break;
		w = *(const __u32 *)(pos + i * 4);
		if (neg)
			w = ~w;
		acc += w >> 16;
		acc += w & 0xffff;
	}
	return acc;
}

/* The ICMPv6 pseudo-header (RFC 8200 8.1) of a message of @len bytes; @neg: subtract. */
static __always_inline __u32 csum_icmp6_pseudo(__u32 acc, const union lb_addr *src, const union lb_addr *dst,
					       __u32 len, int neg)
{
	__u16 l = bpf_htons(len), nh = bpf_htons(IPPROTO_ICMPV6);

	acc = csum_addr(acc, src, 6, neg);
	acc = csum_addr(acc, dst, 6, neg);
	acc += neg ? (__u16)~l : l;
	acc += neg ? (__u16)~nh : nh;
	return acc;
}

/* The 8-byte ICMP header without its checksum field; @neg: subtract. */
static __always_inline __u32 csum_icmp_hdr(__u32 acc, const struct lb_icmp_hdr *h, int neg)
{
	const __u16 *w = (const void *)h;

	acc += neg ? (__u16)~w[0] : w[0];
	acc += neg ? (__u16)~w[2] : w[2];
	acc += neg ? (__u16)~w[3] : w[3];
	return acc;
}

/*
 * The quoted packet's new IP header at @pos, no options: as its sender
 * (the client, or the RS) sent it, @q as it was quoted, @src/@dst its new
 * addresses.  Returns the header's one's complement sum (what the ICMP
 * checksum gains), or 0 when it does not fit.
 */
static __always_inline __u32 write_quote(void *pos, void *data_end, const struct pkt *q, __u8 family,
					 const union lb_addr *src, const union lb_addr *dst)
{
	if (family == 4) {
		struct iphdr *ip = pos;

		if ((void *)(ip + 1) > data_end)
			return 0;
		*(__u8 *)ip = 0x45;
		ip->tos = q->tos;
		ip->tot_len = bpf_htons(sizeof(*ip) + q->l4len);
		ip->id = q->family == 4 ? (__be16)q->flow : 0;
		ip->frag_off = q->family == 4 && !q->df ? 0 : bpf_htons(IP_DF_BIT);
		ip->ttl = q->ttl;
		ip->protocol = q->proto;
		ip->check = 0;
		ip->saddr = src->v4;
		ip->daddr = dst->v4;
		ip->check = hdr_csum(ip, 10);
		return csum_words(0, pos, data_end, sizeof(*ip), 0);
	}
	{
		struct ipv6hdr *ip6 = pos;
		__u32 flow = q->family == 6 ? q->flow : 0;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		*(__be32 *)ip6 = bpf_htonl((6u << 28) | ((__u32)q->tos << 20) | flow);
		ip6->payload_len = bpf_htons(q->l4len);
		ip6->nexthdr = q->proto;
		ip6->hop_limit = q->ttl;
		__builtin_memcpy(&ip6->saddr, src->b, 16);
		__builtin_memcpy(&ip6->daddr, dst->b, 16);
		return csum_words(0, pos, data_end, sizeof(*ip6), 0);
	}
}

#endif /* TOALAB_LB_ICMP_H */
