// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * lb.c - the lab's fullnat load balancer: an XDP stand-in for the DPDK LB
 * (TTGW) of the TOA/UOA seed.  One program, attached natively to both ports
 * of the lb node (eth0 client side, eth1 RS side), configured by
 * lab/lb.py through the maps below (layouts in include/lb.h).
 *
 * Forward (client -> VIP:vport/proto, a service in lb_services):
 *   the flow (cip, vip, cport, vport, proto) is looked up in lb_fwd (LRU);
 *   a new flow picks a real server (hash of the 5-tuple % n_rs), a local
 *   address (hash % n_local) and a local port (hash-chosen candidates in
 *   lb_cfg's range, claimed by inserting the reverse entry with
 *   BPF_NOEXIST, LB_PORT_TRIES tries).  The packet is rebuilt as
 *   lip:lport -> rip:rport in the RS-side family (4to4, 6to6, 6to4 = NAT64,
 *   and 4to6), the L4 checksum updated incrementally (addresses and ports;
 *   the pseudo-header's protocol + length sum is the same in both
 *   families, the option is outside it), and the TOA/UOA option
 *   (kmod/include/toa_opt.h) inserted:
 *     outer IPv4: IPv4 option type 31, 16 or 40 bytes, IHL 9 or 15, header
 *                 checksum recomputed over the grown header;
 *     outer IPv6: a Destination Options header (nexthdr 60) of 16 or 40
 *                 bytes between the IPv6 header and TCP/UDP.
 *   The inner addresses are those of the client side (cip, vip).  Headers
 *   are rebuilt, not edited: the client's IPv4 options and IPv6 extension
 *   headers are removed (so an option 31 from the client never reaches an
 *   RS).  bpf_xdp_adjust_head grows (or shrinks) the headroom by the
 *   difference and the L4 header stays where it was.  The frame leaves by
 *   bpf_redirect to the RS's port with MACs from lb_rs (the control plane
 *   reads them from the topology); with LB_SVC_VXLAN it is first wrapped in
 *   Ethernet/IPv4/UDP(4789)/VXLAN towards the RS's VTEP.
 *
 * Reverse (RS -> lip:lport, a flow in lb_rev): rebuilt as vip:vport ->
 *   cip:cport in the client's family, no option, redirected to the port the
 *   client's packets came in on, to the MAC they came from.
 *
 * Insertion rule.  TCP: the option rides on every client->RS segment of a
 *   flow until the LB has forwarded an RS->client segment without SYN --
 *   proof that the RS's socket left SYN_RECV, i.e. that the RS processed
 *   the handshake's third packet (where TOA reads the option, in
 *   tcp_v4/v6_syn_recv_sock).  That always covers the SYN and the third
 *   packet, and any retransmission of them or data that completes the
 *   handshake when the pure ACK was lost; a new SYN on the tuple starts the
 *   window again.  UDP: on the first lb_svc.opt_pkts packets of a flow.
 *
 * MSS rule.  Client->RS segments may carry the option (16/40 bytes, plus
 *   50 bytes of VXLAN) and change family (IPv6 header 20 bytes longer than
 *   IPv4).  Their size is bounded by the MSS the RS announces, so the
 *   SYN-ACK's MSS is clamped to mss_synack = MTU(RS side) - IP header(RS
 *   family) - option - encapsulation - 20; the SYN's MSS (bounding the RS's
 *   segments towards the client) to mss_syn = MTU(client side) - IP
 *   header(client family) - 20.  The control plane computes both.
 *
 * Flow state lifetime.  An entry of lb_fwd/lb_rev lives while the flow saw
 *   a packet in either direction within the idle lifetime (lb_cfg: TCP
 *   300 s, UDP 60 s by default); past it, a client packet starts a new flow
 *   (possibly another RS / local port) and the stale local port may be
 *   reused.  Both maps are LRU (LB_FLOWS entries): under pressure the least
 *   recently used flows are evicted first.  No FIN/RST tracking.
 *
 * Dropped: fragments to a VIP (no L4 ports in later fragments), truncated
 * or malformed IP/TCP/UDP headers, IPv4 UDP without checksum that would
 * have to become IPv6, non-service packets carrying option 31 on a port
 * that is not an RS port.  Passed to the kernel: everything else (ARP, ND,
 * ICMP to the VIP, traffic to the lb's own addresses, VLAN-tagged frames).
 */
#include "bpf_common.h"
#include "parse.h"
#include "csum.h"
#include "lb.h"
#include "../../kmod/include/toa_opt.h"

_Static_assert(sizeof(struct lb_svc_key) == 20, "lb_svc_key");
_Static_assert(sizeof(struct lb_svc) == 24, "lb_svc");
_Static_assert(sizeof(struct lb_rs) == 60, "lb_rs");
_Static_assert(sizeof(struct lb_cfg) == 24, "lb_cfg");
_Static_assert(sizeof(struct lb_flow_key) == 40, "lb_flow_key");
_Static_assert(sizeof(struct lb_fwd) == 56, "lb_fwd");
_Static_assert(sizeof(struct lb_rev) == 64, "lb_rev");
_Static_assert(sizeof(struct ip_option) == 40, "ip_option");

#define LB_L3_MAX	256	/* longest client header chain handled */
#define VXLAN_OVERHEAD	50	/* outer Ethernet is the frame's own: IPv4 + UDP + VXLAN + inner Ethernet */
#define IP_DF_BIT	0x4000

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES * 2);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc);
} lb_services SEC(".maps");

