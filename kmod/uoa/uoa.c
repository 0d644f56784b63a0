// SPDX-License-Identifier: GPL-2.0
/*
 * uoa.c - UDP option address: show the real client to a real server.
 *
 * A fullnat load balancer puts cip:cport -> vip:vport in an IP-level
 * option (IPv4 option 31, or an IPv6 Destination Options header; the
 * layout is in toa_opt.h).  UDP keeps no connection, so this module:
 *
 *  - watches LOCAL_IN (IPv4 and IPv6, in every netns) for UDP datagrams
 *    carrying the option and remembers, keyed by the packet's
 *    (netns, saddr, sport, daddr, dport), the original (cip, cport, vip,
 *    vport).  Only a datagram whose UDP checksum verifies teaches it (one
 *    with a bad checksum never reaches a socket, so it must not rewrite a
 *    live flow's client either);
 *  - keeps an entry while its flow lives: every datagram of the flow, with
 *    the option or without, and every lookup of it push its expiry
 *    uoa_map_timeout seconds on (the LB puts the option on the first few
 *    datagrams only);
 *  - answers getsockopt(IPPROTO_IP, UOA_SO_GET_LOOKUP) (see uoa.h);
 *  - counts what it does in /proc/net/uoa_stats (every netns).
 *
 * Packets are never changed: the hooks always return NF_ACCEPT.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/jhash.h>
#include <linux/jiffies.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6.h>
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/random.h>
#include <linux/rculist.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/udp.h>
#include <linux/workqueue.h>
#include <net/inet_sock.h>
#include <net/checksum.h>
#include <net/ip6_checksum.h>
#include <net/ipv6.h>
#include <net/net_namespace.h>
#include <net/netns/hash.h>
#include <net/sock.h>

#include "toa_opt.h"
#include "uoa.h"
#include "toa_parse.h"
#include "toa_kern.h"
#include "toa_trust.h"

static unsigned int uoa_map_table_bits = 12;
module_param(uoa_map_table_bits, uint, 0444);
MODULE_PARM_DESC(uoa_map_table_bits,
		 "log2 of the number of hash buckets (4..20, default 12)");

static unsigned int uoa_map_timeout = 360;
module_param(uoa_map_timeout, uint, 0644);
MODULE_PARM_DESC(uoa_map_timeout,
		 "seconds an entry lives after its flow's last datagram or lookup (default 360)");

static unsigned int uoa_map_max = 65536;
module_param(uoa_map_max, uint, 0644);
MODULE_PARM_DESC(uoa_map_max,
		 "most entries; when full, the oldest of the bucket is evicted if idle for a quarter of the timeout, else the new flow is not learnt");

TOA_TRUST_PARAM(uoa_trust);

/* ------------------------------------------------------------------ */
/* statistics                                                          */

enum uoa_stat {
	UOA_STAT_PARSE,		/* + enum toa_parse_stat */
	UOA_STAT_LOOKUP_HIT = UOA_STAT_PARSE + TOA_PS_MAX,
	UOA_STAT_LOOKUP_MISS,
	UOA_STAT_LOOKUP_INVALID,
	UOA_STAT_INSERTED,
	UOA_STAT_REFRESHED,
	UOA_STAT_UPDATED,
	UOA_STAT_EXPIRED,
	UOA_STAT_EVICTED,
	UOA_STAT_DROPPED_FULL,
	UOA_STAT_ALLOC_FAIL,
	UOA_STAT_FREED,
	UOA_STAT_KEPT_ALIVE,	/* a datagram without the option refreshed its flow's entry */
	UOA_STAT_BAD_CSUM,	/* an option in a datagram whose checksum fails: not learned */
	UOA_STAT_UNTRUSTED,	/* an option from a source not in `trusted`: ignored */
	UOA_STAT_MAX,
};

