// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * gwping.c - the gateway data plane of the lab, with the gateway-ping logic
 * of the seed (seeds/004):
 *
 *   TCP SYN, Timestamps option TSval == MAGIC      -> TSval's first wire byte
 *       minus one (de ad be ef -> dd ad be ef), TCP checksum + htons(0x0100)
 *       with end-around carry (+ htons(0x0001) when an option walk finds
 *       TSval at an odd offset in the TCP header), forward;
 *   TCP SYN, Timestamps option TSval == MAGIC_PASS -> XDP_PASS (the kernel of
 *       this node answers: the co-located case);
 *   anything else                                  -> untouched by the ping
 *       logic, forwarded.
 *
 * "Forward" (see gwping.h, struct gw_port): the data plane owns the port;
 * an IP packet leaves through the port's configured egress with the
 * next hop's MAC (bpf_redirect -> XDP_REDIRECT), or back out of the same
 * port (XDP_TX) for a one-armed gateway.  The gateway is a hop: the TTL /
 * hop limit goes down by one (the IPv4 header checksum the way the kernel's
 * ip_decrease_ttl() fixes it, the same arithmetic as the ping's), and a
 * packet it would bring to 0 is dropped, so that a routing loop through
 * gateways ends; beyond that, the ping's wire change is exactly the seed's.
 * Handed to the kernel: MAGIC_PASS pings, non-IP frames (ARP), IPv6
 * neighbour discovery and every packet of a port with no gw_ports entry.
 * Dropped: frames whose Ethernet/IP header is cut off or invalid, and those
 * whose TTL would reach 0.
 *
 * Differences from the seed's sketch, none visible on the wire for its
 * prober's packets (Timestamps as the first option): the options are walked
 * (Timestamps may follow NOP/MSS/SACK_PERM/WS...), kind 8 / length 10 are
 * checked, only a pure SYN (SYN set, ACK/RST/FIN clear) of an unfragmented
 * packet is a ping, and IPv6 is handled like IPv4.
 */
#include "bpf_common.h"
#include "parse.h"
#include "csum.h"
#include "gwping.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GW_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} gw_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GW_PORTS_MAX);
	__type(key, __u32);
	__type(value, struct gw_port);
} gw_ports SEC(".maps");

/* gwping_tcp() does not look further than this into a packet */
#define GWPING_L4OFF_MAX	1024

enum ping_verdict {
	PING_NONE,	/* not a ping: the data plane's usual path */
	PING_FWD,	/* MAGIC: rewritten, forward */
	PING_PASS,	/* MAGIC_PASS: to the kernel */
};

/* The Timestamps option as it sits on the wire. */
struct tcp_opt_ts {
	__u8 kind;
	__u8 len;
	__u8 tsval[4];	/* big-endian */
	__u8 tsecr[4];
} __packed;

/*
 * The seed's pass_to_kernel() for the TCP header at @l4off from the start
 * of the packet; classifies and counts the packet.
 *
 * A global (non-inline) function: the verifier checks it once, on its own,
 * with @l4off unknown, instead of once per parsing path of the caller (the
 * VLAN and IPv6 extension-header paths times the option walk would exceed
 * the verifier's budget).  Supported since 5.6; no packet pointers cross
 * the call, only ctx and a scalar.
 */
__noinline int gwping_tcp(struct xdp_md *ctx, __u32 l4off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c;
	struct tcp_opt_ts *ts;
	struct tcphdr *th;
	__u32 tsval;

	if (l4off > GWPING_L4OFF_MAX) {
		percpu_count(&gw_counters, GW_CNT_TCP_TRUNC);
		return PING_NONE;
	}
	c.pos = data + l4off;
	if (parse_tcp(&c, data_end, &th) < 0) {
		percpu_count(&gw_counters, GW_CNT_TCP_TRUNC);
		return PING_NONE;
	}
	if (!th->syn || th->ack || th->rst || th->fin) {
		percpu_count(&gw_counters, GW_CNT_TCP_NOT_SYN);
		return PING_NONE;
	}
	ts = (struct tcp_opt_ts *)tcp_find_option(th, data_end, TCPOPT_TIMESTAMP,
						  TCPOLEN_TIMESTAMP);
	if (!ts) {
		percpu_count(&gw_counters, GW_CNT_SYN_NO_TS);
		return PING_NONE;
	}
	tsval = (__u32)ts->tsval[0] << 24 | (__u32)ts->tsval[1] << 16 |
		(__u32)ts->tsval[2] << 8 | ts->tsval[3];

	if (tsval == GWPING_MAGIC_PASS) {
		percpu_count(&gw_counters, GW_CNT_PING_PASS);
		return PING_PASS;
	}
	if (tsval != GWPING_MAGIC) {
		percpu_count(&gw_counters, GW_CNT_SYN_TS_OTHER);
		return PING_NONE;
	}
	/*
	 * TSval's first wire byte goes down by one (de -> dd); the checksum
	 * goes up by as much, with end-around carry.  With Timestamps first
	 * (the seed's layout) that byte is the high byte of a 16-bit word of
	 * the segment: the seed's check += htons(0x0100).  An option walk can
	 * find TSval at an odd offset from the TCP header (after MSS+WS+SACK_PERM,
	 * say); then the byte is the low byte of its word and the same fix is
	 * htons(0x0001).  The first byte is 0xde: no borrow (see gwping.h).
	 */
	if (((__u8 *)ts->tsval - (__u8 *)th) & 1)
		csum_add_field(&th->check, bpf_htons(0x0001));
	else
		csum_add_field(&th->check, bpf_htons(0x0100));
	ts->tsval[0] -= 1;
	percpu_count(&gw_counters, GW_CNT_PING_FWD);
	return PING_FWD;
}

