/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * csum.h - Internet checksum (RFC 1071) helpers for XDP programs.
 *
 * All 16-bit arguments are in network byte order, as they sit in the packet:
 * one's complement arithmetic with end-around carry is byte-order
 * independent (RFC 1071 section 2(B)), so the same code is right on little-
 * and big-endian hosts as long as every operand has the same order.
 *
 * Two incremental forms are offered:
 *  - csum_replace2/csum_replace4: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'),
 *    for any change of a 16/32-bit field (what an LB rewriting addresses
 *    and ports needs);
 *  - csum_add_field: the "ip_decrease_ttl" form of the gateway-ping seed,
 *    HC' = HC + delta with end-around carry, for a data word that went
 *    *down* by delta (delta in network order).  It folds a result of 0xffff
 *    (-0) to 0x0000 (+0), which is exactly what a full recomputation gives,
 *    because a real packet never sums to zero.
 */
#ifndef TOALAB_CSUM_H
#define TOALAB_CSUM_H

#include "bpf_common.h"

/* Fold a 32-bit one's complement accumulator to 16 bits, not complemented. */
static __always_inline __u16 csum_fold_sum(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Fold and complement: the value to store in a checksum field. */
static __always_inline __sum16 csum_fold(__u32 sum)
{
	return (__sum16)~csum_fold_sum(sum);
}

/* RFC 1624 eqn. 3 for a 16-bit field going from @from to @to. */
static __always_inline void csum_replace2(__sum16 *sum, __be16 from, __be16 to)
{
	__u32 acc = (__u16)~*sum;

	acc += (__u16)~from;
	acc += to;
	*sum = csum_fold(acc);
}

/* RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address, two ports...). */
static __always_inline void csum_replace4(__sum16 *sum, __be32 from, __be32 to)
{
	__u32 acc = (__u16)~*sum;

	acc += (__u16)~(__u16)(from >> 16);
	acc += (__u16)~(__u16)(from & 0xffff);
	acc += (__u16)(to >> 16);
	acc += (__u16)(to & 0xffff);
	*sum = csum_fold(acc);
}

/*
 * The seed's update, as the kernel's ip_decrease_ttl() does it: a 16-bit
 * word of the covered data decreased by @delta (network order), so the
 * checksum field increases by it, with end-around carry.
 */
static __always_inline void csum_add_field(__sum16 *check, __be16 delta)
{
	__u32 c = (__u32)*check;

	c += (__u32)delta;
	*check = (__sum16)(c + (c >= 0xffff));
}

/* Checksum of a 20-byte IPv4 header without options (field zeroed first). */
static __always_inline __sum16 ipv4_hdr_csum20(const void *iph)
{
	const __u16 *w = iph;
	__u32 acc = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		acc += w[i];
	return csum_fold(acc);
}

#endif /* TOALAB_CSUM_H */
