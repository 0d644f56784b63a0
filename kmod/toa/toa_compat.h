/* SPDX-License-Identifier: GPL-2.0 */
/*
 * toa_compat.h - what toa.ko assumes of the kernel, checked in one place.
 *
 * The getname hook redirects inet_getname / inet6_getname through ftrace
 * and reads the hooked functions' arguments from pt_regs by position, so
 * it is x86-64 code that needs ftrace with regs and kprobes; a kernel
 * without them fails the build here, not at run time.  The prototypes the
 * module relies on are checked against the kernel's own declarations.
 *
 * One thing differs between the kernels toa.ko is tested on (6.1, 6.12):
 * indirect branch tracking.  6.12 is built with CONFIG_X86_KERNEL_IBT;
 * on a CPU that enforces it, an indirect call must land on an ENDBR, which
 * only a function's first instruction is.  The wrapper then calls the
 * original by its exported symbol (the hook sees a call from this module
 * and lets it through: one extra ftrace callback per rewritten call);
 * elsewhere it jumps past the fentry call site and skips the callback.
 */
#ifndef _TOA_COMPAT_H
#define _TOA_COMPAT_H

#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/net.h>
#include <linux/string.h>
#include <net/inet_common.h>
#include <net/ipv6.h>
#include <net/tcp.h>
#include <asm/cpufeature.h>

#if !defined(CONFIG_X86_64)
#error "toa.ko: the getname hook reads x86-64 registers (pt_regs); other architectures are not supported"
#endif
#if !defined(CONFIG_DYNAMIC_FTRACE_WITH_REGS)
#error "toa.ko: the getname hook needs CONFIG_DYNAMIC_FTRACE_WITH_REGS"
#endif
#if !defined(CONFIG_KPROBES) || !defined(CONFIG_KRETPROBES)
#error "toa.ko: the handshake and destroy hooks need CONFIG_KPROBES and CONFIG_KRETPROBES"
#endif
#if !IS_ENABLED(CONFIG_IPV6)
#error "toa.ko: needs IPv6 (it hooks inet6_getname and reads IPv6 options)"
#endif
#if defined(CONFIG_CFI_CLANG)
#error "toa.ko: kCFI would reject the redirected getname call; build without CONFIG_CFI_CLANG"
#endif

/* int inet{,6}_getname(struct socket *sock, struct sockaddr *uaddr, int peer) */
typedef int (*toa_getname_t)(struct socket *sock, struct sockaddr *uaddr,
			     int peer);

static_assert(__same_type(&inet_getname, toa_getname_t),
	      "inet_getname's prototype changed: update toa_getname_t");
static_assert(__same_type(&inet6_getname, toa_getname_t),
	      "inet6_getname's prototype changed: update toa_getname_t");

/*
 * The kretprobes read argument 1 (skb) and 5 (own_req) of
 * tcp_v{4,6}_syn_recv_sock.  Upstream has six arguments; Debian's 6.1 and
 * 6.12 builds carry a seventh (opt_child_init) after them.  Either shape
 * keeps those two where the probe reads them.
 */
#define TOA_SYN_RECV_ARGS						\
	const struct sock *, struct sk_buff *, struct request_sock *,	\
	struct dst_entry *, struct request_sock *, bool *
static_assert(__same_type(&tcp_v4_syn_recv_sock,
			  struct sock *(*)(TOA_SYN_RECV_ARGS)) ||
	      __same_type(&tcp_v4_syn_recv_sock,
			  struct sock *(*)(TOA_SYN_RECV_ARGS,
					   void (*)(struct sock *,
						    const struct sock *))),
	      "tcp_v4_syn_recv_sock's arguments moved: update toa_syn_entry");
#undef TOA_SYN_RECV_ARGS

/* True when an indirect call past a function's first instruction would fault. */
static inline bool toa_ibt_enforced(void)
{
#ifdef CONFIG_X86_KERNEL_IBT
	return cpu_feature_enabled(X86_FEATURE_IBT);
#else
	return false;
#endif
}

/*
 * What the wrapper calls to run the original getname whose fentry call
 * site is @site: past that site (the hook does not fire again), or, where
 * IBT is enforced, @exported itself.
 */
static inline toa_getname_t toa_getname_orig(unsigned long site,
					     toa_getname_t exported)
{
	if (toa_ibt_enforced())
		return exported;
	return (toa_getname_t)(site + MCOUNT_INSN_SIZE);
}

/*
 * The fentry call site of the function at @fn, or 0 where there is none:
 * its first instruction, or the one after an ENDBR64 (f3 0f 1e fa, the
 * first instruction of every indirectly called function on IBT kernels).
 * The site holds the 5-byte NOP ftrace leaves there, a call while some
 * tracer uses it, or an int3 while one is being patched in.
 */
static inline unsigned long toa_fentry_site(unsigned long fn)
{
	static const u8 endbr64[] = { 0xf3, 0x0f, 0x1e, 0xfa };
	static const u8 nop5[] = { 0x0f, 0x1f, 0x44, 0x00, 0x00 };
	const u8 *p = (const u8 *)fn;

	if (!memcmp(p, endbr64, sizeof(endbr64)))
		p += sizeof(endbr64);
	if (memcmp(p, nop5, sizeof(nop5)) && p[0] != 0xe8 && p[0] != 0xcc)
		return 0;
	return (unsigned long)p;
}

#endif /* _TOA_COMPAT_H */