static const char * const uoa_stat_names[UOA_STAT_MAX] = {
	TOA_PARSE_STAT_NAMES(UOA_STAT_PARSE),
	[UOA_STAT_LOOKUP_HIT]		= "lookup_hit",
	[UOA_STAT_LOOKUP_MISS]		= "lookup_miss",
	[UOA_STAT_LOOKUP_INVALID]	= "lookup_invalid",
	[UOA_STAT_INSERTED]		= "inserted",
	[UOA_STAT_REFRESHED]		= "refreshed",
	[UOA_STAT_UPDATED]		= "updated",
	[UOA_STAT_EXPIRED]		= "expired",
	[UOA_STAT_EVICTED]		= "evicted",
	[UOA_STAT_DROPPED_FULL]		= "dropped_full",
	[UOA_STAT_ALLOC_FAIL]		= "alloc_fail",
	[UOA_STAT_FREED]		= "freed",
	[UOA_STAT_KEPT_ALIVE]		= "kept_alive",
	[UOA_STAT_BAD_CSUM]		= "bad_csum",
	[UOA_STAT_UNTRUSTED]		= "untrusted",
};

static DEFINE_PER_CPU(unsigned long [UOA_STAT_MAX], uoa_stats);

static inline void uoa_inc(enum uoa_stat s)
{
	this_cpu_inc(uoa_stats[s]);
}

/* ------------------------------------------------------------------ */
/* the table: (net, saddr, sport, daddr, dport) -> original addresses   */

struct uoa_key {
	const struct net *net;
	u16 family;
	__be16 sport;
	__be16 dport;
	union toa_inaddr saddr;	/* LB local ip, as the RS sees the peer */
	union toa_inaddr daddr;	/* RS ip */
};

struct uoa_entry {
	struct hlist_node node;
	struct rcu_head rcu;
	struct uoa_key k;
	struct toa_addrs a;
	unsigned long expires;	/* jiffies */
};

static struct toa_bucket *uoa_table;
static unsigned int uoa_bits;
static u32 uoa_seed __read_mostly;
static atomic_t uoa_nr_entries = ATOMIC_INIT(0);

static void uoa_gc_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(uoa_gc_work, uoa_gc_fn);

static unsigned long uoa_timeout(void)
{
	return max(1U, READ_ONCE(uoa_map_timeout)) * HZ;
}

static bool uoa_addr_eq(u16 family, const union toa_inaddr *a,
			const union toa_inaddr *b)
{
	if (family == AF_INET)
		return a->ip4 == b->ip4;
	return ipv6_addr_equal(&a->ip6, &b->ip6);
}

/* The daddr is left out so that a lookup may leave it as a wildcard. */
static struct toa_bucket *uoa_bucket(const struct uoa_key *k)
{
	u32 h = k->family == AF_INET ? (__force u32)k->saddr.ip4 :
				       ipv6_addr_hash(&k->saddr.ip6);

	h = jhash_3words(h, ((__force u32)k->sport << 16) |
			    (__force u32)k->dport,
			 net_hash_mix((struct net *)k->net), uoa_seed);
	return &uoa_table[hash_32(h, uoa_bits)];
}

/* Does @e match @k?  @wild_daddr: any daddr will do. */
static bool uoa_match(const struct uoa_entry *e, const struct uoa_key *k,
		      bool wild_daddr)
{
	return e->k.net == k->net && e->k.family == k->family &&
	       e->k.sport == k->sport && e->k.dport == k->dport &&
	       uoa_addr_eq(k->family, &e->k.saddr, &k->saddr) &&
	       (wild_daddr || uoa_addr_eq(k->family, &e->k.daddr, &k->daddr));
}

/* Caller holds the bucket lock or rcu_read_lock(). */
static struct uoa_entry *uoa_find(struct toa_bucket *b,
				  const struct uoa_key *k, bool wild_daddr)
{
	struct uoa_entry *e;

	hlist_for_each_entry_rcu(e, &b->head, node, lockdep_is_held(&b->lock))
		if (uoa_match(e, k, wild_daddr))
			return e;
	return NULL;
}

