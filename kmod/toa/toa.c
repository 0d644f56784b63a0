// SPDX-License-Identifier: GPL-2.0
/*
 * toa.c - TCP option address: show the real client to a real server.
 *
 * A fullnat load balancer puts cip:cport -> vip:vport in an IP-level
 * option (IPv4 option 31, or an IPv6 Destination Options header; the
 * layout is in toa_opt.h).  This module:
 *
 *  - catches the third packet of the handshake with kretprobes on
 *    tcp_v4_syn_recv_sock / tcp_v6_syn_recv_sock, parses the option from
 *    that skb and stores it in a hash table keyed by the new struct sock;
 *  - rewrites the result of inet_getname / inet6_getname (getpeername,
 *    getsockname, accept, SO_PEERNAME) for sockets in the table, through
 *    an ftrace hook that sends those calls to a wrapper;
 *  - forgets a socket when tcp_v4_destroy_sock runs for it (tcp_v6's
 *    destroy calls it too);
 *  - answers getsockopt(IPPROTO_IP, TOA_SO_GET_LOOKUP) (see toa.h);
 *  - counts what it does in /proc/net/toa_stats (every netns).
 *
 * The ops tables are read-only on the target kernels, so nothing is
 * patched: only kprobes, kretprobes and ftrace_ops are used.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/ftrace.h>
#include <linux/hash.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/kprobes.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/netfilter.h>
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <net/inet_sock.h>
#include <net/net_namespace.h>
#include <net/sock.h>

#include "toa_opt.h"
#include "toa.h"
#include "toa_parse.h"
#include "toa_kern.h"
#include "toa_compat.h"
#include "toa_trust.h"

static unsigned int toa_map_table_bits = 12;
module_param(toa_map_table_bits, uint, 0444);
MODULE_PARM_DESC(toa_map_table_bits,
		 "log2 of the number of hash buckets (4..20, default 12)");

TOA_TRUST_PARAM(toa_trust);

/* ------------------------------------------------------------------ */
/* statistics                                                          */

enum toa_stat {
	TOA_STAT_SYN_RECV_V4,
	TOA_STAT_SYN_RECV_V6,
	TOA_STAT_NOT_OWNED,
	TOA_STAT_PARSE,		/* + enum toa_parse_stat */
	TOA_STAT_GETNAME_HIT = TOA_STAT_PARSE + TOA_PS_MAX,
	TOA_STAT_GETNAME_MISS,
	TOA_STAT_GETNAME_STALE,
	TOA_STAT_GETNAME_6TO4_KEPT,
	TOA_STAT_LOOKUP_HIT,
	TOA_STAT_LOOKUP_MISS,
	TOA_STAT_INSERTED,
	TOA_STAT_REPLACED,
	TOA_STAT_FREED,
	TOA_STAT_ALLOC_FAIL,
	TOA_STAT_UNTRUSTED,	/* an option from a source not in `trusted`: ignored */
	TOA_STAT_MAX,
};

static const char * const toa_stat_names[TOA_STAT_MAX] = {
	[TOA_STAT_SYN_RECV_V4]		= "syn_recv_v4",
	[TOA_STAT_SYN_RECV_V6]		= "syn_recv_v6",
	[TOA_STAT_NOT_OWNED]		= "syn_recv_not_owned",
	TOA_PARSE_STAT_NAMES(TOA_STAT_PARSE),
	[TOA_STAT_GETNAME_HIT]		= "getname_hit",
	[TOA_STAT_GETNAME_MISS]		= "getname_miss",
	[TOA_STAT_GETNAME_STALE]	= "getname_stale",
	[TOA_STAT_GETNAME_6TO4_KEPT]	= "getname_6to4_kept",
	[TOA_STAT_LOOKUP_HIT]		= "lookup_hit",
	[TOA_STAT_LOOKUP_MISS]		= "lookup_miss",
	[TOA_STAT_INSERTED]		= "inserted",
	[TOA_STAT_REPLACED]		= "replaced",
	[TOA_STAT_FREED]		= "freed",
	[TOA_STAT_ALLOC_FAIL]		= "alloc_fail",
	[TOA_STAT_UNTRUSTED]		= "untrusted",
};