/*
 * One hop off the TTL / hop limit of the IP header at @l3off (at most two
 * VLAN tags in): 0, or -1 when it would reach 0.  IPv4's checksum goes up
 * by htons(0x0100) with end-around carry, as in ip_decrease_ttl(): TTL is
 * the high byte of its header word.
 */
static __always_inline int gw_hop(struct xdp_md *ctx, __u32 l3off, __u16 proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (l3off > sizeof(struct ethhdr) + PARSE_VLAN_MAX * sizeof(struct vlan_hdr))
		return -1;
	if (proto == ETH_P_IP) {
		struct iphdr *iph = data + l3off;

		if ((void *)(iph + 1) > data_end || iph->ttl <= 1)
			return -1;
		iph->ttl--;
		csum_add_field(&iph->check, bpf_htons(0x0100));
		return 0;
	}
	{
		struct ipv6hdr *ip6h = data + l3off;

		if ((void *)(ip6h + 1) > data_end || ip6h->hop_limit <= 1)
			return -1;
		ip6h->hop_limit--;
		return 0;
	}
}

static __always_inline int gw_forward(struct xdp_md *ctx, struct ethhdr *eth, __u32 l3off, __u16 proto)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct gw_port *port;

	port = bpf_map_lookup_elem(&gw_ports, &ifindex);
	if (!port) {
		percpu_count(&gw_counters, GW_CNT_FWD_NOCFG);
		return XDP_PASS;
	}
	if (gw_hop(ctx, l3off, proto) < 0) {
		percpu_count(&gw_counters, GW_CNT_FWD_TTL);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_source, port->smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, port->dmac, ETH_ALEN);
	if (port->egress_ifindex == ifindex) {
		percpu_count(&gw_counters, GW_CNT_FWD_TX);
		return XDP_TX;
	}
	percpu_count(&gw_counters, GW_CNT_FWD_REDIRECT);
	return bpf_redirect(port->egress_ifindex, 0);
}

static __always_inline int is_ndisc(__u8 *icmp6, void *data_end)
{
	if ((void *)(icmp6 + 1) > data_end)
		return 0;
	/* router/neighbour solicitation/advertisement, redirect: 133..137 */
	return icmp6[0] >= 133 && icmp6[0] <= 137;
}

SEC("xdp")
int xdp_gwping(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = (void *)(long)ctx->data };
	int v = PING_NONE;
	struct ethhdr *eth;
	__u32 l3off;
	__u16 proto;
	__u8 l4;

	if (parse_eth(&c, data_end, &eth, &proto) < 0) {
		percpu_count(&gw_counters, GW_CNT_MALFORMED);
		return XDP_DROP;
	}
	l3off = (__u32)(c.pos - (void *)(long)ctx->data);
	if (proto == ETH_P_IP) {
		struct iphdr *iph;

		if (parse_ipv4(&c, data_end, &iph) < 0) {
			percpu_count(&gw_counters, GW_CNT_MALFORMED);
			return XDP_DROP;
		}
		l4 = ipv4_is_fragment(iph) ? IPPROTO_RAW : iph->protocol;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6_info info;
		struct ipv6hdr *ip6h;

		if (parse_ipv6(&c, data_end, &ip6h, &info) < 0) {
			percpu_count(&gw_counters, GW_CNT_MALFORMED);
			return XDP_DROP;
		}
		l4 = info.is_fragment ? IPPROTO_RAW : info.l4proto;
		if (l4 == IPPROTO_ICMPV6 && is_ndisc(c.pos, data_end)) {
			percpu_count(&gw_counters, GW_CNT_CTRL_PASS);
			return XDP_PASS;
		}
	} else {
		percpu_count(&gw_counters, GW_CNT_NOT_IP);
		return XDP_PASS;
	}

	if (l4 == IPPROTO_TCP)
		v = gwping_tcp(ctx, (__u32)(c.pos - (void *)(long)ctx->data));
	else
		percpu_count(&gw_counters, GW_CNT_NOT_TCP);

	if (v == PING_PASS)
		return XDP_PASS;
	return gw_forward(ctx, eth, l3off, proto);
}