/* VIPs (port 0, proto 0 keys): fragments to them are dropped */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_svc_key);
	__type(value, __u32);
} lb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES * LB_MAX_RS);
	__type(key, __u32);
	__type(value, struct lb_rs);
} lb_rs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES * LB_MAX_LOCAL);
	__type(key, __u32);
	__type(value, union lb_addr);
} lb_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_cfg);
} lb_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} lb_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_fwd);
} lb_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_rev);
} lb_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lb_counters SEC(".maps");

/* What the parser learned about the incoming packet. */
struct pkt {
	union lb_addr src;
	union lb_addr dst;
	__be16 sport;
	__be16 dport;
	__u32 flow;		/* IPv6 flow label (host order) */
	__u16 l4off;		/* from the start of the frame */
	__u16 l4len;		/* L4 header + payload, per the IP length fields */
	__u8 family;
	__u8 proto;
	__u8 tos;
	__u8 ttl;
	__u8 has_opts;		/* IPv4 options / IPv6 extension headers */
	__u8 opt31;		/* one of them is the TOA option */
	__u8 tcpflags;		/* byte 13 of the TCP header */
	__u8 df;
};

/* What the rewrite produces. */
struct emit {
	struct ip_option opt;	/* first optlen bytes are inserted */
	union lb_addr src;
	union lb_addr dst;
	__be16 sport;
	__be16 dport;
	__be16 vx_sport;
	__u8 family;
	__u8 optlen;		/* 0, 16 or 40 */
	__u8 vxlan;
	__u8 smac[6];
	__u8 dmac[6];
	__u8 inner_smac[6];
	__u8 inner_dmac[6];
	__be32 vtep_src;
	__be32 vtep_dst;
	__u32 vni;
};

struct lb_scratch {
	struct emit e;
	struct lb_rev rv;
	struct lb_fwd nf;
};

/* per-CPU scratch: struct emit is too big for the 512-byte stack next to the rest */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_scratch);
} lb_scratch SEC(".maps");

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

static __always_inline void count(__u32 idx)
{
	percpu_count(&lb_counters, idx);
}

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
			if (info.dstopt && (void *)(info.dstopt + 3) <= data_end &&
			    info.dstopt[2] == IPV6_HEADER_OPTION)
				p->opt31 = 1;
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

static __always_inline __u32 flow_hash(const struct lb_flow_key *k)
{
	__u32 h = 0x9e3779b9;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h ^= k->src.a[i];
		h *= 0xcc9e2d51;
		h ^= k->dst.a[i];
		h = (h << 13) | (h >> 19);
	}
	h ^= ((__u32)k->sport << 16) ^ k->dport ^ k->proto;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
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

/*
 * Clamp the TCP MSS option of the segment at @l4off to @mss (host order);
 * a global function, so the option walk is verified once.  Returns 1 when
 * it changed the segment.
 */