static DEFINE_PER_CPU(unsigned long [TOA_STAT_MAX], toa_stats);

static inline void toa_inc(enum toa_stat s)
{
	this_cpu_inc(toa_stats[s]);
}

/* ------------------------------------------------------------------ */
/* the table: struct sock * -> original addresses                       */

struct toa_entry {
	struct hlist_node node;
	struct rcu_head rcu;
	const struct sock *sk;
	/*
	 * The socket's own tuple when the entry was made.  A socket that was
	 * freed without passing tcp_v4_destroy_sock leaves its entry behind;
	 * if the memory becomes another socket, the tuple tells them apart.
	 */
	u16 outer;			/* family of the packet */
	__portpair ports;
	__addrpair addrs;		/* outer IPv4 */
	struct in6_addr daddr6;		/* outer IPv6 */
	struct in6_addr saddr6;
	struct toa_addrs a;
};

static struct toa_bucket *toa_table;
static unsigned int toa_bits;
static atomic_t toa_nr_entries = ATOMIC_INIT(0);

static struct toa_bucket *toa_bucket(const struct sock *sk)
{
	return &toa_table[hash_ptr(sk, toa_bits)];
}

static void toa_note_tuple(struct toa_entry *e, const struct sock *sk)
{
	e->ports = READ_ONCE(sk->sk_portpair);
	if (e->outer == AF_INET) {
		e->addrs = READ_ONCE(sk->sk_addrpair);
		return;
	}
#if IS_ENABLED(CONFIG_IPV6)
	e->daddr6 = sk->sk_v6_daddr;
	e->saddr6 = sk->sk_v6_rcv_saddr;
#endif
}

static bool toa_tuple_matches(const struct toa_entry *e,
			      const struct sock *sk)
{
	if (e->ports != READ_ONCE(sk->sk_portpair))
		return false;
	if (e->outer == AF_INET)
		return e->addrs == READ_ONCE(sk->sk_addrpair);
#if IS_ENABLED(CONFIG_IPV6)
	return ipv6_addr_equal(&e->daddr6, &sk->sk_v6_daddr) &&
	       ipv6_addr_equal(&e->saddr6, &sk->sk_v6_rcv_saddr);
#else
	return false;
#endif
}

/* Caller holds the bucket lock or rcu_read_lock(). */
static struct toa_entry *toa_find(struct toa_bucket *b, const struct sock *sk)
{
	struct toa_entry *e;

	hlist_for_each_entry_rcu(e, &b->head, node, lockdep_is_held(&b->lock))
		if (e->sk == sk)
			return e;
	return NULL;
}

static void toa_free(struct toa_entry *e)
{
	atomic_dec(&toa_nr_entries);
	toa_inc(TOA_STAT_FREED);
	kfree_rcu(e, rcu);
}

static void toa_store(const struct sock *sk, u16 outer,
		      const struct toa_addrs *a)
{
	struct toa_bucket *b = toa_bucket(sk);
	struct toa_entry *e, *old;
	unsigned long flags;

	e = kzalloc(sizeof(*e), GFP_ATOMIC);
	if (!e) {
		toa_inc(TOA_STAT_ALLOC_FAIL);
		return;
	}
	e->sk = sk;
	e->outer = outer;
	e->a = *a;
	toa_note_tuple(e, sk);

	spin_lock_irqsave(&b->lock, flags);
	old = toa_find(b, sk);
	if (old) {
		hlist_replace_rcu(&old->node, &e->node);
		toa_inc(TOA_STAT_REPLACED);
	} else {
		hlist_add_head_rcu(&e->node, &b->head);
	}
	atomic_inc(&toa_nr_entries);
	spin_unlock_irqrestore(&b->lock, flags);
	toa_inc(TOA_STAT_INSERTED);
	if (old)
		toa_free(old);
}

static void toa_forget(const struct sock *sk)
{
	struct toa_bucket *b;
	struct toa_entry *e;
	unsigned long flags;

	if (!atomic_read(&toa_nr_entries))
		return;
	b = toa_bucket(sk);
	/* Most sockets have no entry: look before taking the lock. */
	rcu_read_lock();
	e = toa_find(b, sk);
	rcu_read_unlock();
	if (!e)
		return;

	spin_lock_irqsave(&b->lock, flags);
	e = toa_find(b, sk);
	if (e)
		hlist_del_rcu(&e->node);
	spin_unlock_irqrestore(&b->lock, flags);
	if (e)
		toa_free(e);
}