/* Caller holds the bucket lock. */
static void uoa_unlink(struct uoa_entry *e)
{
	hlist_del_rcu(&e->node);
	atomic_dec(&uoa_nr_entries);
	uoa_inc(UOA_STAT_FREED);
	kfree_rcu(e, rcu);
}

/* The entry of the bucket that would expire first.  Caller holds lock. */
static struct uoa_entry *uoa_oldest(struct toa_bucket *b)
{
	struct uoa_entry *e, *old = NULL;

	hlist_for_each_entry(e, &b->head, node)
		if (!old || time_before(e->expires, old->expires))
			old = e;
	return old;
}

/*
 * A flow that saw a datagram or a lookup within the last quarter of the
 * timeout is live: a full table makes room only by evicting an entry idle
 * for longer, so that a flood of new flows cannot push live ones out (it
 * is dropped instead, counted dropped_full).
 */
static bool uoa_live(const struct uoa_entry *e)
{
	unsigned long t = uoa_timeout();

	return time_after(READ_ONCE(e->expires), jiffies + t - t / 4);
}

/* Cheap path: the same datagram flow again, same content. */
static bool uoa_refresh(struct toa_bucket *b, const struct uoa_key *k,
			const struct toa_addrs *a, unsigned long expires)
{
	struct uoa_entry *e;
	bool done = false;

	rcu_read_lock();
	e = uoa_find(b, k, false);
	if (e && !memcmp(&e->a, a, sizeof(*a))) {
		WRITE_ONCE(e->expires, expires);
		done = true;
	}
	rcu_read_unlock();
	return done;
}

static void uoa_store(const struct uoa_key *k, const struct toa_addrs *a)
{
	unsigned long expires = jiffies + uoa_timeout();
	struct toa_bucket *b = uoa_bucket(k);
	struct uoa_entry *e, *old;

	if (uoa_refresh(b, k, a, expires)) {
		uoa_inc(UOA_STAT_REFRESHED);
		return;
	}
	e = kzalloc(sizeof(*e), GFP_ATOMIC);
	if (!e) {
		uoa_inc(UOA_STAT_ALLOC_FAIL);
		return;
	}
	e->k = *k;
	e->a = *a;
	e->expires = expires;

	spin_lock_bh(&b->lock);
	old = uoa_find(b, k, false);
	if (old) {
		hlist_replace_rcu(&old->node, &e->node);
		kfree_rcu(old, rcu);
		uoa_inc(UOA_STAT_UPDATED);
		goto unlock;
	}
	if (atomic_read(&uoa_nr_entries) >= READ_ONCE(uoa_map_max)) {
		old = uoa_oldest(b);
		if (!old || uoa_live(old)) {
			uoa_inc(UOA_STAT_DROPPED_FULL);
			spin_unlock_bh(&b->lock);
			kfree(e);
			return;
		}
		uoa_unlink(old);
		uoa_inc(UOA_STAT_EVICTED);
	}
	hlist_add_head_rcu(&e->node, &b->head);
	atomic_inc(&uoa_nr_entries);
	uoa_inc(UOA_STAT_INSERTED);
unlock:
	spin_unlock_bh(&b->lock);
}

/* Remove expired entries, or those of @net (any age), or all. */
enum uoa_sweep { UOA_SWEEP_EXPIRED, UOA_SWEEP_NET, UOA_SWEEP_ALL };

