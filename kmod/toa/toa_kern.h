/* SPDX-License-Identifier: GPL-2.0 */
/*
 * toa_kern.h - boilerplate shared by toa.ko and uoa.ko (kernel only):
 * per-cpu counters and their /proc/net file, the parse counters, the
 * hash table's buckets, the endpoint of the getsockopt answers and the
 * pair of nf_sockopt_ops (PF_INET, PF_INET6).
 */
#ifndef _TOA_KERN_H
#define _TOA_KERN_H

#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/netfilter.h>
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <net/net_namespace.h>

#include "toa_ep.h"
#include "toa_parse.h"

/* ------------------------------------------------------------------ */
/* counters                                                            */

/*
 * The counters of a parse: a block of TOA_PS_MAX in each module's enum
 * of counters, starting at its <PREFIX>_PARSE.
 */
enum toa_parse_stat {
	TOA_PS_PARSED_V4_IN4,
	TOA_PS_PARSED_V4_IN6,
	TOA_PS_PARSED_V6_IN4,
	TOA_PS_PARSED_V6_IN6,
	TOA_PS_MISSING,
	TOA_PS_MALFORMED,	/* + enum toa_opt_err, OK slot unused */
	TOA_PS_MAX = TOA_PS_MALFORMED + TOA_OPT_E_MAX,
};

/* The names of that block, in a names array; @base is <PREFIX>_PARSE. */
#define TOA_PARSE_STAT_NAMES(base)					\
	[(base) + TOA_PS_PARSED_V4_IN4]	= "parsed_v4_in4",		\
	[(base) + TOA_PS_PARSED_V4_IN6]	= "parsed_v4_in6",		\
	[(base) + TOA_PS_PARSED_V6_IN4]	= "parsed_v6_in4",		\
	[(base) + TOA_PS_PARSED_V6_IN6]	= "parsed_v6_in6",		\
	[(base) + TOA_PS_MISSING]	= "missing",			\
	[(base) + TOA_PS_MALFORMED + TOA_OPT_OK]	  = NULL,	\
	[(base) + TOA_PS_MALFORMED + TOA_OPT_E_TRUNCATED] = "malformed_truncated", \
	[(base) + TOA_PS_MALFORMED + TOA_OPT_E_TYPE]	  = "malformed_type", \
	[(base) + TOA_PS_MALFORMED + TOA_OPT_E_LENGTH]	  = "malformed_length", \
	[(base) + TOA_PS_MALFORMED + TOA_OPT_E_OPERATION] = "malformed_operation", \
	[(base) + TOA_PS_MALFORMED + TOA_OPT_E_HDRLEN]	  = "malformed_hdrlen"

/*
 * The counter of the block for the result @rc of toa_parse_v{4,6}() on a
 * packet of family @outer; @a is read only if the option was found.
 */
static inline unsigned int toa_parse_stat(int rc, u16 outer,
					  const struct toa_addrs *a)
{
	if (rc == TOA_ABSENT)
		return TOA_PS_MISSING;
	if (rc < 0)
		return TOA_PS_MALFORMED - rc;
	return (outer == AF_INET ? TOA_PS_PARSED_V4_IN4 : TOA_PS_PARSED_V6_IN4) +
	       (a->family == AF_INET ? 0 : 1);
}

/* The sum over all CPUs of counter @s of a per-cpu array of counters. */
static inline unsigned long toa_stat_sum(const unsigned long __percpu *stats,
					 unsigned int s)
{
	unsigned long sum = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		sum += per_cpu_ptr(stats, cpu)[s];
	return sum;
}

/* "name value" lines of the @n counters of @stats that have a name. */
static inline void toa_stats_seq(struct seq_file *seq,
				 const char * const *names, unsigned int n,
				 const unsigned long __percpu *stats)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		if (names[i])
			seq_printf(seq, "%s %lu\n", names[i],
				   toa_stat_sum(stats, i));
}

/* /proc/net/@name of @net, shown by @show; 0 or -ENOMEM. */
static inline int toa_proc_create(struct net *net, const char *name,
				  int (*show)(struct seq_file *, void *))
{
	if (!proc_create_net_single(name, 0444, net->proc_net, show, NULL))
		return -ENOMEM;
	return 0;
}

/* ------------------------------------------------------------------ */
/* hash table                                                          */

struct toa_bucket {
	struct hlist_head head;
	spinlock_t lock;		/* writers; readers use RCU */
};

/*
 * 1 << *bits empty buckets, *bits being @param clamped to 4..20, or NULL.
 * Free with kvfree().
 */
static inline struct toa_bucket *toa_buckets_alloc(unsigned int param,
						   unsigned int *bits)
{
	struct toa_bucket *t;
	unsigned int i;

	*bits = clamp(param, 4U, 20U);
	t = kvcalloc(1U << *bits, sizeof(*t), GFP_KERNEL);
	if (!t)
		return NULL;
	for (i = 0; i < (1U << *bits); i++) {
		INIT_HLIST_HEAD(&t[i].head);
		spin_lock_init(&t[i].lock);
	}
	return t;
}

/* ------------------------------------------------------------------ */
/* getsockopt                                                          */

/* Fill @ep (as answered to the application) with an address of @family. */
static inline void toa_ep_fill(struct toa_ep *ep, u16 family, __be16 port,
			       const union toa_inaddr *ip)
{
	memset(ep, 0, sizeof(*ep));
	ep->family = family;
	ep->port = port;
	if (family == AF_INET)
		ep->addr.ip4 = ip->ip4;
	else
		memcpy(ep->addr.ip6, &ip->ip6, sizeof(ep->addr.ip6));
}

/* One of the pair of getsockopt ranges [base, max) of a module. */
#define TOA_SOCKOPT(_pf, _base, _max, _get) {				\
	.pf		= _pf,						\
	.set_optmin	= _base,					\
	.set_optmax	= _base,					\
	.get_optmin	= _base,					\
	.get_optmax	= _max,						\
	.get		= _get,						\
	.owner		= THIS_MODULE,					\
}

/* Register @ops[0] and @ops[1], both or neither. */
static inline int toa_register_sockopts(struct nf_sockopt_ops ops[2])
{
	int err;

	err = nf_register_sockopt(&ops[0]);
	if (err)
		return err;
	err = nf_register_sockopt(&ops[1]);
	if (err)
		nf_unregister_sockopt(&ops[0]);
	return err;
}

static inline void toa_unregister_sockopts(struct nf_sockopt_ops ops[2])
{
	nf_unregister_sockopt(&ops[1]);
	nf_unregister_sockopt(&ops[0]);
}

#endif /* _TOA_KERN_H */