/* Copy out the entry of @sk.  Return: true if there is a valid one. */
static bool toa_get(const struct sock *sk, struct toa_addrs *a)
{
	bool found = false, stale = false;
	struct toa_entry *e;

	if (!sk || !atomic_read(&toa_nr_entries))
		return false;
	rcu_read_lock();
	e = toa_find(toa_bucket(sk), sk);
	if (e && toa_tuple_matches(e, sk)) {
		*a = e->a;
		found = true;
	} else if (e) {
		stale = true;
	}
	rcu_read_unlock();
	if (stale) {
		toa_inc(TOA_STAT_GETNAME_STALE);
		toa_forget(sk);
	}
	return found;
}

static void toa_flush_all(void)
{
	struct hlist_node *tmp;
	struct toa_entry *e;
	unsigned int i;

	for (i = 0; i < (1U << toa_bits); i++) {
		hlist_for_each_entry_safe(e, tmp, &toa_table[i].head, node) {
			hlist_del(&e->node);
			atomic_dec(&toa_nr_entries);
			toa_inc(TOA_STAT_FREED);
			kfree(e);
		}
	}
}

/* ------------------------------------------------------------------ */
/* learning: the third packet of the handshake                         */

static void toa_learn(const struct sock *sk, const struct sk_buff *skb,
		      u16 outer)
{
	struct toa_addrs a;
	int rc;

	if (outer == AF_INET)
		rc = toa_parse_v4(skb, &a);
	else
		rc = toa_parse_v6(skb, &a);

	if (rc == TOA_FOUND && !toa_trusted(&toa_trust, skb, outer)) {
		toa_inc(TOA_STAT_UNTRUSTED);
		toa_forget(sk);
		return;
	}
	toa_inc(TOA_STAT_PARSE + toa_parse_stat(rc, outer, &a));
	if (rc != TOA_FOUND) {
		/* Drop what an earlier socket at this address left behind. */
		toa_forget(sk);
		return;
	}
	toa_store(sk, outer, &a);
}

struct toa_syn_args {
	struct sk_buff *skb;
	bool *own_req;
};

/*
 * struct sock *tcp_v{4,6}_syn_recv_sock(const struct sock *sk,
 *	struct sk_buff *skb, struct request_sock *req,
 *	struct dst_entry *dst, struct request_sock *req_unhash,
 *	bool *own_req);
 */
static int toa_syn_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct toa_syn_args *d = (struct toa_syn_args *)ri->data;

	d->skb = (struct sk_buff *)regs_get_kernel_argument(regs, 1);
	d->own_req = (bool *)regs_get_kernel_argument(regs, 5);
	return 0;
}

/* The new socket, if it is really going to live. */
static struct sock *toa_syn_child(struct kretprobe_instance *ri,
				  struct pt_regs *regs)
{
	struct toa_syn_args *d = (struct toa_syn_args *)ri->data;
	struct sock *child = (struct sock *)regs_return_value(regs);

	if (!child || !d->skb)
		return NULL;
	/*
	 * !*own_req: another CPU won the race for this request; the child
	 * is released with sock_put() and never reaches destroy_sock.
	 */
	if (!d->own_req || !READ_ONCE(*d->own_req)) {
		toa_inc(TOA_STAT_NOT_OWNED);
		return NULL;
	}
	return child;
}

/* The return of tcp_v{4,6}_syn_recv_sock (@outer AF_INET, AF_INET6). */
static int toa_syn_ret(struct kretprobe_instance *ri, struct pt_regs *regs,
		       u16 outer)
{
	struct toa_syn_args *d = (struct toa_syn_args *)ri->data;
	struct sock *child = toa_syn_child(ri, regs);

	if (!child)
		return 0;
	toa_inc(outer == AF_INET ? TOA_STAT_SYN_RECV_V4 : TOA_STAT_SYN_RECV_V6);
	toa_learn(child, d->skb, outer);
	return 0;
}

