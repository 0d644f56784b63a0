/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * lb_encap.h - how the fullnat LB writes a frame: the new IPv4 or IPv6
 * header with the TOA/UOA option (IPv4 option 31, or a Destination Options
 * header), the Ethernet header, optionally wrapped in
 * Ethernet/IPv4/UDP/VXLAN or Ethernet/IPv6/UDP/VXLAN, the headroom
 * adjusted and the L4 checksum updated (emit()); and the way back, a VXLAN
 * frame from an RS to our VTEP unwrapped (lb_decap()).
 */
#ifndef TOALAB_LB_ENCAP_H
#define TOALAB_LB_ENCAP_H

#include "csum.h"
#include "lb_parse.h"

#define VXLAN_OVERHEAD	50	/* outer Ethernet is the frame's own: IPv4 + UDP + VXLAN + inner Ethernet */
#define VXLAN6_OVERHEAD	70	/* the same over IPv6 */
#define VXLAN_HDR	8

static __always_inline __u32 vxlan_overhead(__u8 underlay)
{
	return underlay == 6 ? VXLAN6_OVERHEAD : underlay == 4 ? VXLAN_OVERHEAD : 0;
}

/* One's complement sum of the address words of one family; @neg: subtract. */
static __always_inline __u32 csum_addr(__u32 acc, const union lb_addr *a, __u8 family, int neg)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 w;

		if (i > 0 && family == 4)
			break;
		w = neg ? ~a->a[i] : a->a[i];
		acc += w >> 16;
		acc += w & 0xffff;
	}
	return acc;
}

static __always_inline __sum16 hdr_csum(const void *hdr, const int nwords)
{
	const __u16 *w = hdr;
	__u32 acc = 0;

#pragma unroll
	for (int i = 0; i < nwords; i++)
		acc += w[i];
	return csum_fold(acc);
}

/* IPv4 header without its checksum; @hlen 20, 36 or 60. */
static __always_inline void fill_ipv4(struct iphdr *ip, const struct pkt *p,
				      const struct emit *e, __u32 hlen)
{
	*(__u8 *)ip = 0x40 | (hlen / 4);
	ip->tos = p->tos;
	ip->tot_len = bpf_htons(hlen + p->l4len);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF_BIT);
	ip->ttl = p->ttl - 1;	/* a hop: lb_forward/lb_reverse drop what would reach 0 */
	ip->protocol = p->proto;
	ip->check = 0;
	ip->saddr = e->src.v4;
	ip->daddr = e->dst.v4;
}

static __always_inline void fill_ipv6(struct ipv6hdr *ip6, const struct pkt *p,
				      const struct emit *e, __u32 extlen)
{
	*(__be32 *)ip6 = bpf_htonl((6u << 28) | ((__u32)p->tos << 20) | p->flow);
	ip6->payload_len = bpf_htons(extlen + p->l4len);
	ip6->nexthdr = extlen ? IPV6_HEADER_DST : p->proto;
	ip6->hop_limit = p->ttl - 1;
	__builtin_memcpy(&ip6->saddr, e->src.b, 16);
	__builtin_memcpy(&ip6->daddr, e->dst.b, 16);
}

