/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * lb.h - map layouts of the fullnat XDP load balancer (bpf/lb.c), shared
 * with its control plane lab/lb.py (which packs the same layouts with
 * Python's struct; keep both in step).  Every struct is naturally aligned
 * with explicit padding, so the layout is the same for clang -target bpf
 * and for struct.pack("<...").
 *
 * Families are 4 and 6 (not AF_*).  Addresses sit in a 16-byte union; an
 * IPv4 address is in the first 4 bytes, the rest zero.  Ports are in
 * network order, as in the packet.
 */
#ifndef TOALAB_LB_H
#define TOALAB_LB_H

#include <linux/types.h>

#define LB_MAX_SERVICES	64
#define LB_MAX_RS	16	/* real servers per service */
#define LB_MAX_LOCAL	8	/* local addresses per service */
#define LB_FLOWS	65536	/* entries of each LRU flow map */
#define LB_PORT_TRIES	8	/* local port candidates tried per new flow */
#define LB_RING		2039	/* scheduling ring slots per service (a prime, for Maglev) */

#define LB_SVC_VXLAN	0x0001	/* encapsulate LB->RS packets in VXLAN */

#define LB_FLOW_RS_EST	0x01	/* the RS sent a non-SYN segment: insertion over */

#define LB_RS_DOWN	0x0001	/* no new flows, not even persistent ones; established ones drain */

/*
 * The scheduler of a service (lb_svc.sched).  The control plane
 * (lab/sched.py) fills each service's ring with real server slots; a new
 * flow takes the slot at a position picked by the keyed 5-tuple hash
 * (Maglev), the keyed client address hash (source hashing) or a per-CPU
 * counter (round robin and weighted round robin: their rings differ).
 */
#define LB_SCHED_MAGLEV	0
#define LB_SCHED_SH	1
#define LB_SCHED_RR	2
#define LB_SCHED_WRR	3

#define VXLAN_PORT	4789

union lb_addr {
	__be32 v4;
	__be32 a[4];
	__u8 b[16];
};

/* lb_services key: what the client addresses */
struct lb_svc_key {
	union lb_addr vip;
	__be16 vport;
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;		/* of the VIP (client side) */
};				/* 20 bytes */

struct lb_svc {
	__u32 id;		/* lb_rs[id * LB_MAX_RS + i], lb_local[id * LB_MAX_LOCAL + i] */
	__u32 n_rs;
	__u32 n_local;
	__u16 flags;		/* LB_SVC_* */
	__u16 opt_pkts;		/* UDP: the option rides on the first opt_pkts packets */
	__u16 mss_syn;		/* clamp of the MSS in SYNs (client->RS), 0: none */
	__u16 mss_synack;	/* clamp of the MSS in SYN-ACKs (RS->client), 0: none */
	__u8 rs_family;		/* family of the real servers and local addresses */
	__u8 sched;		/* LB_SCHED_* */
	__u16 ring_len;		/* slots of lb_ring[id] in use, 0: no RS takes new flows */
	__u32 persist_s;	/* source-IP persistence timeout, 0: off */
	__u16 mtu_rs;		/* smallest MTU towards the real servers (UDP: room for the option) */
	__u16 pad;
};				/* 32 bytes */

struct lb_rs {
	union lb_addr rip;
	__be16 rport;
	__u8 family;
	__u8 vtep_family;	/* VXLAN underlay: 4 or 6 (the RS side's family) */
	__u32 ifindex;		/* egress port towards the RS */
	__u8 smac[6];		/* of the egress port */
	__u8 dmac[6];		/* next hop (the RS or its VTEP) */
	__u32 vni;		/* VXLAN (LB_SVC_VXLAN) */
	union lb_addr vtep_src;	/* the LB's VTEP: replies come back to it */
	union lb_addr vtep_dst;	/* the RS's */
	__u8 inner_smac[6];
	__u8 inner_dmac[6];	/* the RS vxlan device */
	__u16 weight;		/* the control plane's (the ring has it); shown by toalab lb show */
	__u16 flags;		/* LB_RS_* */
};				/* 88 bytes */

/* lb_ring[service id]: ring position -> real server slot (lb_rs[id * LB_MAX_RS + slot]) */
struct lb_ring {
	__u8 slot[LB_RING];
};

/* lb_persist key: a client of a service (its TCP and UDP share the id) */
struct lb_persist_key {
	union lb_addr cip;
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
};				/* 24 bytes */

struct lb_persist {
	__u64 last_ns;		/* the last packet of a flow it placed */
	__u32 rs_idx;		/* index into lb_rs */
	__u32 pad;
};				/* 16 bytes */

/* lb_vteps key: the LB's own VTEP address and a VNI it decapsulates. */
struct lb_vtep_key {
	union lb_addr addr;
	__u32 vni;
	__u8 family;
	__u8 pad[3];
};				/* 24 bytes */

struct lb_cfg {
	__u64 tcp_idle_ns;	/* flow state idle lifetime */
	__u64 udp_idle_ns;
	__u16 lport_min;	/* local port range, host order */
	__u16 lport_max;
	__u32 hash_key;		/* the control plane's secret: flow_hash is keyed */
};				/* 24 bytes */

/* A flow as one packet names it (either direction). */
struct lb_flow_key {
	union lb_addr src;
	union lb_addr dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};				/* 40 bytes */

/* lb_fwd value, keyed by the client's view (cip, vip, cport, vport). */
struct lb_fwd {
	union lb_addr lip;
	union lb_addr rip;
	__be16 lport;
	__be16 rport;
	__u32 rs_idx;		/* index into lb_rs */
	__u64 last_ns;
	__u32 pkts;		/* client->RS packets forwarded */
	__u8 rs_family;
	__u8 state;		/* LB_FLOW_* */
	__u16 svc_flags;
};				/* 56 bytes */

/* lb_rev value, keyed by the RS's view (rip, lip, rport, lport). */
struct lb_rev {
	union lb_addr cip;
	union lb_addr vip;
	__be16 cport;
	__be16 vport;
	__u32 ifindex;		/* client-side port the flow came in on */
	__u8 cmac[6];		/* source MAC of the client's packets */
	__u8 lmac[6];		/* destination MAC of the client's packets */
	__u8 c_family;
	__u8 state;		/* LB_FLOW_RS_EST already propagated */
	__u16 mss_synack;
	__u64 last_ns;
};				/* 64 bytes */

/* lb_ports: ifindex -> role of the port */
#define LB_PORT_CLIENT	1
#define LB_PORT_RS	2

enum lb_counter {
	LB_C_FWD,		/* client->RS packets forwarded */
	LB_C_FWD_OPT,		/* ... of which carried the inserted option */
	LB_C_REV,		/* RS->client packets forwarded */
	LB_C_NEW_FLOW,
	LB_C_PASS,		/* not ours: to the kernel */
	LB_C_MALFORMED,		/* truncated / invalid headers: dropped */
	LB_C_FRAG,		/* fragment to a VIP: dropped */
	LB_C_NO_RS,		/* service without a usable RS / local address */
	LB_C_NO_PORT,		/* no free local port */
	LB_C_OPT31_DROP,	/* non-service packet from the client side with option 31 */
	LB_C_CLIENT_IPOPT,	/* service packet from the client with IP options/ext headers: removed */
	LB_C_MSS_CLAMP,
	LB_C_UDP_NOCSUM,	/* IPv4 UDP without checksum towards IPv6: dropped */
	LB_C_ADJUST_FAIL,	/* bpf_xdp_adjust_head failed */
	LB_C_VXLAN,		/* encapsulated */
	LB_C_EXPIRED,		/* flow state found idle past its lifetime */
	LB_C_DECAP,		/* RS->LB VXLAN to our VTEP, decapsulated */
	LB_C_DECAP_FAIL,	/* ... but lb_self is empty: dropped */
	LB_C_TTL_EXPIRED,	/* TTL / hop limit would reach 0 at this hop: dropped */
	LB_C_PERSIST,		/* new flows placed by source-IP persistence */
	LB_C_RESCHED,		/* TCP SYN on a flow whose RS is down: scheduled again */
	LB_C_UDP_OPT_MTU,	/* UDP datagram due the option sent without: with it, above mtu_rs */
	LB_C_WRONG_PORT,	/* a service's or a flow's packet on a port of the other side: dropped */
	LB_C_ICMP,		/* ICMP errors about a flow, translated and sent on */
	LB_C_ICMP_DROP,		/* ... with no equivalent on the other side: dropped */
	LB_C_PAIR_BROKEN,	/* a flow's forward entry without its reverse half (LRU): a new flow */
	LB_C_MAX,
};

#endif /* TOALAB_LB_H */