static int toa_syn4_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	return toa_syn_ret(ri, regs, AF_INET);
}

static int toa_syn6_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct toa_syn_args *d = (struct toa_syn_args *)ri->data;

	/*
	 * An IPv4 packet on an IPv6 listener: tcp_v6_syn_recv_sock called
	 * tcp_v4_syn_recv_sock, whose probe has done the work.
	 */
	if (!d->skb || d->skb->protocol != htons(ETH_P_IPV6))
		return 0;
	return toa_syn_ret(ri, regs, AF_INET6);
}

/* void tcp_v4_destroy_sock(struct sock *sk) */
static int toa_destroy_pre(struct kprobe *p, struct pt_regs *regs)
{
	toa_forget((struct sock *)regs_get_kernel_argument(regs, 0));
	return 0;
}

/* ------------------------------------------------------------------ */
/* reporting: inet_getname / inet6_getname                             */

/*
 * Write @a (client for a peer name, vip for our own name) over the
 * result of inet_getname (@sock_family AF_INET) or inet6_getname.
 * Return: the new length of the address.
 */
static int toa_write_name(struct sockaddr *uaddr, int len, u16 sock_family,
			  const struct toa_addrs *a, int peer)
{
	const union toa_inaddr *ip = peer ? &a->cip : &a->vip;
	__be16 port = peer ? a->cport : a->vport;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)uaddr;
	struct sockaddr_in *sin = (struct sockaddr_in *)uaddr;

	if (sock_family == AF_INET && a->family == AF_INET) {
		sin->sin_port = port;
		sin->sin_addr.s_addr = ip->ip4;
		return len;
	}
	if (sock_family == AF_INET) {
		/*
		 * 6to4 on an IPv4-only socket.  Its application reads a
		 * struct sockaddr_in: an IPv6 address would not fit, and one
		 * handed anyway (AF_INET6, length 28) makes servers such as
		 * nginx drop the connection.  Keep the LB's address, which
		 * the application handles; TOA_SO_GET_LOOKUP gives the IPv6
		 * client, and a dual-stack socket gets it from getpeername.
		 */
		toa_inc(TOA_STAT_GETNAME_6TO4_KEPT);
		return len;
	}
	sin6->sin6_port = port;
	sin6->sin6_flowinfo = 0;
	sin6->sin6_scope_id = 0;
	if (a->family == AF_INET6)
		sin6->sin6_addr = ip->ip6;
	else
		ipv6_addr_set_v4mapped(ip->ip4, &sin6->sin6_addr);
	return len;
}

/* Rewrite the result @len of the original getname, if @sock has an entry. */
static int toa_getname_fix(struct socket *sock, struct sockaddr *uaddr,
			   int peer, int len, u16 sock_family)
{
	struct toa_addrs a;

	if (len < 0)
		return len;
	if (!toa_get(sock->sk, &a)) {
		toa_inc(TOA_STAT_GETNAME_MISS);
		return len;
	}
	toa_inc(TOA_STAT_GETNAME_HIT);
	return toa_write_name(uaddr, len, sock_family, &a, peer);
}

/*
 * The hook.  A kretprobe on getname cost every call on the system the
 * kprobe machinery and a return trampoline; instead an ftrace_ops on
 * inet_getname / inet6_getname (the ops tables stay read-only) whose
 * callback, only for a TCP socket while the table holds entries, points
 * regs->ip at toa_inet{,6}_getname.  Every other call costs the callback
 * alone.  The wrapper calls the original past the fentry call site, so
 * ftrace does not fire twice, or where IBT forbids that, by its symbol,
 * and the parent_ip check in the callback lets that nested call through
 * (toa_compat.h).
 *
 * No FTRACE_OPS_FL_RECURSION: its helper (recursion lock, preemption
 * off) doubled the cost of the hook, and the callback cannot recurse, it
 * calls nothing traceable.  It may be preempted: ftrace_shutdown() waits
 * for an RCU-tasks grace period for ops of a module.
 *
 * Unloading: once unregister_ftrace_function() returned no callback runs;
 * a task it redirected counted itself in toa_getname_busy (from the
 * callback, before it left the trampoline) until the wrapper is done; an
 * RCU-tasks grace period then covers the wrapper's last instructions.
 */