static void uoa_sweep(enum uoa_sweep how, const struct net *net)
{
	struct hlist_node *tmp;
	struct uoa_entry *e;
	struct toa_bucket *b;
	unsigned int i;
	bool kill;

	for (i = 0; i < (1U << uoa_bits); i++) {
		b = &uoa_table[i];
		if (hlist_empty(&b->head))
			continue;
		spin_lock_bh(&b->lock);
		hlist_for_each_entry_safe(e, tmp, &b->head, node) {
			if (how == UOA_SWEEP_EXPIRED)
				kill = time_after(jiffies,
						  READ_ONCE(e->expires));
			else
				kill = how == UOA_SWEEP_ALL || e->k.net == net;
			if (!kill)
				continue;
			uoa_unlink(e);
			if (how == UOA_SWEEP_EXPIRED)
				uoa_inc(UOA_STAT_EXPIRED);
		}
		spin_unlock_bh(&b->lock);
		if ((i & 255) == 255)
			cond_resched();
	}
}

static unsigned long uoa_gc_interval(void)
{
	return clamp(uoa_timeout() / 4, (unsigned long)HZ,
		     (unsigned long)(30 * HZ));
}

static void uoa_gc_fn(struct work_struct *work)
{
	uoa_sweep(UOA_SWEEP_EXPIRED, NULL);
	queue_delayed_work(system_power_efficient_wq, &uoa_gc_work,
			   uoa_gc_interval());
}

/* ------------------------------------------------------------------ */
/* LOCAL_IN                                                            */

/* The key of a datagram: (netns, saddr, sport, daddr, dport). */
static void uoa_key_of(struct uoa_key *k, const struct net *net, u16 family,
		       const struct udphdr *uh, const void *saddr,
		       const void *daddr)
{
	size_t alen = family == AF_INET ? 4 : 16;

	memset(k, 0, sizeof(*k));
	k->net = net;
	k->family = family;
	memcpy(&k->saddr, saddr, alen);
	memcpy(&k->daddr, daddr, alen);
	k->sport = uh->source;
	k->dport = uh->dest;
}

/* A datagram of a flow we know, without the option: the flow lives on. */
static void uoa_keepalive(const struct net *net, u16 family,
			  const struct udphdr *uh, const void *saddr,
			  const void *daddr)
{
	struct uoa_entry *e;
	struct uoa_key k;

	if (!atomic_read(&uoa_nr_entries))
		return;
	uoa_key_of(&k, net, family, uh, saddr, daddr);
	rcu_read_lock();
	e = uoa_find(uoa_bucket(&k), &k, false);
	if (e && time_before_eq(jiffies, READ_ONCE(e->expires))) {
		WRITE_ONCE(e->expires, jiffies + uoa_timeout());
		uoa_inc(UOA_STAT_KEPT_ALIVE);
	}
	rcu_read_unlock();
}

/*
 * Does the UDP checksum of the datagram at @thoff verify?  Checked in
 * software (only datagrams carrying the option get here: a few per flow);
 * a datagram without a checksum (IPv4 0) does not count as verified.
 */
static bool uoa_csum_ok(struct sk_buff *skb, u16 family, unsigned int thoff,
			const struct udphdr *uh, const void *saddr,
			const void *daddr)
{
	unsigned int ulen = ntohs(uh->len);
	__wsum csum;

	if (!uh->check || ulen < sizeof(*uh) || thoff + ulen > skb->len)
		return false;
	csum = skb_checksum(skb, thoff, ulen, 0);
	if (family == AF_INET)
		return !csum_tcpudp_magic(*(const __be32 *)saddr,
					  *(const __be32 *)daddr, ulen,
					  IPPROTO_UDP, csum);
	return !csum_ipv6_magic(saddr, daddr, ulen, IPPROTO_UDP, csum);
}

/*
 * Parse @skb, a UDP datagram of @family with header @uh at @thoff and
 * addresses @saddr, @daddr (4 or 16 bytes), and store what it carries.
 */
