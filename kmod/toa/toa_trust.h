/* SPDX-License-Identifier: GPL-2.0 */
/*
 * toa_trust.h - who may tell a real server who its client is (toa.ko and
 * uoa.ko; kernel only).
 *
 * The option is believed only when the packet carrying it comes from a
 * trusted source: the LB's local addresses.  The module parameter
 * `trusted` is a comma-separated list of IPv4 and IPv6 prefixes
 * ("192.0.2.0/24,2001:db8:5::/64", a bare address meaning /32 or /128),
 * set at insmod and changeable at run time through
 * /sys/module/<module>/parameters/trusted.  Empty, the default, trusts
 * every source (what DPVS's modules do, and what a module loaded without
 * thought keeps doing); "none" trusts none.  A packet whose option comes
 * from elsewhere is counted (untrusted) and its option ignored: the socket
 * keeps the addresses the kernel gave it.  The list is global, not per
 * network namespace: it describes the LBs in front of this host.
 */
#ifndef _TOA_TRUST_H
#define _TOA_TRUST_H

#include <linux/inet.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/moduleparam.h>
#include <linux/seqlock.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/string.h>

#define TOA_TRUST_MAX	16
#define TOA_TRUST_TEXT	320

struct toa_prefix {
	u8 addr[16];
	u8 len;		/* address bytes: 4 or 16 */
	u8 plen;	/* prefix length in bits */
};

struct toa_trust {
	seqlock_t lock;
	int n;		/* -1: trust none, 0: trust all */
	struct toa_prefix p[TOA_TRUST_MAX];
	char text[TOA_TRUST_TEXT];
};

static inline bool toa_prefix_match(const struct toa_prefix *p, const u8 *a, int len)
{
	int full = p->plen / 8, rest = p->plen % 8;

	if (p->len != len || memcmp(p->addr, a, full))
		return false;
	return !rest || !((p->addr[full] ^ a[full]) & (u8)(0xff << (8 - rest)));
}

/* Whether the outer source of @skb (IPv4 or IPv6, by @family) may set the option. */
static inline bool toa_trusted(struct toa_trust *t, const struct sk_buff *skb, u16 family)
{
	const u8 *a;
	unsigned int seq;
	bool ok;
	int i, len;

	if (family == AF_INET) {
		a = (const u8 *)&ip_hdr(skb)->saddr;
		len = 4;
	} else {
		a = (const u8 *)&ipv6_hdr(skb)->saddr;
		len = 16;
	}
	do {
		seq = read_seqbegin(&t->lock);
		ok = t->n == 0;
		for (i = 0; i < t->n && i < TOA_TRUST_MAX && !ok; i++)
			ok = toa_prefix_match(&t->p[i], a, len);
	} while (read_seqretry(&t->lock, seq));
	return ok;
}

/* One prefix ("192.0.2.0/24", "2001:db8::/64", an address); 0 or -EINVAL. */
static inline int toa_prefix_parse(const char *s, size_t n, struct toa_prefix *p)
{
	char buf[INET6_ADDRSTRLEN + 5];
	const char *slash, *end;
	unsigned int plen;
	int i, full, rest;

	if (!n || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, s, n);
	buf[n] = '\0';
	slash = strchr(buf, '/');
	memset(p, 0, sizeof(*p));
	if (in4_pton(buf, slash ? slash - buf : -1, p->addr, '/', &end) == 1 && (!slash || end == slash))
		p->len = 4;
	else if (in6_pton(buf, slash ? slash - buf : -1, p->addr, '/', &end) == 1 && (!slash || end == slash))
		p->len = 16;
	else
		return -EINVAL;
	plen = p->len * 8;
	if (slash && (kstrtouint(slash + 1, 10, &plen) || plen > p->len * 8u))
		return -EINVAL;
	p->plen = plen;
	/* the host bits of the prefix are zeroed: 192.0.2.7/24 is 192.0.2.0/24 */
	full = plen / 8;
	rest = plen % 8;
	if (full < p->len)
		p->addr[full] &= rest ? (u8)(0xff << (8 - rest)) : 0;
	for (i = full + 1; i < p->len; i++)
		p->addr[i] = 0;
	return 0;
}

/* The parameter's setter: the whole list or nothing (-EINVAL names the bad item). */
static inline int toa_trust_set(const char *val, const struct kernel_param *kp)
{
	struct toa_trust *t = kp->arg;
	struct toa_prefix *ps;
	const char *s = val, *comma;
	size_t len = strcspn(val, "\n");
	int n = 0, err = 0;

	if (len >= TOA_TRUST_TEXT)
		return -EINVAL;
	ps = kcalloc(TOA_TRUST_MAX, sizeof(*ps), GFP_KERNEL);
	if (!ps)
		return -ENOMEM;
	if (len == 4 && !strncmp(val, "none", 4)) {
		n = -1;
		goto store;
	}
	while (s < val + len) {
		comma = memchr(s, ',', val + len - s);
		if (!comma)
			comma = val + len;
		if (n == TOA_TRUST_MAX || toa_prefix_parse(s, comma - s, &ps[n])) {
			pr_warn("trusted: '%.*s' is not an address or prefix (at most %d of them: "
				"192.0.2.0/24,2001:db8::/64, or none)\n", (int)(comma - s), s, TOA_TRUST_MAX);
			err = -EINVAL;
			goto out;
		}
		n++;
		s = comma + 1;
	}
store:
	write_seqlock_bh(&t->lock);
	t->n = n;
	memcpy(t->p, ps, sizeof(t->p));
	memcpy(t->text, val, len);
	t->text[len] = '\0';
	write_sequnlock_bh(&t->lock);
out:
	kfree(ps);
	return err;
}

static inline int toa_trust_get(char *buf, const struct kernel_param *kp)
{
	struct toa_trust *t = kp->arg;
	unsigned int seq;
	int n;

	do {
		seq = read_seqbegin(&t->lock);
		n = scnprintf(buf, PAGE_SIZE, "%s\n", t->text);
	} while (read_seqretry(&t->lock, seq));
	return n;
}

static const struct kernel_param_ops toa_trust_ops = {
	.set = toa_trust_set,
	.get = toa_trust_get,
};

/* The `trusted` parameter of a module, backed by @var. */
#define TOA_TRUST_PARAM(var)							\
	static struct toa_trust var = { .lock = __SEQLOCK_UNLOCKED(var.lock) };	\
	module_param_cb(trusted, &toa_trust_ops, &var, 0644);			\
	MODULE_PARM_DESC(trusted, "LB source prefixes whose option is believed, "	\
			 "comma-separated (empty: every source; none: no source)")

#endif /* _TOA_TRUST_H */
