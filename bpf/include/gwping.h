/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * gwping.h - constants and map layouts of the gateway-ping XDP program,
 * shared by bpf/gwping.c and mirrored (and tested against) in lab/gwping.py
 * and lab/bpf.py.  Plain C: no BPF-only types, so userspace can include it.
 *
 * The prober writes MAGIC big-endian into the TSval of a TCP Timestamps
 * option: wire bytes de ad be ef.  A gateway forwards such a SYN after
 * decrementing it the way the seed's `topt->magic--` does on a little-endian
 * server: the u32 read from those bytes is 0xefbeadde, minus one is
 * 0xefbeaddd, written back as dd ad be ef -- the first wire byte loses one.
 * Read big-endian that is MAGIC_PASS = MAGIC - 0x01000000 = 0xddadbeef, and
 * a data plane that sees it hands the SYN to its kernel.
 */
#ifndef TOALAB_GWPING_H
#define TOALAB_GWPING_H

#include <linux/types.h>

#define GWPING_MAGIC		0xdeadbeefU	/* TSval, host order */
#define GWPING_MAGIC_PASS	0xddadbeefU	/* MAGIC after one gateway */

/*
 * The program decrements only MAGIC, and only its first wire byte.  That is
 * the seed's u32 decrement exactly as long as the byte is not 0 (no borrow
 * into the second byte).  For the record (tests/test_gwping_csum.py): the
 * seed's decrement *with* a borrow would still be right one's complement
 * arithmetic for the +htons(0x0100) fix -- the borrow is the end-around
 * borrow -- except for TSval 0, which wraps to ffffffff; a byte-only
 * decrement that wraps 00 -> ff would not be.  Neither can happen here.
 */
_Static_assert((GWPING_MAGIC >> 24) != 0, "MAGIC's first wire byte must be > 0");
_Static_assert(GWPING_MAGIC - 0x01000000U == GWPING_MAGIC_PASS,
	       "MAGIC_PASS is MAGIC with its first wire byte decremented");

/*
 * Per-CPU __u64 counters (map gw_counters).  Every packet bumps exactly one
 * of the classification counters (GW_CNT_PING_FWD..GW_CNT_CTRL_PASS) and,
 * if it went to the forwarding path, one of the GW_CNT_FWD_* ones.
 * lab/gwping.py COUNTERS lists the same names in the same order.
 */
enum gw_counter {
	GW_CNT_PING_FWD = 0,	/* SYN, TSval MAGIC: decremented, forwarded */
	GW_CNT_PING_PASS,	/* SYN, TSval MAGIC_PASS: to the kernel */
	GW_CNT_SYN_TS_OTHER,	/* SYN with a Timestamps option, other TSval */
	GW_CNT_SYN_NO_TS,	/* SYN without a (valid) Timestamps option */
	GW_CNT_TCP_NOT_SYN,	/* TCP, not a pure SYN (ACK/RST/FIN set or no SYN) */
	GW_CNT_TCP_TRUNC,	/* TCP header or its options cut off / invalid */
	GW_CNT_NOT_TCP,		/* IP, not TCP, or an IP fragment */
	GW_CNT_NOT_IP,		/* not IPv4/IPv6 (ARP...): to the kernel */
	GW_CNT_MALFORMED,	/* Ethernet/IP header cut off or invalid: dropped */
	GW_CNT_CTRL_PASS,	/* IPv6 neighbour discovery: to the kernel */
	GW_CNT_FWD_REDIRECT,	/* forwarded out of another port */
	GW_CNT_FWD_TX,		/* forwarded back out of the ingress port */
	GW_CNT_FWD_NOCFG,	/* port not configured: handed to the kernel */
	GW_CNT_FWD_TTL,		/* TTL / hop limit would reach 0 at this hop: dropped */
	GW_CNT_MAX,
};

/*
 * Forwarding table (map gw_ports), key: ingress ifindex (__u32).  A gateway
 * data plane owns its port: every IP packet that is not a MAGIC_PASS ping
 * (or neighbour discovery) leaves through egress_ifindex with these MACs,
 * whatever its destination address -- the seed's gateway does not consult
 * the node's local addresses, hence the co-located problem.
 * egress_ifindex == ingress ifindex: XDP_TX (a one-armed gateway).
 */
struct gw_port {
	__u32 egress_ifindex;
	__u8 smac[6];		/* source MAC written on egress */
	__u8 dmac[6];		/* next hop's MAC */
};

#define GW_PORTS_MAX	64

#endif /* TOALAB_GWPING_H */