__attribute__((noinline)) int lb_clamp_mss(struct xdp_md *ctx, __u32 l4off, __u32 mss)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;
	__u8 *o;
	__be16 old, new;

	if (!ctx || l4off > sizeof(struct ethhdr) + LB_L3_MAX)
		return 0;
	th = data + lb_bound(l4off, 0x1ff);
	if ((void *)(th + 1) > data_end)
		return 0;
	o = tcp_find_option(th, data_end, TCPOPT_MSS, 4);
	if (!o)
		return 0;
	old = *(__be16 *)(o + 2);
	if (bpf_ntohs(old) <= mss)
		return 0;
	new = bpf_htons(mss);
	*(__be16 *)(o + 2) = new;
	/* the MSS value sits at an even offset from the TCP header: o is
	 * th + 20 + an even offset only if the options before it have even
	 * length; fold the change in at its real alignment */
	if (((o + 2) - (__u8 *)th) & 1) {
		__u32 acc = (__u16)~th->check;

		/* bytes b0 b1 at an odd offset: words (x b0) (b1 y) */
		acc += (__u16)~((__u16)((__u8 *)&old)[0] << 8);
		acc += (__u16)~((__u16)((__u8 *)&old)[1]);
		acc += (__u16)((__u16)((__u8 *)&new)[0] << 8);
		acc += (__u16)((__u16)((__u8 *)&new)[1]);
		th->check = csum_fold(acc);
	} else {
		csum_replace2(&th->check, old, new);
	}
	return 1;
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
	ip->ttl = p->ttl;
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
	ip6->hop_limit = p->ttl;
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

/* Ethernet (+ VXLAN underlay when asked) at @data; returns the L3 offset or -1. */
static __always_inline int write_l2(void *data, void *data_end, const struct emit *e,
				    __u32 l3out, __u32 l4len)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_dest, e->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, e->smac, ETH_ALEN);
	if (!e->vxlan) {
		eth->h_proto = bpf_htons(e->family == 4 ? ETH_P_IP : ETH_P_IPV6);
		return sizeof(*eth);
	}
	{
		struct iphdr *ip = (void *)(eth + 1);
		struct udphdr *uh = (void *)(ip + 1);
		__be32 *vx = (void *)(uh + 1);
		struct ethhdr *in = (void *)(vx + 2);
		__u32 inner = sizeof(*in) + l3out + l4len;

		if ((void *)(in + 1) > data_end)
			return -1;
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u8 *)ip = 0x45;
		ip->tos = 0;
		ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*uh) + 8 + inner);
		ip->id = 0;
		ip->frag_off = bpf_htons(IP_DF_BIT);
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		ip->saddr = e->vtep_src;
		ip->daddr = e->vtep_dst;
		ip->check = ipv4_hdr_csum20(ip);
		uh->source = e->vx_sport;
		uh->dest = bpf_htons(VXLAN_PORT);
		uh->len = bpf_htons(sizeof(*uh) + 8 + inner);
		uh->check = 0;
		vx[0] = bpf_htonl(0x08000000);
		vx[1] = bpf_htonl(e->vni << 8);
		__builtin_memcpy(in->h_dest, e->inner_dmac, ETH_ALEN);
		__builtin_memcpy(in->h_source, e->inner_smac, ETH_ALEN);
		in->h_proto = bpf_htons(e->family == 4 ? ETH_P_IP : ETH_P_IPV6);
		return sizeof(*eth) + VXLAN_OVERHEAD;
	}
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

	delta = (int)(sizeof(struct ethhdr) + l3out + (e->vxlan ? VXLAN_OVERHEAD : 0)) - (int)l4off;
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

static __always_inline __u64 idle_ns(const struct lb_cfg *cfg, __u8 proto)
{
	return proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;
}

static __always_inline void rev_key_of(struct lb_flow_key *rk, const struct lb_fwd *f, __u8 proto)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	rk->src = f->rip;
	rk->dst = f->lip;
	rk->sport = f->rport;
	rk->dport = f->lport;
	rk->proto = proto;
	rk->family = f->rs_family;
}

static __always_inline void fwd_key_of(struct lb_flow_key *fk, const struct lb_rev *r, __u8 proto)
{
	__builtin_memset(fk, 0, sizeof(*fk));
	fk->src = r->cip;
	fk->dst = r->vip;
	fk->sport = r->cport;
	fk->dport = r->vport;
	fk->proto = proto;
	fk->family = r->c_family;
}