static void uoa_learn(struct sk_buff *skb, const struct net *net,
		      u16 family, const struct udphdr *uh, unsigned int thoff,
		      const void *saddr, const void *daddr)
{
	struct toa_addrs a;
	struct uoa_key k;
	int rc;

	if (family == AF_INET)
		rc = toa_parse_v4(skb, &a);
	else
		rc = toa_parse_v6(skb, &a);
	if (rc == TOA_FOUND && !uoa_csum_ok(skb, family, thoff, uh, saddr, daddr)) {
		uoa_inc(UOA_STAT_BAD_CSUM);
		return;
	}
	if (rc == TOA_FOUND && !toa_trusted(&uoa_trust, skb, family)) {
		uoa_inc(UOA_STAT_UNTRUSTED);
		return;
	}
	uoa_inc(UOA_STAT_PARSE + toa_parse_stat(rc, family, &a));
	if (rc == TOA_FOUND) {
		uoa_key_of(&k, net, family, uh, saddr, daddr);
		uoa_store(&k, &a);
	} else {
		uoa_keepalive(net, family, uh, saddr, daddr);
	}
}

static unsigned int uoa_in4(void *priv, struct sk_buff *skb,
			    const struct nf_hook_state *state)
{
	const struct iphdr *iph = ip_hdr(skb);
	const struct udphdr *uh;
	struct udphdr _uh;

	if (iph->protocol != IPPROTO_UDP || ip_is_fragment(iph))
		return NF_ACCEPT;
	uh = skb_header_pointer(skb, skb_network_offset(skb) + iph->ihl * 4,
				sizeof(_uh), &_uh);
	if (!uh)
		return NF_ACCEPT;
	/* no IPv4 options, no option 31: the common case */
	if (iph->ihl <= 5) {
		uoa_inc(UOA_STAT_PARSE + TOA_PS_MISSING);
		uoa_keepalive(state->net, AF_INET, uh, &iph->saddr, &iph->daddr);
		return NF_ACCEPT;
	}
	uoa_learn(skb, state->net, AF_INET, uh,
		  skb_network_offset(skb) + iph->ihl * 4, &iph->saddr, &iph->daddr);
	return NF_ACCEPT;
}

static unsigned int uoa_in6(void *priv, struct sk_buff *skb,
			    const struct nf_hook_state *state)
{
	const struct ipv6hdr *ip6h = ipv6_hdr(skb);
	unsigned int thoff = 0;
	const struct udphdr *uh;
	struct udphdr _uh;

	/* UDP right after the fixed header: no extension header, no option */
	if (ip6h->nexthdr == IPPROTO_UDP) {
		uh = skb_header_pointer(skb, skb_network_offset(skb) +
					sizeof(*ip6h), sizeof(_uh), &_uh);
		if (uh) {
			uoa_inc(UOA_STAT_PARSE + TOA_PS_MISSING);
			uoa_keepalive(state->net, AF_INET6, uh, &ip6h->saddr,
				      &ip6h->daddr);
		}
		return NF_ACCEPT;
	}
	/* Not a first fragment, or no UDP header: nothing to key on. */
	if (ipv6_find_hdr(skb, &thoff, IPPROTO_UDP, NULL, NULL) != IPPROTO_UDP)
		return NF_ACCEPT;
	uh = skb_header_pointer(skb, thoff, sizeof(_uh), &_uh);
	if (!uh)
		return NF_ACCEPT;
	uoa_learn(skb, state->net, AF_INET6, uh, thoff, &ip6h->saddr, &ip6h->daddr);
	return NF_ACCEPT;
}

static const struct nf_hook_ops uoa_nf_ops[] = {
	{
		.hook		= uoa_in4,
		.pf		= NFPROTO_IPV4,
		.hooknum	= NF_INET_LOCAL_IN,
		.priority	= NF_IP_PRI_FILTER + 1,
	},
	{
		.hook		= uoa_in6,
		.pf		= NFPROTO_IPV6,
		.hooknum	= NF_INET_LOCAL_IN,
		.priority	= NF_IP6_PRI_FILTER + 1,
	},
};

/* ------------------------------------------------------------------ */
/* getsockopt(IPPROTO_IP, UOA_SO_GET_LOOKUP)                           */

