/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * lb_maps.h - the maps of the fullnat LB (bpf/lb.c), configured by
 * lab/lb.py (value layouts in lb.h), and the per-CPU scratch they hold for
 * the packet being rewritten (struct pkt: what the parser learned; struct
 * emit: what the rewrite writes).
 */
#ifndef TOALAB_LB_MAPS_H
#define TOALAB_LB_MAPS_H

#include "bpf_common.h"
#include "lb.h"
#include "../../kmod/include/toa_opt.h"

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

/* each service's scheduling ring (lab/sched.py builds it) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct lb_ring);
} lb_ring SEC(".maps");

/* round robin position per service */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} lb_rr SEC(".maps");

/* source-IP persistence: which RS a client's flows of a service go to */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, struct lb_persist_key);
	__type(value, struct lb_persist);
} lb_persist SEC(".maps");

/* new flows per real server (index as lb_rs) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES * LB_MAX_RS);
	__type(key, __u32);
	__type(value, __u64);
} lb_rs_flows SEC(".maps");

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

/* the LB's VTEPs (address, VNI) of the VXLAN services: RS replies to them are decapsulated */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES * 2);
	__type(key, struct lb_vtep_key);
	__type(value, __u32);
} lb_vteps SEC(".maps");

/* the program itself at key 0 (the control plane puts it there): a decapsulated
 * VXLAN reply runs it again from the top */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lb_self SEC(".maps");

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
	__u8 vxlan;		/* 0, or the underlay's family: 4 or 6 */
	__u8 smac[6];
	__u8 dmac[6];
	__u8 inner_smac[6];
	__u8 inner_dmac[6];
	union lb_addr vtep_src;
	union lb_addr vtep_dst;
	__u32 vni;
};

struct lb_scratch {
	struct emit e;
	struct lb_rev rv;
	struct lb_fwd nf;
	struct lb_persist_key pk;
	struct lb_persist pv;
	struct lb_flow_key sk;	/* the source hash's key */
	struct lb_flow_key ik;	/* the flow an ICMP error is about */
	struct lb_flow_key nk;	/* ... and what the quote says after translation */
	struct pkt qt;		/* the packet it quotes */
	struct pkt op;		/* its new outer IP header */
};

/* per-CPU scratch: struct emit is too big for the 512-byte stack next to the rest */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_scratch);
} lb_scratch SEC(".maps");

static __always_inline void count(__u32 idx)
{
	percpu_count(&lb_counters, idx);
}

#endif /* TOALAB_LB_MAPS_H */