struct toa_hook {
	const char *name;
	void *wrapper;
	toa_getname_t exported;	/* the original, by its symbol */
	toa_getname_t orig;	/* what the wrapper calls (toa_getname_orig) */
	unsigned long site;	/* its fentry call site: the callback's @ip */
	struct ftrace_ops ops;
	bool registered;
};

static DEFINE_PER_CPU(int, toa_getname_busy);

/* Redirected calls not finished yet; exact once no new one can start. */
static int toa_getname_busy_sum(void)
{
	int cpu, n = 0;

	for_each_possible_cpu(cpu)
		n += READ_ONCE(per_cpu(toa_getname_busy, cpu));
	return n;
}

static int toa_inet_getname(struct socket *sock, struct sockaddr *uaddr,
			    int peer);
static int toa_inet6_getname(struct socket *sock, struct sockaddr *uaddr,
			     int peer);

static void notrace toa_getname_ftrace(unsigned long ip,
				       unsigned long parent_ip,
				       struct ftrace_ops *ops,
				       struct ftrace_regs *fregs);

#define TOA_HOOK(_fn, _wrapper) {					\
	.name		= #_fn,						\
	.wrapper	= _wrapper,					\
	.exported	= _fn,						\
	.ops = {							\
		.func	= toa_getname_ftrace,				\
		.flags	= FTRACE_OPS_FL_SAVE_REGS |			\
			  FTRACE_OPS_FL_IPMODIFY,			\
	},								\
}

static struct toa_hook toa_hooks[] = {
	TOA_HOOK(inet_getname, toa_inet_getname),
	TOA_HOOK(inet6_getname, toa_inet6_getname),
};

/* int inet{,6}_getname(struct socket *sock, struct sockaddr *uaddr,
 *			int peer)
 */
/*
 * The hook whose fentry call site is @ip, or NULL.  The callback picks its
 * hook by the traced address, not by container_of(@ops): both hooks share
 * the callback, and while ftrace moves call sites between trampolines
 * (another ops registering, as on every insmod under traffic) a call may
 * reach it with ops that are not the ones of its site.  A call that
 * matches no hook is left alone.
 */
static const struct toa_hook *toa_hook_at(unsigned long ip)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(toa_hooks); i++)
		if (READ_ONCE(toa_hooks[i].site) == ip)
			return &toa_hooks[i];
	return NULL;
}

static void notrace toa_getname_ftrace(unsigned long ip,
				       unsigned long parent_ip,
				       struct ftrace_ops *ops,
				       struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);
	const struct toa_hook *h;
	const struct socket *sock;
	const struct sock *sk;

	/* the wrapper calling the original */
	if (within_module(parent_ip, THIS_MODULE))
		return;
	/* most calls: nothing stored, or not TCP */
	if (!atomic_read(&toa_nr_entries))
		return;
	/* no regs to redirect (a caller without SAVE_REGS), or not our site */
	h = regs ? toa_hook_at(ip) : NULL;
	if (!h)
		return;
	sock = (const struct socket *)regs_get_kernel_argument(regs, 0);
	sk = sock ? READ_ONCE(sock->sk) : NULL;
	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	this_cpu_inc(toa_getname_busy);
	regs->ip = (unsigned long)h->wrapper;
}

/* The original of @h, fixed for a socket of @sock_family; done. */
static int toa_getname_wrap(const struct toa_hook *h, u16 sock_family,
			    struct socket *sock, struct sockaddr *uaddr,
			    int peer)
{
	int len = h->orig(sock, uaddr, peer);

	len = toa_getname_fix(sock, uaddr, peer, len, sock_family);
	this_cpu_dec(toa_getname_busy);
	return len;
}

static int toa_inet_getname(struct socket *sock, struct sockaddr *uaddr,
			    int peer)
{
	return toa_getname_wrap(&toa_hooks[0], AF_INET, sock, uaddr, peer);
}

static int toa_inet6_getname(struct socket *sock, struct sockaddr *uaddr,
			     int peer)
{
	return toa_getname_wrap(&toa_hooks[1], AF_INET6, sock, uaddr, peer);
}