/* Read an endpoint; v4-mapped IPv6 becomes IPv4.  Return: family or 0. */
static u16 uoa_ep_get(const struct uoa_ep *ep, union toa_inaddr *ip)
{
	const struct in6_addr *a6 = (const struct in6_addr *)ep->addr.ip6;

	memset(ip, 0, sizeof(*ip));
	if (ep->family == AF_INET) {
		ip->ip4 = ep->addr.ip4;
		return AF_INET;
	}
	if (ep->family != AF_INET6)
		return 0;
	if (ipv6_addr_v4mapped(a6)) {
		ip->ip4 = a6->s6_addr32[3];
		return AF_INET;
	}
	ip->ip6 = *a6;
	return AF_INET6;
}

/* No input: use the addresses of a connected socket. */
static int uoa_from_socket(const struct sock *sk, struct uoa_lookup *l)
{
	const struct inet_sock *inet = inet_sk(sk);

	if (!inet->inet_dport)
		return -EINVAL;
	memset(&l->peer, 0, sizeof(l->peer));
	memset(&l->local, 0, sizeof(l->local));
	l->peer.port = inet->inet_dport;
	l->local.port = inet->inet_sport;
#if IS_ENABLED(CONFIG_IPV6)
	if (sk->sk_family == AF_INET6) {
		l->peer.family = AF_INET6;
		l->local.family = AF_INET6;
		memcpy(l->peer.addr.ip6, &sk->sk_v6_daddr, 16);
		memcpy(l->local.addr.ip6, &sk->sk_v6_rcv_saddr, 16);
		return 0;
	}
#endif
	l->peer.family = AF_INET;
	l->local.family = AF_INET;
	l->peer.addr.ip4 = inet->inet_daddr;
	l->local.addr.ip4 = inet->inet_rcv_saddr;
	return 0;
}

/* Build the key from what the application saw.  Return: wildcard daddr. */
static int uoa_lookup_key(const struct uoa_lookup *l, struct uoa_key *k,
			  bool *wild)
{
	u16 lfam;

	memset(k, 0, sizeof(*k));
	k->family = uoa_ep_get(&l->peer, &k->saddr);
	if (!k->family)
		return -EINVAL;
	k->sport = l->peer.port;
	k->dport = l->local.port;
	lfam = uoa_ep_get(&l->local, &k->daddr);
	*wild = !lfam || ipv6_addr_any(&k->daddr.ip6);
	if (!*wild && lfam != k->family)
		return -EINVAL;
	return 0;
}

static bool uoa_get(const struct uoa_key *k, bool wild, struct toa_addrs *a)
{
	struct uoa_entry *e;
	bool found = false;

	rcu_read_lock();
	e = uoa_find(uoa_bucket(k), k, wild);
	if (e && time_before_eq(jiffies, READ_ONCE(e->expires))) {
		*a = e->a;
		WRITE_ONCE(e->expires, jiffies + uoa_timeout());  /* looked up: in use */
		found = true;
	}
	rcu_read_unlock();
	return found;
}

static int uoa_sockopt_get(struct sock *sk, int optval, void __user *user,
			   int *len)
{
	struct uoa_lookup l;
	struct toa_addrs a;
	struct uoa_key k;
	bool wild;
	int err;

	if (optval != UOA_SO_GET_LOOKUP || *len < (int)sizeof(l))
		goto invalid;
	if (copy_from_user(&l, user, sizeof(l)))
		return -EFAULT;
	if (!l.peer.family && uoa_from_socket(sk, &l))
		goto invalid;
	if (uoa_lookup_key(&l, &k, &wild))
		goto invalid;
	k.net = sock_net(sk);

	if (!uoa_get(&k, wild, &a)) {
		uoa_inc(UOA_STAT_LOOKUP_MISS);
		return -ENOENT;
	}
	uoa_inc(UOA_STAT_LOOKUP_HIT);
	toa_ep_fill(&l.client, a.family, a.cport, &a.cip);
	toa_ep_fill(&l.vip, a.family, a.vport, &a.vip);
	err = copy_to_user(user, &l, sizeof(l)) ? -EFAULT : 0;
	if (!err)
		*len = sizeof(l);
	return err;

invalid:
	uoa_inc(UOA_STAT_LOOKUP_INVALID);
	return -EINVAL;
}