/* Write the L3 header (with the option) at @pos; 0 or -1. */
static __always_inline int write_l3(void *pos, void *data_end, const struct pkt *p,
				    const struct emit *e)
{
	if (e->family == 4) {
		struct iphdr *ip = pos;

		if (e->optlen == 0) {
			if (pos + 20 > data_end)
				return -1;
			fill_ipv4(ip, p, e, 20);
			ip->check = hdr_csum(ip, 10);
		} else if (e->optlen == TOA_OPT_LEN_INNER4) {
			if (pos + 36 > data_end)
				return -1;
			fill_ipv4(ip, p, e, 36);
			__builtin_memcpy(pos + 20, &e->opt, TOA_OPT_LEN_INNER4);
			ip->check = hdr_csum(ip, 18);
		} else {
			if (pos + 60 > data_end)
				return -1;
			fill_ipv4(ip, p, e, 60);
			__builtin_memcpy(pos + 20, &e->opt, TOA_OPT_LEN_INNER6);
			ip->check = hdr_csum(ip, 30);
		}
		return 0;
	}
	if (e->optlen == 0) {
		if (pos + 40 > data_end)
			return -1;
		fill_ipv6(pos, p, e, 0);
	} else if (e->optlen == TOA_OPT_LEN_INNER4) {
		if (pos + 56 > data_end)
			return -1;
		fill_ipv6(pos, p, e, TOA_OPT_LEN_INNER4);
		__builtin_memcpy(pos + 40, &e->opt, TOA_OPT_LEN_INNER4);
	} else {
		if (pos + 80 > data_end)
			return -1;
		fill_ipv6(pos, p, e, TOA_OPT_LEN_INNER6);
		__builtin_memcpy(pos + 40, &e->opt, TOA_OPT_LEN_INNER6);
	}
	return 0;
}

/* UDP/VXLAN/inner Ethernet after the outer IP header, at @uh. */
static __always_inline void write_vxlan(struct udphdr *uh, const struct emit *e, __u32 inner)
{
	__be32 *vx = (void *)(uh + 1);
	struct ethhdr *in = (void *)(vx + 2);

	uh->source = e->vx_sport;
	uh->dest = bpf_htons(VXLAN_PORT);
	uh->len = bpf_htons(sizeof(*uh) + VXLAN_HDR + inner);
	uh->check = 0;	/* RFC 7348 over IPv4; over IPv6 the RS's device takes zero (RFC 6935) */
	vx[0] = bpf_htonl(0x08000000);
	vx[1] = bpf_htonl(e->vni << 8);
	__builtin_memcpy(in->h_dest, e->inner_dmac, ETH_ALEN);
	__builtin_memcpy(in->h_source, e->inner_smac, ETH_ALEN);
	in->h_proto = bpf_htons(e->family == 4 ? ETH_P_IP : ETH_P_IPV6);
}

/* Ethernet (+ the VXLAN underlay when asked) at @data; returns the L3 offset or -1. */
static __always_inline int write_l2(void *data, void *data_end, const struct emit *e,
				    __u32 l3out, __u32 l4len)
{
	struct ethhdr *eth = data;
	__u32 inner = sizeof(struct ethhdr) + l3out + l4len;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, e->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, e->smac, ETH_ALEN);
	if (!e->vxlan) {
		eth->h_proto = bpf_htons(e->family == 4 ? ETH_P_IP : ETH_P_IPV6);
		return sizeof(*eth);
	}
	if (e->vxlan == 4) {
		struct iphdr *ip = (void *)(eth + 1);

		if (data + sizeof(*eth) + VXLAN_OVERHEAD > data_end)
			return -1;
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u8 *)ip = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(struct udphdr) + VXLAN_HDR + inner);
		ip->id = 0;
		ip->frag_off = bpf_htons(IP_DF_BIT);
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		ip->saddr = e->vtep_src.v4;
		ip->daddr = e->vtep_dst.v4;
		ip->check = ipv4_hdr_csum20(ip);
		write_vxlan((void *)(ip + 1), e, inner);
		return sizeof(*eth) + VXLAN_OVERHEAD;
	}
	{
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if (data + sizeof(*eth) + VXLAN6_OVERHEAD > data_end)
			return -1;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = bpf_htonl(6u << 28);
		ip6->payload_len = bpf_htons(sizeof(struct udphdr) + VXLAN_HDR + inner);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, e->vtep_src.b, 16);
		__builtin_memcpy(&ip6->daddr, e->vtep_dst.b, 16);
		write_vxlan((void *)(ip6 + 1), e, inner);
		return sizeof(*eth) + VXLAN6_OVERHEAD;
	}
}