static void toa_unregister_hooks(void)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(toa_hooks); i++) {
		struct toa_hook *h = &toa_hooks[i];

		if (h->registered) {
			/* ftrace_shutdown(): no callback runs once it returns */
			unregister_ftrace_function(&h->ops);
			ftrace_free_filter(&h->ops);
			h->registered = false;
		}
		WRITE_ONCE(h->site, 0);
	}
	/* redirected calls still inside a wrapper (lock_sock may sleep) */
	while (toa_getname_busy_sum())
		msleep(20);
	/* and the wrapper's last instructions after the decrement */
	synchronize_rcu_tasks();
}

static int toa_register_hooks(void)
{
	unsigned int i;
	int err;

	for (i = 0; i < ARRAY_SIZE(toa_hooks); i++) {
		struct toa_hook *h = &toa_hooks[i];
		/*
		 * From the exported symbol (toa_compat.h), not a transient
		 * kprobe (kallsyms_lookup_name is not exported): that patched
		 * both sites twice more on every load, for nothing.
		 * ftrace_set_filter_ip() refuses an address that is no site.
		 */
		unsigned long addr = toa_fentry_site((unsigned long)h->exported);

		if (!addr) {
			pr_err("not loading: %s has no ftrace call site at its entry\n",
			       h->name);
			err = -ENOENT;
			goto fail;
		}
		h->orig = toa_getname_orig(addr, h->exported);
		WRITE_ONCE(h->site, addr);
		err = ftrace_set_filter_ip(&h->ops, addr, 0, 0);
		if (err) {
			pr_err("not loading: ftrace cannot filter %s: %d\n",
			       h->name, err);
			goto fail;
		}
		err = register_ftrace_function(&h->ops);
		if (err) {
			pr_err("not loading: cannot hook %s: %d%s\n", h->name, err,
			       err == -EBUSY ?
			       " (another IPMODIFY user, such as a livepatch, has it)" :
			       "");
			ftrace_free_filter(&h->ops);
			goto fail;
		}
		h->registered = true;
	}
	return 0;

fail:
	toa_unregister_hooks();
	return err;
}

/* ------------------------------------------------------------------ */
/* probes                                                               */

static struct kretprobe toa_krp_syn4 = {
	.kp.symbol_name	= "tcp_v4_syn_recv_sock",
	.entry_handler	= toa_syn_entry,
	.handler	= toa_syn4_ret,
	.data_size	= sizeof(struct toa_syn_args),
};

static struct kretprobe toa_krp_syn6 = {
	.kp.symbol_name	= "tcp_v6_syn_recv_sock",
	.entry_handler	= toa_syn_entry,
	.handler	= toa_syn6_ret,
	.data_size	= sizeof(struct toa_syn_args),
};

static struct kretprobe *toa_krps[] = {
	&toa_krp_syn4, &toa_krp_syn6,
};

static struct kprobe toa_kp_destroy = {
	.symbol_name	= "tcp_v4_destroy_sock",
	.pre_handler	= toa_destroy_pre,
};

static int toa_register_probes(void)
{
	int cpus = num_possible_cpus();
	int err;

	/* softirq, never sleeps: a few per CPU (v6 nests v4) */
	toa_krp_syn4.maxactive = max(16, 4 * cpus);
	toa_krp_syn6.maxactive = max(16, 4 * cpus);

	/* destroy first: whatever gets stored can be removed */
	err = register_kprobe(&toa_kp_destroy);
	if (err) {
		pr_err("kprobe on %s failed: %d\n",
		       toa_kp_destroy.symbol_name, err);
		return err;
	}
	err = register_kretprobes(toa_krps, ARRAY_SIZE(toa_krps));
	if (err) {
		pr_err("kretprobes (%s, %s) failed: %d\n",
		       toa_krp_syn4.kp.symbol_name, toa_krp_syn6.kp.symbol_name,
		       err);
		unregister_kprobe(&toa_kp_destroy);
		return err;
	}
	err = toa_register_hooks();
	if (err) {
		unregister_kretprobes(toa_krps, ARRAY_SIZE(toa_krps));
		unregister_kprobe(&toa_kp_destroy);
	}
	return err;
}

