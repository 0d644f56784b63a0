// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * lb.c - the lab's fullnat load balancer: an XDP stand-in for the DPDK LB
 * (TTGW) of the TOA/UOA seed.  One program, attached natively to both ports
 * of the lb node (eth0 client side, eth1 RS side), configured by
 * lab/lb.py through the maps below (layouts in include/lb.h).
 *
 * Forward (client -> VIP:vport/proto, a service in lb_services):
 *   the flow (cip, vip, cport, vport, proto) is looked up in lb_fwd (LRU);
 *   a new flow picks a real server (the scheduler, below), a local
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
 *   Ethernet/IPv4 or IPv6 (the RS side's family)/UDP(4789)/VXLAN towards the
 *   RS's VTEP.
 *
 * Reverse (RS -> lip:lport, a flow in lb_rev): rebuilt as vip:vport ->
 *   cip:cport in the client's family, no option, redirected to the port the
 *   client's packets came in on, to the MAC they came from.  The replies of
 *   a VXLAN service's RS come back through the tunnel, to our VTEP: on an
 *   RS port, UDP to 4789 for an (address, VNI) of lb_vteps is unwrapped and
 *   the program runs again on the inner packet (a tail call to itself,
 *   through lb_self: the verifier checks one copy of the parser), which goes
 *   the reverse way like any reply.
 *
 * Insertion rule.  TCP: the option rides on every client->RS segment of a
 *   flow until the LB has forwarded an RS->client segment without SYN --
 *   proof that the RS's socket left SYN_RECV, i.e. that the RS processed
 *   the handshake's third packet (where TOA reads the option, in
 *   tcp_v4/v6_syn_recv_sock).  That always covers the SYN and the third
 *   packet, and any retransmission of them or data that completes the
 *   handshake when the pure ACK was lost; a new SYN on the tuple starts the
 *   window again.  UDP: on the first lb_svc.opt_pkts packets of a flow, each
 *   as long as it still fits lb_svc.mtu_rs with the option (else it goes
 *   without, counted udp_opt_mtu).
 *
 * MSS rule.  Client->RS segments may carry the option (16/40 bytes, plus
 *   50 bytes of VXLAN over IPv4, 70 over IPv6) and change family (IPv6 header 20 bytes longer than
 *   IPv4).  Their size is bounded by the MSS the RS announces, so the
 *   SYN-ACK's MSS is clamped to mss_synack = MTU(RS side: the smallest on
 *   the way to any of the service's real servers) - IP header(RS
 *   family) - option - encapsulation - 20; the SYN's MSS (bounding the RS's
 *   segments towards the client) to mss_syn = MTU(client side) - IP
 *   header(client family) - 20.  The control plane computes both.
 *
 * Flow state lifetime.  An entry of lb_fwd/lb_rev lives while the flow saw
 *   a packet in either direction within the idle lifetime (lb_cfg: TCP
 *   300 s, UDP 60 s by default); past it, a client packet starts a new flow
 *   (possibly another RS / local port) and the stale local port may be
 *   reused.  Both maps are LRU (LB_FLOWS entries): under pressure the least
 *   recently used flows are evicted first, each half on its own: a forward
 *   entry is used only while its reverse half names it back (else the
 *   packet starts a new flow, counted pair_broken: its local port may be
 *   another client's by now), and a reply marks only the forward entry that
 *   names it.  That lookup on every client packet (~80 ns under
 *   BPF_PROG_TEST_RUN) also keeps the reverse half of a one-way flow as warm
 *   in its LRU as the forward half.  No FIN/RST tracking.
 *
 * Scheduling.  A new flow's real server is the slot at one position of its
 *   service's ring (lb_ring, filled by the control plane, lab/sched.py):
 *   the position is the keyed 5-tuple hash (Maglev), the keyed client
 *   address hash (source hashing) or a per-CPU counter (round robin,
 *   weighted round robin), modulo the ring's length.  Down real servers
 *   and those of weight 0 are in no ring.  With persistence (lb_svc.persist_s)
 *   a client's new flows of the service go where its last flows went while
 *   that was less than persist_s ago and the RS is not down (LVS's
 *   persistence: a weight-0 RS keeps its persistent clients); every packet
 *   of a flow placed there renews it.  A flow stays on its RS whatever the
 *   ring becomes (draining); only a new TCP SYN on the tuple of a flow whose
 *   RS is down schedules it again.
 *
 * TTL / hop limit.  The LB is a hop: it decrements them, and drops (counted)
 *   a packet it would translate whose TTL would reach 0, so that a routing
 *   loop through it ends.  (No ICMP time exceeded is sent.)
 *
 * Ports.  Each port of the LB has a side (lb_ports): packets to a service
 *   are taken only on a client-side port, replies of a flow (and the RS
 *   side's ICMP errors) only on an RS-side port; a client-side host sending
 *   rip:rport -> lip:lport, or an RS-side one sending to a VIP, is dropped
 *   (counted wrong_port).
 *
 * ICMP errors (lb_icmp, include/lb_icmp.h).  An error about a flow crosses
 *   the LB as the flow does, so that path MTU discovery and "port
 *   unreachable" work end to end: from the RS side, quoting a packet we
 *   sent an RS (lip:lport -> rip:rport, option included), it goes to the
 *   client from the VIP quoting cip:cport -> vip:vport without the option;
 *   from the client side, quoting a reply we sent (vip:vport ->
 *   cip:cport), it goes to the RS from the local address quoting rip:rport
 *   -> lip:lport.  Type and code change family as RFC 7915 says (what has
 *   no equivalent is dropped, counted icmp_drop); a Packet Too Big /
 *   Fragmentation Needed MTU loses what the LB adds on the way (the other
 *   family's header, the option), never below the family's minimum.  What
 *   follows the quoted ports is left in place and the ICMP checksum
 *   updated over what changed.  An error that names no flow goes to the
 *   kernel; one about the VXLAN underlay is not unwrapped.
 *
 * Dropped: fragments to a VIP (no L4 ports in later fragments), truncated
 * or malformed IP/TCP/UDP headers, IPv4 UDP without checksum that would
 * have to become IPv6, non-service packets carrying option 31 on a port
 * that is not an RS port, packets on the wrong side's port.  Passed to the
 * kernel: everything else (ARP, ND, other ICMP to the VIP, traffic to the
 * lb's own addresses, VLAN-tagged frames).
 */
#include "bpf_common.h"
#include "parse.h"
#include "csum.h"
#include "lb.h"
#include "lb_maps.h"
#include "lb_parse.h"
#include "lb_encap.h"
#include "lb_icmp.h"
#include "../../kmod/include/toa_opt.h"

_Static_assert(sizeof(struct lb_svc_key) == 20, "lb_svc_key");
_Static_assert(sizeof(struct lb_svc) == 32, "lb_svc");
_Static_assert(sizeof(struct lb_rs) == 88, "lb_rs");
_Static_assert(sizeof(struct lb_persist_key) == 24, "lb_persist_key");
_Static_assert(sizeof(struct lb_persist) == 16, "lb_persist");
_Static_assert(sizeof(struct lb_vtep_key) == 24, "lb_vtep_key");
_Static_assert(sizeof(struct lb_cfg) == 24, "lb_cfg");
_Static_assert(sizeof(struct lb_flow_key) == 40, "lb_flow_key");
_Static_assert(sizeof(struct lb_fwd) == 56, "lb_fwd");
_Static_assert(sizeof(struct lb_rev) == 64, "lb_rev");
_Static_assert(sizeof(struct ip_option) == 40, "ip_option");

/* A flow's hash (unkeyed: flow_key_hash mixes the secret in). */
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

/*
 * Which RS, local address and local port candidates a new flow gets: the
 * flow's hash through one more avalanche keyed with the control plane's
 * random lb_cfg.hash_key, so that nobody can compute which local port
 * (hence which UOA/TOA key on the RS) a client's flow will use.  A keyed
 * mix, not a cryptographic MAC.
 */
static __always_inline __u32 flow_key_hash(const struct lb_flow_key *k, __u32 key)
{
	__u32 h = flow_hash(k) ^ key;

	h *= 0xcc9e2d51;
	h ^= h >> 15;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	return h;
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

static __always_inline __u64 idle_ns(const struct lb_cfg *cfg, __u8 proto)
{
	return proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;
}

/* The flow as the packet @p names it (the key is zeroed by the caller). */
static __always_inline void pkt_flow_key(struct lb_flow_key *k, const struct pkt *p)
{
	k->src = p->src;
	k->dst = p->dst;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->family = p->family;
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

static __always_inline int addr_eq(const union lb_addr *a, const union lb_addr *b)
{
	return a->a[0] == b->a[0] && a->a[1] == b->a[1] && a->a[2] == b->a[2] && a->a[3] == b->a[3];
}

/*
 * The two halves of a flow name each other.  Under LRU pressure either can
 * be evicted alone; a forward entry whose reverse half is gone or names
 * another client must not be used (its local port may be someone else's by
 * now), and a forward entry found from a reverse one may belong to the
 * client's newer flow.
 */
static __always_inline int rev_names(const struct lb_rev *r, const struct lb_flow_key *fk)
{
	return r->cport == fk->sport && r->vport == fk->dport && r->c_family == fk->family &&
	       addr_eq(&r->cip, &fk->src) && addr_eq(&r->vip, &fk->dst);
}

static __always_inline int fwd_names(const struct lb_fwd *f, const struct lb_flow_key *rk)
{
	return f->rport == rk->sport && f->lport == rk->dport && f->rs_family == rk->family &&
	       addr_eq(&f->rip, &rk->src) && addr_eq(&f->lip, &rk->dst);
}

/* A reverse entry (key @rk) still in use: recent traffic in either direction. */
static __always_inline int rev_alive(const struct lb_rev *r, const struct lb_flow_key *rk, __u64 now,
				     __u64 idle)
{
	struct lb_flow_key fk;
	struct lb_fwd *f;

	if (now - r->last_ns <= idle)
		return 1;
	fwd_key_of(&fk, r, rk->proto);
	f = bpf_map_lookup_elem(&lb_fwd, &fk);
	return f && fwd_names(f, rk) && now - f->last_ns <= idle;
}

enum { FWD_OK, FWD_EXPIRED, FWD_BROKEN };

/* A forward entry (key @fk) usable: its pair whole, recent traffic either way. */
static __always_inline int fwd_state(const struct lb_fwd *f, const struct lb_flow_key *fk, __u64 now,
				     __u64 idle)
{
	struct lb_flow_key rk;
	struct lb_rev *r;

	rev_key_of(&rk, f, fk->proto);
	r = bpf_map_lookup_elem(&lb_rev, &rk);
	if (!r || !rev_names(r, fk))
		return FWD_BROKEN;
	return now - f->last_ns <= idle || now - r->last_ns <= idle ? FWD_OK : FWD_EXPIRED;
}

/* The client's persistence entry of service @svc, in the per-CPU scratch. */
static __always_inline struct lb_persist_key *persist_key(const struct pkt *p, const struct lb_svc *svc,
							  struct lb_scratch *sc)
{
	struct lb_persist_key *pk = &sc->pk;

	__builtin_memset(pk, 0, sizeof(*pk));
	pk->cip = p->src;
	pk->svc_id = svc->id;
	pk->family = p->family;
	return pk;
}

/*
 * The real server (index into lb_rs) of a new flow of @svc with hash @h, or
 * -1 when none takes new flows.  A global function: the verifier checks it
 * once, not once per path to it.  (Its pointer arguments are plain memory
 * to the verifier, which 6.1 does not take as map keys: the keys live in
 * the scratch map, looked up here.)
 */
__attribute__((noinline)) int lb_schedule(const struct pkt *p, const struct lb_svc *svc, __u32 h,
					  __u64 now)
{
	struct lb_scratch *sc;
	struct lb_flow_key *sk;
	struct lb_cfg *cfg;
	struct lb_persist_key *pk = NULL;
	struct lb_persist *pe;
	struct lb_ring *ring;
	struct lb_rs *rs;
	__u32 id, pos, *rr, idx, zero = 0;

	sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!p || !svc || !sc)
		return -1;
	sk = &sc->sk;
	id = svc->id;
	if (svc->persist_s) {
		pk = persist_key(p, svc, sc);
		pe = bpf_map_lookup_elem(&lb_persist, pk);
		if (pe && now - pe->last_ns <= svc->persist_s * 1000000000ull) {
			idx = pe->rs_idx;
			rs = bpf_map_lookup_elem(&lb_rs, &idx);
			if (rs && !(rs->flags & LB_RS_DOWN) && idx / LB_MAX_RS == id) {
				pe->last_ns = now;
				count(LB_C_PERSIST);
				return idx;
			}
		}
	}
	if (!svc->ring_len || svc->ring_len > LB_RING)
		return -1;
	if (svc->sched == LB_SCHED_RR || svc->sched == LB_SCHED_WRR) {
		rr = bpf_map_lookup_elem(&lb_rr, &id);
		if (!rr)
			return -1;
		pos = (*rr)++;
	} else if (svc->sched == LB_SCHED_SH) {
		cfg = bpf_map_lookup_elem(&lb_cfg, &zero);
		if (!cfg)
			return -1;
		__builtin_memset(sk, 0, sizeof(*sk));
		sk->src = p->src;
		sk->family = p->family;
		pos = flow_key_hash(sk, cfg->hash_key);
	} else {
		pos = h;
	}
	pos %= svc->ring_len;
	ring = bpf_map_lookup_elem(&lb_ring, &id);
	if (!ring || pos >= LB_RING)
		return -1;
	idx = ring->slot[pos];
	if (idx >= svc->n_rs || idx >= LB_MAX_RS)
		return -1;
	idx += id * LB_MAX_RS;
	if (pk) {
		sc->pv.last_ns = now;
		sc->pv.rs_idx = idx;
		sc->pv.pad = 0;
		bpf_map_update_elem(&lb_persist, pk, &sc->pv, BPF_ANY);
	}
	return idx;
}

/* A packet of a flow that persistence placed keeps the client's entry alive. */
static __always_inline void persist_touch(const struct pkt *p, const struct lb_svc *svc, const struct lb_fwd *f,
					  __u64 now, struct lb_scratch *sc)
{
	struct lb_persist *pe;

	pe = bpf_map_lookup_elem(&lb_persist, persist_key(p, svc, sc));
	if (pe && pe->rs_idx == f->rs_idx)
		pe->last_ns = now;
}

/* Set up a new flow; NULL with *why set when impossible. */
static __always_inline struct lb_fwd *new_flow(struct xdp_md *ctx, const struct pkt *p,
					       const struct ethhdr *eth, const struct lb_svc *svc,
					       const struct lb_cfg *cfg, const struct lb_flow_key *fk,
					       __u64 now, __u32 *why, struct lb_scratch *sc)
{
	__u32 h = flow_key_hash(fk, cfg->hash_key);
	__u64 idle = idle_ns(cfg, p->proto);
	struct lb_flow_key rk = {};
	struct lb_rev *rv = &sc->rv;
	struct lb_fwd *nf = &sc->nf;
	union lb_addr *lip;
	struct lb_rs *rs;
	__u32 idx, range, n;
	int pick;

	n = svc->n_rs;
	if (!n || n > LB_MAX_RS || !svc->n_local || svc->n_local > LB_MAX_LOCAL) {
		*why = LB_C_NO_RS;
		return NULL;
	}
	pick = lb_schedule(p, svc, h, now);
	if (pick < 0) {
		*why = LB_C_NO_RS;
		return NULL;
	}
	idx = pick;
	__builtin_memset(rv, 0, sizeof(*rv));
	__builtin_memset(nf, 0, sizeof(*nf));
	__builtin_memset(&rk, 0, sizeof(rk));
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
		if (old && !rev_alive(old, &rk, now, idle) &&
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
	percpu_count(&lb_rs_flows, nf->rs_idx);
	return bpf_map_lookup_elem(&lb_fwd, fk);
}

/*
 * The IP length a UDP datagram would leave with, option and encapsulation
 * included: the MTU guard.  A datagram the option would push past the RS
 * side's MTU goes without it (counted): an oversized frame would be dropped
 * on the way, unseen, and the datagram matters more than the option.
 */
static __always_inline __u32 udp_len_with_option(const struct pkt *p, const struct lb_svc *svc)
{
	__u32 len = (svc->rs_family == 6 ? 40 : 20) + p->l4len;

	len += p->family == 6 ? TOA_OPT_LEN_INNER6 : TOA_OPT_LEN_INNER4;
	if (svc->flags & LB_SVC_VXLAN)
		len += vxlan_overhead(svc->rs_family);
	return len;
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
	pkt_flow_key(&fk, p);
	now = bpf_ktime_get_ns();
	f = bpf_map_lookup_elem(&lb_fwd, &fk);
	if (f) {
		r = fwd_state(f, &fk, now, idle_ns(cfg, p->proto));
		if (r != FWD_OK) {
			count(r == FWD_EXPIRED ? LB_C_EXPIRED : LB_C_PAIR_BROKEN);
			f = NULL;
		}
	}
	if (f && p->proto == IPPROTO_TCP && (p->tcpflags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN) {
		rs = bpf_map_lookup_elem(&lb_rs, &f->rs_idx);
		if (rs && (rs->flags & LB_RS_DOWN)) {
			count(LB_C_RESCHED);
			f = NULL;
		}
	}
	if (!f) {
		f = new_flow(ctx, p, eth, svc, cfg, &fk, now, &why, sc);
		if (!f) {
			count(why);
			return XDP_DROP;
		}
	} else if (svc->persist_s) {
		persist_touch(p, svc, f, now, sc);
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
		if (insert && svc->mtu_rs && udp_len_with_option(p, svc) > svc->mtu_rs) {
			insert = 0;
			count(LB_C_UDP_OPT_MTU);
		}
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
		e->vxlan = rs->vtep_family;
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

static __always_inline int lb_reverse(struct xdp_md *ctx, struct pkt *p, struct lb_rev *rv,
				      const struct lb_flow_key *rk)
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
	if (!rev_alive(rv, rk, now, idle_ns(cfg, p->proto))) {
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
			if (f && fwd_names(f, rk))
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

#define LB_ICMP_NOT_OURS	(-1)

/*
 * An ICMP error (@p: its outer headers) about one of our flows, carried
 * across as the flow is (see "ICMP errors" above); the XDP verdict, or
 * LB_ICMP_NOT_OURS when it names no flow of ours.  Global: verified once.
 */
__attribute__((noinline)) int lb_icmp(struct xdp_md *ctx, const struct pkt *p, __u32 role)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_icmp_hdr h, *ih;
	struct lb_flow_key *nk;		/* the quoted packet's new addresses and ports */
	__be16 *qports;
	__u32 zero = 0, off, qoff, l4at, ifindex, icmplen, l3out, nq, acc, sum;
	__sum16 *qcheck = NULL;
	struct lb_scratch *sc;
	struct pkt *qt, *op;
	struct emit *e;
	__s32 delta;
	__u8 nf;
	int l3at;

	sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!sc || !p)	/* a global function's pointer may be NULL, says the verifier */
		return LB_ICMP_NOT_OURS;
	off = p->l4off;
	if (off > sizeof(struct ethhdr) + LB_L3_MAX)
		return LB_ICMP_NOT_OURS;
	off = lb_bound(off, 0x1ff);
	ih = data + off;
	if ((void *)(ih + 1) > data_end || !icmp_is_error(ih->type, p->family))
		return LB_ICMP_NOT_OURS;
	h = *ih;
	qt = &sc->qt;
	qoff = off + sizeof(h);
	if (parse_quote(data, data_end, qoff, p->family, qt) < 0 || p->l4len < sizeof(h) + qt->l4off + 8)
		return LB_ICMP_NOT_OURS;

	/* the flow as a packet of the other direction names it */
	__builtin_memset(&sc->ik, 0, sizeof(sc->ik));
	sc->ik.src = qt->dst;
	sc->ik.dst = qt->src;
	sc->ik.sport = qt->dport;
	sc->ik.dport = qt->sport;
	sc->ik.proto = qt->proto;
	sc->ik.family = qt->family;
	nk = &sc->nk;
	e = &sc->e;
	e->optlen = 0;
	e->vxlan = 0;
	if (role == LB_PORT_RS) {
		/* about a packet we sent an RS: to the client, about its own */
		struct lb_rev *rv = bpf_map_lookup_elem(&lb_rev, &sc->ik);

		if (!rv)
			return LB_ICMP_NOT_OURS;
		nf = rv->c_family;
		e->src = rv->vip;
		e->dst = rv->cip;
		nk->src = rv->cip;
		nk->dst = rv->vip;
		nk->sport = rv->cport;
		nk->dport = rv->vport;
		__builtin_memcpy(e->smac, rv->lmac, ETH_ALEN);
		__builtin_memcpy(e->dmac, rv->cmac, ETH_ALEN);
		ifindex = rv->ifindex;
		/* its packets grew by the other family's header and the option */
		delta = (qt->family == 4 ? 20 : 40) - (nf == 4 ? 20 : 40) +
			(nf == 4 ? TOA_OPT_LEN_INNER4 : TOA_OPT_LEN_INNER6);
	} else if (role == LB_PORT_CLIENT) {
		/* about a reply we sent the client: to the RS, about its own */
		struct lb_fwd *f = bpf_map_lookup_elem(&lb_fwd, &sc->ik);
		struct lb_rs *rs;

		if (!f)
			return LB_ICMP_NOT_OURS;
		rs = bpf_map_lookup_elem(&lb_rs, &f->rs_idx);
		if (!rs)
			return LB_ICMP_NOT_OURS;
		nf = f->rs_family;
		e->src = f->lip;
		e->dst = f->rip;
		nk->src = f->rip;
		nk->dst = f->lip;
		nk->sport = f->rport;
		nk->dport = f->lport;
		__builtin_memcpy(e->smac, rs->smac, ETH_ALEN);
		__builtin_memcpy(e->dmac, rs->dmac, ETH_ALEN);
		ifindex = rs->ifindex;
		if (f->svc_flags & LB_SVC_VXLAN) {
			e->vxlan = rs->vtep_family;
			e->vtep_src = rs->vtep_src;
			e->vtep_dst = rs->vtep_dst;
			e->vni = rs->vni & 0xffffff;
			e->vx_sport = bpf_htons(49152 | (flow_hash(&sc->ik) & 0x3fff));
			__builtin_memcpy(e->inner_smac, rs->inner_smac, ETH_ALEN);
			__builtin_memcpy(e->inner_dmac, rs->inner_dmac, ETH_ALEN);
		}
		/* the RS's packets lose its family's header and gain the client's */
		delta = (qt->family == 4 ? 20 : 40) - (nf == 4 ? 20 : 40);
	} else {
		return LB_ICMP_NOT_OURS;
	}
	if (p->ttl <= 1) {
		count(LB_C_TTL_EXPIRED);
		return XDP_DROP;
	}

	/* what leaves the message: the old type/code/rest, pseudo-header, quoted header */
	acc = (__u16)~h.check;
	acc = csum_icmp_hdr(acc, &h, 1);
	if (p->family == 6)
		acc = csum_icmp6_pseudo(acc, &p->src, &p->dst, p->l4len, 1);
	if (icmp_xlat(&h, p->family, nf, delta) < 0) {
		count(LB_C_ICMP_DROP);
		return XDP_DROP;
	}
	acc = csum_icmp_hdr(acc, &h, 0);
	qoff = lb_bound(qoff, 0x3ff);
	acc = csum_words(acc, data + qoff, data_end, qt->l4off, 1);

	/* the quoted ports and L4 checksum, in place (they stay where they are) */
	l4at = lb_bound(qoff + qt->l4off, 0x3ff);
	qports = data + l4at;
	if ((void *)(qports + 2) > data_end)
		return LB_ICMP_NOT_OURS;
	if (qt->proto == IPPROTO_TCP && (void *)(qports + 9) <= data_end)
		qcheck = (void *)(qports + 8);
	else if (qt->proto == IPPROTO_UDP && (void *)(qports + 4) <= data_end && qports[3])
		qcheck = (void *)(qports + 3);
	acc += (__u16)~qports[0];
	acc += (__u16)~qports[1];
	acc += nk->sport;
	acc += nk->dport;
	if (qcheck) {
		sum = (__u16)~*qcheck;
		sum = csum_addr(sum, &qt->src, qt->family, 1);
		sum = csum_addr(sum, &qt->dst, qt->family, 1);
		sum = csum_addr(sum, &nk->src, nf, 0);
		sum = csum_addr(sum, &nk->dst, nf, 0);
		sum += (__u16)~qports[0];
		sum += (__u16)~qports[1];
		sum += nk->sport;
		sum += nk->dport;
		acc += (__u16)~*qcheck;
		*qcheck = csum_fold(sum);
		if (qt->proto == IPPROTO_UDP && !*qcheck)
			*qcheck = 0xffff;
		acc += *qcheck;
	}
	qports[0] = nk->sport;
	qports[1] = nk->dport;

	/* new headers in front of the quoted L4 header: Ethernet (+ VXLAN), IP, ICMP, quoted IP */
	nq = nf == 4 ? 20 : 40;
	l3out = nq;
	icmplen = p->l4len - qt->l4off + nq;
	op = &sc->op;
	op->tos = p->tos;
	op->ttl = p->ttl;
	op->flow = p->family == 6 ? p->flow : 0;
	op->proto = nf == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
	op->l4len = icmplen;
	e->family = nf;
	if (bpf_xdp_adjust_head(ctx, (int)l4at - (int)(sizeof(struct ethhdr) + vxlan_overhead(e->vxlan) +
						       l3out + sizeof(h) + nq))) {
		count(LB_C_ADJUST_FAIL);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	l3at = write_l2(data, data_end, e, l3out, icmplen);
	if (l3at < 0 || write_l3(data + (l3at & 0xff), data_end, op, e) < 0)
		goto fail;
	ih = data + (l3at & 0xff) + (nf == 4 ? 20 : 40);
	if ((void *)(ih + 1) > data_end)
		goto fail;
	sum = write_quote(ih + 1, data_end, qt, nf, &nk->src, &nk->dst);
	if (!sum)
		goto fail;
	acc += sum;
	if (nf == 6)
		acc = csum_icmp6_pseudo(acc, &e->src, &e->dst, icmplen, 0);
	h.check = csum_fold(acc);
	*ih = h;
	count(LB_C_ICMP);
	return bpf_redirect(ifindex, 0);
fail:
	count(LB_C_ADJUST_FAIL);
	return XDP_DROP;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor c = { .pos = data };
	union {			/* one after the other: the 512-byte stack is tight */
		struct lb_svc_key sk;
		struct lb_flow_key rk;
	} k;
	struct pkt p = {};
	struct ethhdr *eth;
	struct lb_svc *svc;
	struct lb_rev *rv;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *role, port;
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
	role = bpf_map_lookup_elem(&lb_ports, &ifindex);
	port = role ? *role : 0;
	if (r == P_OK && p.proto == IPPROTO_UDP && p.dport == bpf_htons(VXLAN_PORT)) {
		if (port == LB_PORT_RS) {
			r = lb_decap(ctx, &p);
			if (r < 0) {
				count(LB_C_ADJUST_FAIL);
				return XDP_DROP;
			}
			if (r > 0) {
				/* the inner frame, from the top: one program for both */
				count(LB_C_DECAP);
				bpf_tail_call(ctx, &lb_self, 0);
				count(LB_C_DECAP_FAIL);
				return XDP_DROP;
			}
		}
		r = P_OK;
	}
	if (r == P_OK) {
		__builtin_memset(&k, 0, sizeof(k));
		k.sk.vip = p.dst;
		k.sk.vport = p.dport;
		k.sk.proto = p.proto;
		k.sk.family = p.family;
		svc = bpf_map_lookup_elem(&lb_services, &k.sk);
		if (svc && port != LB_PORT_CLIENT)
			goto wrong_port;
		if (svc && p.ttl <= 1)
			goto ttl_expired;
		if (svc)
			return lb_forward(ctx, &p, eth, svc);
		__builtin_memset(&k, 0, sizeof(k));
		pkt_flow_key(&k.rk, &p);
		rv = bpf_map_lookup_elem(&lb_rev, &k.rk);
		if (rv && port != LB_PORT_RS)
			goto wrong_port;
		if (rv && p.ttl <= 1)
			goto ttl_expired;
		if (rv)
			return lb_reverse(ctx, &p, rv, &k.rk);
	} else if (r == P_OTHER && ((p.family == 4 && p.proto == IPPROTO_ICMP) ||
				    (p.family == 6 && p.proto == IPPROTO_ICMPV6))) {
		r = lb_icmp(ctx, &p, port);
		if (r != LB_ICMP_NOT_OURS)
			return r;
	} else if (r == P_FRAG) {
		__builtin_memset(&k, 0, sizeof(k));
		k.sk.vip = p.dst;
		k.sk.family = p.family;
		if (bpf_map_lookup_elem(&lb_vips, &k.sk)) {
			count(LB_C_FRAG);
			return XDP_DROP;
		}
	}
	if (p.opt31 && port != LB_PORT_RS) {
		count(LB_C_OPT31_DROP);
		return XDP_DROP;
	}
	count(LB_C_PASS);
	return XDP_PASS;

ttl_expired:
	count(LB_C_TTL_EXPIRED);
	return XDP_DROP;
wrong_port:
	count(LB_C_WRONG_PORT);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