static struct nf_sockopt_ops uoa_sockopts[] = {
	TOA_SOCKOPT(PF_INET, UOA_BASE_CTL, UOA_SO_GET_MAX, uoa_sockopt_get),
	TOA_SOCKOPT(PF_INET6, UOA_BASE_CTL, UOA_SO_GET_MAX, uoa_sockopt_get),
};

/* ------------------------------------------------------------------ */
/* per netns: hooks and /proc/net/uoa_stats (the counters are global)  */

static int uoa_stats_show(struct seq_file *seq, void *v)
{
	toa_stats_seq(seq, uoa_stat_names, UOA_STAT_MAX, uoa_stats);
	seq_printf(seq, "entries %d\n", atomic_read(&uoa_nr_entries));
	seq_printf(seq, "max %u\n", READ_ONCE(uoa_map_max));
	seq_printf(seq, "timeout %u\n", READ_ONCE(uoa_map_timeout));
	seq_printf(seq, "table_bits %u\n", uoa_bits);
	return 0;
}

static int __net_init uoa_net_init(struct net *net)
{
	int err;

	err = nf_register_net_hooks(net, uoa_nf_ops, ARRAY_SIZE(uoa_nf_ops));
	if (err)
		return err;
	err = toa_proc_create(net, "uoa_stats", uoa_stats_show);
	if (err)
		nf_unregister_net_hooks(net, uoa_nf_ops,
					ARRAY_SIZE(uoa_nf_ops));
	return err;
}

static void __net_exit uoa_net_exit(struct net *net)
{
	remove_proc_entry("uoa_stats", net->proc_net);
	nf_unregister_net_hooks(net, uoa_nf_ops, ARRAY_SIZE(uoa_nf_ops));
	/* no hook of @net runs any more: its entries can go */
	uoa_sweep(UOA_SWEEP_NET, net);
}

static struct pernet_operations uoa_net_ops = {
	.init = uoa_net_init,
	.exit = uoa_net_exit,
};

/* ------------------------------------------------------------------ */

static int __init uoa_init(void)
{
	int err;

	uoa_table = toa_buckets_alloc(uoa_map_table_bits, &uoa_bits);
	if (!uoa_table)
		return -ENOMEM;
	uoa_seed = get_random_u32();

	err = register_pernet_subsys(&uoa_net_ops);
	if (err)
		goto out_table;
	err = toa_register_sockopts(uoa_sockopts);
	if (err)
		goto out_pernet;
	queue_delayed_work(system_power_efficient_wq, &uoa_gc_work,
			   uoa_gc_interval());
	pr_info("loaded, %u hash buckets, timeout %us, max %u\n",
		1U << uoa_bits, uoa_map_timeout, uoa_map_max);
	return 0;

out_pernet:
	pr_err("nf_register_sockopt(%d) failed: %d\n", UOA_SO_GET_LOOKUP, err);
	unregister_pernet_subsys(&uoa_net_ops);
	uoa_sweep(UOA_SWEEP_ALL, NULL);
	rcu_barrier();
out_table:
	kvfree(uoa_table);
	return err;
}

static void __exit uoa_exit(void)
{
	toa_unregister_sockopts(uoa_sockopts);
	unregister_pernet_subsys(&uoa_net_ops);
	cancel_delayed_work_sync(&uoa_gc_work);
	uoa_sweep(UOA_SWEEP_ALL, NULL);
	synchronize_rcu();
	rcu_barrier();
	kvfree(uoa_table);
	pr_info("unloaded\n");
}

module_init(uoa_init);
module_exit(uoa_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("UOA: real client address of fullnat UDP datagrams");
MODULE_VERSION("1.0");