static void toa_unregister_probes(void)
{
	toa_unregister_hooks();
	/* waits for running handlers; pending returns see no handler */
	unregister_kretprobes(toa_krps, ARRAY_SIZE(toa_krps));
	unregister_kprobe(&toa_kp_destroy);
}

static unsigned long toa_probes_missed(void)
{
	unsigned long n = toa_kp_destroy.nmissed;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(toa_krps); i++)
		n += toa_krps[i]->nmissed + toa_krps[i]->kp.nmissed;
	return n;
}

/* ------------------------------------------------------------------ */
/* getsockopt(IPPROTO_IP, TOA_SO_GET_LOOKUP)                           */

static int toa_sockopt_get(struct sock *sk, int optval, void __user *user,
			   int *len)
{
	struct toa_lookup l;
	struct toa_addrs a;

	if (optval != TOA_SO_GET_LOOKUP || *len < (int)sizeof(l))
		return -EINVAL;
	if (!sk || sk->sk_protocol != IPPROTO_TCP || !toa_get(sk, &a)) {
		toa_inc(TOA_STAT_LOOKUP_MISS);
		return -ENOENT;
	}
	toa_inc(TOA_STAT_LOOKUP_HIT);
	toa_ep_fill(&l.client, a.family, a.cport, &a.cip);
	toa_ep_fill(&l.vip, a.family, a.vport, &a.vip);
	if (copy_to_user(user, &l, sizeof(l)))
		return -EFAULT;
	*len = sizeof(l);
	return 0;
}

static struct nf_sockopt_ops toa_sockopts[] = {
	TOA_SOCKOPT(PF_INET, TOA_BASE_CTL, TOA_SO_GET_MAX, toa_sockopt_get),
	TOA_SOCKOPT(PF_INET6, TOA_BASE_CTL, TOA_SO_GET_MAX, toa_sockopt_get),
};

/* ------------------------------------------------------------------ */
/* /proc/net/toa_stats, in every netns (the counters are global)       */

static int toa_stats_show(struct seq_file *seq, void *v)
{
	toa_stats_seq(seq, toa_stat_names, TOA_STAT_MAX, toa_stats);
	seq_printf(seq, "entries %d\n", atomic_read(&toa_nr_entries));
	seq_printf(seq, "probe_missed %lu\n", toa_probes_missed());
	seq_printf(seq, "table_bits %u\n", toa_bits);
	return 0;
}

static int __net_init toa_net_init(struct net *net)
{
	return toa_proc_create(net, "toa_stats", toa_stats_show);
}

static void __net_exit toa_net_exit(struct net *net)
{
	remove_proc_entry("toa_stats", net->proc_net);
}

static struct pernet_operations toa_net_ops = {
	.init = toa_net_init,
	.exit = toa_net_exit,
};

/* ------------------------------------------------------------------ */

static int __init toa_init(void)
{
	int err;

	toa_table = toa_buckets_alloc(toa_map_table_bits, &toa_bits);
	if (!toa_table)
		return -ENOMEM;

	err = register_pernet_subsys(&toa_net_ops);
	if (err)
		goto out_table;
	err = toa_register_probes();
	if (err)
		goto out_pernet;
	err = toa_register_sockopts(toa_sockopts);
	if (err) {
		pr_err("nf_register_sockopt(%d) failed: %d\n",
		       TOA_SO_GET_LOOKUP, err);
		goto out_probes;
	}
	pr_info("loaded, %u hash buckets\n", 1U << toa_bits);
	return 0;

out_probes:
	toa_unregister_probes();
	synchronize_rcu();
	toa_flush_all();
	rcu_barrier();
out_pernet:
	unregister_pernet_subsys(&toa_net_ops);
out_table:
	kvfree(toa_table);
	return err;
}

static void __exit toa_exit(void)
{
	toa_unregister_sockopts(toa_sockopts);
	toa_unregister_probes();
	unregister_pernet_subsys(&toa_net_ops);
	/* no handler runs any more; let RCU readers and frees finish */
	synchronize_rcu();
	toa_flush_all();
	rcu_barrier();
	kvfree(toa_table);
	pr_info("unloaded\n");
}

module_init(toa_init);
module_exit(toa_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("TOA: real client address of fullnat TCP connections");
MODULE_VERSION("1.0");