/*
 * A VXLAN frame (@p: its outer UDP to port 4789, parsed) for one of our
 * VTEPs and VNIs (lb_vteps) loses its outer Ethernet/IP/UDP/VXLAN headers:
 * the inner frame, the RS's reply, is then at ctx->data.  1 when done, 0 when
 * it is no VXLAN of ours (left as it was), -1 when it cannot be unwrapped.
 */
static __always_inline int lb_decap(struct xdp_md *ctx, const struct pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_vtep_key vk = {};
	__u32 off = p->l4off;
	__be32 *vx;

	if (off > sizeof(struct ethhdr) + LB_L3_MAX)
		return 0;
	off = lb_bound(off, 0x1ff);
	vx = data + off + sizeof(struct udphdr);
	if ((void *)(vx + 2) > data_end || data + off + sizeof(struct udphdr) + VXLAN_HDR +
	    sizeof(struct ethhdr) > data_end)
		return 0;
	if (!(vx[0] & bpf_htonl(0x08000000)))
		return 0;	/* no VNI */
	vk.addr = p->dst;
	vk.family = p->family;
	vk.vni = bpf_ntohl(vx[1]) >> 8;
	if (!bpf_map_lookup_elem(&lb_vteps, &vk))
		return 0;
	if (bpf_xdp_adjust_head(ctx, off + sizeof(struct udphdr) + VXLAN_HDR))
		return -1;
	return 1;
}

/*
 * Rewrite the parsed packet @p as @e says: L4 ports and checksum in place,
 * then new L2/L3 headers in front of it.  0, or an XDP_DROP reason counter.
 */
static __always_inline int emit(struct xdp_md *ctx, const struct pkt *p, const struct emit *e)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3out = (e->family == 4 ? 20 : 40) + e->optlen;
	__u32 l4off = p->l4off;
	__sum16 *check;
	__sum16 *ports;
	__u32 acc;
	int delta, l3at;

	if (l4off > sizeof(struct ethhdr) + LB_L3_MAX)
		return LB_C_MALFORMED;
	l4off = lb_bound(l4off, 0x1ff);	/* <= 511, as the check above says */
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4off;

		if ((void *)(th + 1) > data_end)
			return LB_C_MALFORMED;
		check = &th->check;
		ports = (void *)th;
	} else {
		struct udphdr *uh = data + l4off;

		if ((void *)(uh + 1) > data_end)
			return LB_C_MALFORMED;
		check = &uh->check;
		ports = (void *)uh;
	}
	if (p->proto != IPPROTO_UDP || *check != 0) {
		acc = (__u16)~*check;
		acc = csum_addr(acc, &p->src, p->family, 1);
		acc = csum_addr(acc, &p->dst, p->family, 1);
		acc = csum_addr(acc, &e->src, e->family, 0);
		acc = csum_addr(acc, &e->dst, e->family, 0);
		acc += (__u16)~p->sport;
		acc += (__u16)~p->dport;
		acc += e->sport;
		acc += e->dport;
		*check = csum_fold(acc);
		if (p->proto == IPPROTO_UDP && *check == 0)
			*check = 0xffff;
	} else if (e->family == 6) {
		return LB_C_UDP_NOCSUM;	/* mandatory in IPv6; would need the payload */
	}
	ports[0] = e->sport;
	ports[1] = e->dport;

	delta = (int)(sizeof(struct ethhdr) + l3out + vxlan_overhead(e->vxlan)) - (int)l4off;
	if (bpf_xdp_adjust_head(ctx, -delta))
		return LB_C_ADJUST_FAIL;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	l3at = write_l2(data, data_end, e, l3out, p->l4len);
	if (l3at < 0)
		return LB_C_ADJUST_FAIL;
	if (write_l3(data + (l3at & 0xff), data_end, p, e) < 0)
		return LB_C_ADJUST_FAIL;
	return 0;
}

#endif /* TOALAB_LB_ENCAP_H */
