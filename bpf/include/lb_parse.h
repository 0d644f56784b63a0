/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * lb_parse.h - what the fullnat LB reads of a frame: Ethernet, IPv4 (with
 * its options, looking for type 31) or IPv6 (walking its extension
 * headers), and the TCP/UDP ports, into a struct pkt, bounded so that the
 * 6.1 verifier accepts the pointer arithmetic.
 */
#ifndef TOALAB_LB_PARSE_H
#define TOALAB_LB_PARSE_H

#include "parse.h"
#include "lb_maps.h"

#define LB_L3_MAX	256	/* longest client header chain handled */
#define IP_DF_BIT	0x4000

enum {
	P_OK = 0,
	P_PASS,			/* not IP */
	P_MALFORMED,
	P_FRAG,			/* addresses parsed, no L4 */
	P_OTHER,		/* addresses parsed, L4 is not TCP/UDP */
};

#define TCPF_FIN	0x01
#define TCPF_SYN	0x02
#define TCPF_RST	0x04
#define TCPF_ACK	0x10

/* Bounded walk of IPv4 options for type 31 (called only when IHL > 5). */
static __always_inline int ipv4_has_opt31(struct iphdr *iph, void *data_end)
{
	__u8 *opts = (__u8 *)(iph + 1);
	__u32 olen = iph->ihl * 4 - sizeof(*iph);
	__u32 off = 0;

	for (int i = 0; i < 40; i++) {
		__u8 *p;

		if (off >= olen)
			return 0;
		off &= 0x3f;
		p = opts + off;
		if ((void *)(p + 2) > data_end)
			return 0;
		if (p[0] == IPV4_OPTION_TYPE)
			return 1;
		if (p[0] == 0)
			return 0;
		if (p[0] == 1) {
			off++;
			continue;
		}
		if (p[1] < 2)
			return 0;
		off += p[1];
	}
	return 0;
}


/*
 * @v & @mask, with the mask kept even where clang can prove it redundant:
 * the 6.1 verifier loses a value's range across a byte swap or a stack
 * spill and then refuses to add it to a packet pointer; the mask, behind
 * an empty asm clang cannot see through, gives the range back.
 */
static __always_inline __u32 lb_bound(__u32 v, __u32 mask)
{
	asm volatile("" : "+r"(v));
	return v & mask;
}

/* a 16-bit length from the wire, in host order and bounded */
static __always_inline __u32 lb_len16(__be16 v)
{
	return lb_bound(bpf_ntohs(v), 0xffff);
}

static __always_inline int parse_pkt(void *data, void *data_end, struct hdr_cursor *c,
				     __u16 eproto, struct pkt *p)
{
	void *l3 = c->pos;
	__u32 l3len;
	__u32 iplen;

	if (eproto == ETH_P_IP) {
		struct iphdr *iph;

		if (parse_ipv4(c, data_end, &iph) < 0)
			return P_MALFORMED;
		iplen = lb_len16(iph->tot_len);
		l3len = iph->ihl * 4;
		if (iplen < l3len || l3 + iplen > data_end)
			return P_MALFORMED;
		p->family = 4;
		p->src.v4 = iph->saddr;
		p->dst.v4 = iph->daddr;
		p->proto = iph->protocol;
		p->tos = iph->tos;
		p->ttl = iph->ttl;
		p->df = !!(iph->frag_off & bpf_htons(IP_DF_BIT));
		if (iph->ihl > 5) {
			p->has_opts = 1;
			p->opt31 = ipv4_has_opt31(iph, data_end);
		}
		p->l4len = iplen - l3len;
		if (ipv4_is_fragment(iph))
			return P_FRAG;
	} else {
		struct ipv6hdr *ip6h;
		struct ipv6_info info;

		if (parse_ipv6(c, data_end, &ip6h, &info) < 0)
			return P_MALFORMED;
		l3len = c->pos - l3;
		iplen = lb_len16(ip6h->payload_len) + sizeof(*ip6h);
		if (iplen < l3len || l3 + iplen > data_end)
			return P_MALFORMED;
		p->family = 6;
		__builtin_memcpy(p->src.b, &ip6h->saddr, 16);
		__builtin_memcpy(p->dst.b, &ip6h->daddr, 16);
		p->proto = info.l4proto;
		p->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		p->flow = ((__u32)(ip6h->flow_lbl[0] & 0x0f) << 16) |
			  ((__u32)ip6h->flow_lbl[1] << 8) | ip6h->flow_lbl[2];
		p->ttl = ip6h->hop_limit;
		p->df = 1;
		if (l3len > sizeof(*ip6h)) {
			p->has_opts = 1;
			p->opt31 = info.dstopt31;
		}
		p->l4len = iplen - l3len;
		if (info.is_fragment)
			return P_FRAG;
	}
	if (l3len > LB_L3_MAX)
		return P_MALFORMED;
	p->l4off = sizeof(struct ethhdr) + l3len;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th;

		if (parse_tcp(c, data_end, &th) < 0 || p->l4len < th->doff * 4)
			return P_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcpflags = ((__u8 *)th)[13];
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *uh;

		if (parse_udp(c, data_end, &uh) < 0 || p->l4len < sizeof(*uh))
			return P_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
	} else {
		return P_OTHER;
	}
	return P_OK;
}

#endif /* TOALAB_LB_PARSE_H */