/* A reverse entry still in use: recent traffic in either direction. */
static __always_inline int rev_alive(const struct lb_rev *r, __u8 proto, __u64 now, __u64 idle)
{
	struct lb_flow_key fk;
	struct lb_fwd *f;

	if (now - r->last_ns <= idle)
		return 1;
	fwd_key_of(&fk, r, proto);
	f = bpf_map_lookup_elem(&lb_fwd, &fk);
	return f && now - f->last_ns <= idle;
}

static __always_inline int fwd_alive(const struct lb_fwd *f, __u8 proto, __u64 now, __u64 idle)
{
	struct lb_flow_key rk;
	struct lb_rev *r;

	if (now - f->last_ns <= idle)
		return 1;
	rev_key_of(&rk, f, proto);
	r = bpf_map_lookup_elem(&lb_rev, &rk);
	return r && now - r->last_ns <= idle;
}

/* Set up a new flow; NULL with *why set when impossible. */
static __always_inline struct lb_fwd *new_flow(struct xdp_md *ctx, const struct pkt *p,
					       const struct ethhdr *eth, const struct lb_svc *svc,
					       const struct lb_cfg *cfg, const struct lb_flow_key *fk,
					       __u64 now, __u32 *why, struct lb_scratch *sc)
{
	__u32 h = flow_hash(fk);
	__u64 idle = idle_ns(cfg, p->proto);
	struct lb_flow_key rk = {};
	struct lb_rev *rv = &sc->rv;
	struct lb_fwd *nf = &sc->nf;
	union lb_addr *lip;
	struct lb_rs *rs;
	__u32 idx, range, n;

	__builtin_memset(rv, 0, sizeof(*rv));
	__builtin_memset(nf, 0, sizeof(*nf));
	n = svc->n_rs;
	if (!n || n > LB_MAX_RS || !svc->n_local || svc->n_local > LB_MAX_LOCAL) {
		*why = LB_C_NO_RS;
		return NULL;
	}
	idx = svc->id * LB_MAX_RS + h % n;
	rs = bpf_map_lookup_elem(&lb_rs, &idx);
	if (!rs) {
		*why = LB_C_NO_RS;
		return NULL;
	}
	nf->rs_idx = idx;
	idx = svc->id * LB_MAX_LOCAL + (h >> 8) % svc->n_local;
	lip = bpf_map_lookup_elem(&lb_local, &idx);
	if (!lip) {
		*why = LB_C_NO_RS;
		return NULL;
	}
	rv->cip = p->src;
	rv->vip = p->dst;
	rv->cport = p->sport;
	rv->vport = p->dport;
	rv->ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(rv->cmac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(rv->lmac, eth->h_dest, ETH_ALEN);
	rv->c_family = p->family;
	rv->mss_synack = svc->mss_synack;
	rv->last_ns = now;

	rk.src = rs->rip;
	rk.dst = *lip;
	rk.sport = rs->rport;
	rk.proto = p->proto;
	rk.family = svc->rs_family;
	range = (__u32)cfg->lport_max - cfg->lport_min + 1;
	if (cfg->lport_max < cfg->lport_min)
		range = 1;
	/*
	 * Unrolled: the 6.1 verifier rejects a loop whose back edge follows a
	 * helper call ("back-edge from insn"), and this body makes three.
	 */
#pragma unroll
	for (int i = 0; i < LB_PORT_TRIES; i++) {
		struct lb_rev *old;

		rk.dport = bpf_htons(cfg->lport_min + (h + i * 7919u) % range);
		if (!bpf_map_update_elem(&lb_rev, &rk, rv, BPF_NOEXIST))
			goto claimed;
		old = bpf_map_lookup_elem(&lb_rev, &rk);
		if (old && !rev_alive(old, p->proto, now, idle) &&
		    !bpf_map_update_elem(&lb_rev, &rk, rv, BPF_ANY))
			goto claimed;
	}
	*why = LB_C_NO_PORT;
	return NULL;
claimed:
	nf->lip = *lip;
	nf->rip = rs->rip;
	nf->lport = rk.dport;
	nf->rport = rs->rport;
	nf->last_ns = now;
	nf->rs_family = svc->rs_family;
	nf->svc_flags = svc->flags;
	if (bpf_map_update_elem(&lb_fwd, fk, nf, BPF_ANY)) {
		*why = LB_C_NO_PORT;
		return NULL;
	}
	count(LB_C_NEW_FLOW);
	return bpf_map_lookup_elem(&lb_fwd, fk);
}

static __always_inline int lb_forward(struct xdp_md *ctx, struct pkt *p, struct ethhdr *eth,
				      const struct lb_svc *svc)
{
	__u32 zero = 0, why = LB_C_NO_RS;
	struct lb_flow_key fk = {};
	struct lb_scratch *sc;
	struct emit *e;
	struct lb_cfg *cfg;
	struct lb_fwd *f;
	struct lb_rs *rs;
	__u64 now;
	int insert, r;

	cfg = bpf_map_lookup_elem(&lb_cfg, &zero);
	sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!cfg || !sc)
		return XDP_PASS;
	e = &sc->e;
	fk.src = p->src;
	fk.dst = p->dst;
	fk.sport = p->sport;
	fk.dport = p->dport;
	fk.proto = p->proto;
	fk.family = p->family;
	now = bpf_ktime_get_ns();
	f = bpf_map_lookup_elem(&lb_fwd, &fk);
	if (f && !fwd_alive(f, p->proto, now, idle_ns(cfg, p->proto))) {
		count(LB_C_EXPIRED);
		f = NULL;
	}
	if (!f) {
		f = new_flow(ctx, p, eth, svc, cfg, &fk, now, &why, sc);
		if (!f) {
			count(why);
			return XDP_DROP;
		}
	}
	f->last_ns = now;
	if (p->proto == IPPROTO_TCP) {
		if ((p->tcpflags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
			f->state = 0;
			if (svc->mss_syn && lb_clamp_mss(ctx, p->l4off, svc->mss_syn))
				count(LB_C_MSS_CLAMP);
		}
		insert = !(f->state & LB_FLOW_RS_EST);
	} else {
		insert = f->pkts < svc->opt_pkts;
	}
	f->pkts++;
	rs = bpf_map_lookup_elem(&lb_rs, &f->rs_idx);
	if (!rs) {
		count(LB_C_NO_RS);
		return XDP_DROP;
	}
	e->family = f->rs_family;
	e->optlen = 0;
	e->vxlan = 0;
	e->src = f->lip;
	e->dst = f->rip;
	e->sport = f->lport;
	e->dport = f->rport;
	if (insert) {
		e->opt.sport = p->sport;
		e->opt.dport = p->dport;
		if (p->family == 4) {
			__builtin_memcpy(e->opt.addrs.ipv4.saddr, &p->src.v4, 4);
			__builtin_memcpy(e->opt.addrs.ipv4.daddr, &p->dst.v4, 4);
			e->optlen = TOA_OPT_LEN_INNER4;
		} else {
			__builtin_memcpy(e->opt.addrs.ipv6.saddr, p->src.b, 16);
			__builtin_memcpy(e->opt.addrs.ipv6.daddr, p->dst.b, 16);
			e->optlen = TOA_OPT_LEN_INNER6;
		}
		if (e->family == 4) {
			e->opt.header.ipv4.type = IPV4_OPTION_TYPE;
			e->opt.header.ipv4.length = e->optlen;
			e->opt.header.ipv4.operation = p->family == 6 ? TOA_OP_INNER_IPV6 : 0;
			e->opt.header.ipv4.padding = 0;
		} else {
			e->opt.header.ipv6.nexthdr = p->proto;
			e->opt.header.ipv6.hdrlen = p->family == 6 ? TOA_DSTOPT_HDRLEN_INNER6
								  : TOA_DSTOPT_HDRLEN_INNER4;
			e->opt.header.ipv6.option = IPV6_HEADER_OPTION;
			e->opt.header.ipv6.optlen = p->family == 6 ? TOA_DSTOPT_OPTLEN_INNER6
								  : TOA_DSTOPT_OPTLEN_INNER4;
		}
	}
	__builtin_memcpy(e->smac, rs->smac, ETH_ALEN);
	__builtin_memcpy(e->dmac, rs->dmac, ETH_ALEN);
	if (svc->flags & LB_SVC_VXLAN) {
		e->vxlan = 1;
		e->vtep_src = rs->vtep_src;
		e->vtep_dst = rs->vtep_dst;
		e->vni = rs->vni & 0xffffff;
		e->vx_sport = bpf_htons(49152 | (flow_hash(&fk) & 0x3fff));
		__builtin_memcpy(e->inner_smac, rs->inner_smac, ETH_ALEN);
		__builtin_memcpy(e->inner_dmac, rs->inner_dmac, ETH_ALEN);
	}
	if (p->has_opts)
		count(LB_C_CLIENT_IPOPT);
	r = emit(ctx, p, e);
	if (r) {
		count(r);
		return XDP_DROP;
	}
	count(LB_C_FWD);
	if (insert)
		count(LB_C_FWD_OPT);
	if (e->vxlan)
		count(LB_C_VXLAN);
	return bpf_redirect(rs->ifindex, 0);
}

static __always_inline int lb_reverse(struct xdp_md *ctx, struct pkt *p, struct lb_rev *rv)
{
	__u32 zero = 0;
	struct lb_scratch *sc;
	struct emit *e;
	struct lb_cfg *cfg;
	__u64 now;
	int r;

	cfg = bpf_map_lookup_elem(&lb_cfg, &zero);
	sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!cfg || !sc)
		return XDP_PASS;
	e = &sc->e;
	now = bpf_ktime_get_ns();
	if (!rev_alive(rv, p->proto, now, idle_ns(cfg, p->proto))) {
		count(LB_C_EXPIRED);
		count(LB_C_PASS);
		return XDP_PASS;
	}
	rv->last_ns = now;
	if (p->proto == IPPROTO_TCP) {
		if (!(p->tcpflags & TCPF_SYN) && !(rv->state & LB_FLOW_RS_EST)) {
			struct lb_flow_key fk;
			struct lb_fwd *f;

			fwd_key_of(&fk, rv, p->proto);
			f = bpf_map_lookup_elem(&lb_fwd, &fk);
			if (f)
				f->state |= LB_FLOW_RS_EST;
			rv->state |= LB_FLOW_RS_EST;
		}
		if ((p->tcpflags & (TCPF_SYN | TCPF_ACK)) == (TCPF_SYN | TCPF_ACK) &&
		    rv->mss_synack && lb_clamp_mss(ctx, p->l4off, rv->mss_synack))
			count(LB_C_MSS_CLAMP);
	}
	e->family = rv->c_family;
	e->optlen = 0;
	e->vxlan = 0;
	e->src = rv->vip;
	e->dst = rv->cip;
	e->sport = rv->vport;
	e->dport = rv->cport;
	__builtin_memcpy(e->smac, rv->lmac, ETH_ALEN);
	__builtin_memcpy(e->dmac, rv->cmac, ETH_ALEN);
	r = emit(ctx, p, e);
	if (r) {
		count(r);
		return XDP_DROP;
	}
	count(LB_C_REV);
	return bpf_redirect(rv->ifindex, 0);
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = data };
	struct lb_svc_key sk = {};
	struct lb_flow_key rk = {};
	struct pkt p = {};
	struct ethhdr *eth;
	struct lb_svc *svc;
	struct lb_rev *rv;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *role;
	__u16 eproto;
	int r;

	if (parse_eth(&c, data_end, &eth, &eproto) < 0 ||
	    (eproto != ETH_P_IP && eproto != ETH_P_IPV6) || c.pos != (void *)(eth + 1)) {
		count(LB_C_PASS);
		return XDP_PASS;
	}
	r = parse_pkt(data, data_end, &c, eproto, &p);
	if (r == P_MALFORMED) {
		count(LB_C_MALFORMED);
		return XDP_DROP;
	}
	if (r == P_OK) {
		sk.vip = p.dst;
		sk.vport = p.dport;
		sk.proto = p.proto;
		sk.family = p.family;
		svc = bpf_map_lookup_elem(&lb_services, &sk);
		if (svc)
			return lb_forward(ctx, &p, eth, svc);
		rk.src = p.src;
		rk.dst = p.dst;
		rk.sport = p.sport;
		rk.dport = p.dport;
		rk.proto = p.proto;
		rk.family = p.family;
		rv = bpf_map_lookup_elem(&lb_rev, &rk);
		if (rv)
			return lb_reverse(ctx, &p, rv);
	} else if (r == P_FRAG) {
		sk.vip = p.dst;
		sk.family = p.family;
		if (bpf_map_lookup_elem(&lb_vips, &sk)) {
			count(LB_C_FRAG);
			return XDP_DROP;
		}
	}
	if (p.opt31) {
		role = bpf_map_lookup_elem(&lb_ports, &ifindex);
		if (!role || *role != LB_PORT_RS) {
			count(LB_C_OPT31_DROP);
			return XDP_DROP;
		}
	}
	count(LB_C_PASS);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
