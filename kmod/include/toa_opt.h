/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * toa_opt.h - the TOA/UOA address option, defined once.
 *
 * A fullnat load balancer replaces cip:cport -> vip:vport with
 * lip:lport -> rip:rport and tells the real server the original four
 * values in an IP-level option:
 *
 *   outer IPv4: IPv4 option type 31
 *     0 type(31) 1 length(16|40) 2 operation(bit0: inner IPv6) 3 padding(0)
 *   outer IPv6: a Destination Options header (IPv6 nexthdr 60)
 *     0 nexthdr 1 hdrlen(1|4) 2 option type(31) 3 option length(12|36)
 *   then, in both forms:
 *     4 sport(cport) 6 dport(vport) 8 saddr(cip) 8+n daddr(vip)
 *
 * All multi-byte fields are big endian.  The layout is the one of the
 * design seed; this header is included by the kernel modules, the BPF
 * programs and the userspace library, and lab/wire.py is tested against
 * the same vectors.
 *
 * Only <linux/types.h> is needed, so that kernel, BPF and userspace code
 * can all include it.
 */
#ifndef _TOA_OPT_H
#define _TOA_OPT_H

#include <linux/types.h>

#define IPV4_OPTION_TYPE	31
#define IPV6_HEADER_DST		60
#define IPV6_HEADER_OPTION	31

/* operation bit 0: the addresses inside are IPv6 */
#define TOA_OP_INNER_IPV6	0x01

/* whole option (IPv4) or whole extension header (IPv6), in bytes */
#define TOA_OPT_LEN_INNER4	16
#define TOA_OPT_LEN_INNER6	40
/* IPv6 Destination Options: hdrlen in 8-octet units, not counting the first */
#define TOA_DSTOPT_HDRLEN_INNER4 1
#define TOA_DSTOPT_HDRLEN_INNER6 4
/* IPv6 option data length: ports and addresses */
#define TOA_DSTOPT_OPTLEN_INNER4 12
#define TOA_DSTOPT_OPTLEN_INNER6 36

/* bytes before the addresses: 4 bytes of header, cport, vport */
#define TOA_OPT_ADDR_OFFSET	8

union two_addr {
	struct {
		unsigned char saddr[4];
		unsigned char daddr[4];
	} ipv4;
	struct {
		unsigned char saddr[16];
		unsigned char daddr[16];
	} ipv6;
};

struct ip_option {
	union {
		struct {
			__u8 type;
			__u8 length;
			__u8 operation;
			__u8 padding;
		} ipv4;
		struct {
			__u8 nexthdr;
			__u8 hdrlen;
			__u8 option;
			__u8 optlen;
		} ipv6;
	} header;

	__be16 sport, dport;

	union two_addr addrs;
} __attribute__((packed));

/* Reasons a candidate option is refused; the modules count them. */
enum toa_opt_err {
	TOA_OPT_OK = 0,
	TOA_OPT_E_TRUNCATED,	/* fewer bytes than the option claims */
	TOA_OPT_E_TYPE,		/* not type 31 */
	TOA_OPT_E_LENGTH,	/* length is neither 16 nor 40 */
	TOA_OPT_E_OPERATION,	/* operation bit disagrees with the length */
	TOA_OPT_E_HDRLEN,	/* IPv6 hdrlen disagrees with the option length */
	TOA_OPT_E_MAX,
};

/*
 * toa_opt_check_v4 - validate an IPv4-form option.
 * @o:   start of the option (its type byte)
 * @len: bytes available from @o
 *
 * Return: TOA_OPT_OK with *@inner6 set to whether the addresses inside are
 * IPv6, or the reason it was refused.  The caller must guarantee that
 * @len bytes are readable.
 */
static inline enum toa_opt_err
toa_opt_check_v4(const struct ip_option *o, unsigned int len, int *inner6)
{
	int six;

	if (len < 2)
		return TOA_OPT_E_TRUNCATED;
	if (o->header.ipv4.type != IPV4_OPTION_TYPE)
		return TOA_OPT_E_TYPE;
	if (o->header.ipv4.length != TOA_OPT_LEN_INNER4 &&
	    o->header.ipv4.length != TOA_OPT_LEN_INNER6)
		return TOA_OPT_E_LENGTH;
	if (len < o->header.ipv4.length)
		return TOA_OPT_E_TRUNCATED;
	six = o->header.ipv4.length == TOA_OPT_LEN_INNER6;
	if (!!(o->header.ipv4.operation & TOA_OP_INNER_IPV6) != six)
		return TOA_OPT_E_OPERATION;
	*inner6 = six;
	return TOA_OPT_OK;
}

/*
 * toa_opt_check_v6 - validate an IPv6 Destination Options header that
 * carries the option as its only option.
 * @o:   start of the extension header (its nexthdr byte)
 * @len: bytes available from @o
 */
static inline enum toa_opt_err
toa_opt_check_v6(const struct ip_option *o, unsigned int len, int *inner6)
{
	unsigned int total;
	int six;

	if (len < 4)
		return TOA_OPT_E_TRUNCATED;
	total = (o->header.ipv6.hdrlen + 1u) * 8u;
	if (len < total)
		return TOA_OPT_E_TRUNCATED;
	if (o->header.ipv6.option != IPV6_HEADER_OPTION)
		return TOA_OPT_E_TYPE;
	if (o->header.ipv6.optlen == TOA_DSTOPT_OPTLEN_INNER4)
		six = 0;
	else if (o->header.ipv6.optlen == TOA_DSTOPT_OPTLEN_INNER6)
		six = 1;
	else
		return TOA_OPT_E_LENGTH;
	if (o->header.ipv6.hdrlen !=
	    (six ? TOA_DSTOPT_HDRLEN_INNER6 : TOA_DSTOPT_HDRLEN_INNER4))
		return TOA_OPT_E_HDRLEN;
	*inner6 = six;
	return TOA_OPT_OK;
}

#endif /* _TOA_OPT_H */
