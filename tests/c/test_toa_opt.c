// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * test_toa_opt - the TOA/UOA wire option on this host, without modules.
 *
 *  1. struct ip_option (toa_opt.h): size and offsets;
 *  2. golden byte vectors, written by hand from the design seed, for the
 *     four forms (outer IPv4/IPv6 x inner IPv4/IPv6), against a struct
 *     filled field by field and against build_ip_opt();
 *  3. toa_opt_check_v4 / toa_opt_check_v6: what they accept and refuse;
 *  4. set_ip_opt on real sockets, read back with getsockopt(IP_OPTIONS /
 *     IPV6_DSTOPTS), del_ip_opt clears, bad arguments give EINVAL;
 *  5. on the wire over loopback: UDP (IP_RECVOPTS / IPV6_RECVDSTOPTS)
 *     and TCP (AF_PACKET capture: SYN, third packet, first payload carry
 *     the option, a payload sent after del_ip_opt does not).
 *
 * Output is TAP; the last line is "N passed, M failed"; exit 1 on failure.
 * Parts 4 and 5 need CAP_NET_RAW (skipped, not failed, without it).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "toa_opt.h"
#include "ip_opt.h"

static int passed, failed, ntest;

static void ok(int cond, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void ok(int cond, const char *fmt, ...)
{
	va_list ap;

	printf("%s %d - ", cond ? "ok" : "not ok", ++ntest);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	if (cond)
		passed++;
	else
		failed++;
}

static void skip(const char *what)
{
	printf("ok %d # SKIP %s\n", ++ntest, what);
}

static void hexdump(const char *tag, const unsigned char *p, size_t n)
{
	size_t i;

	printf("# %s:", tag);
	for (i = 0; i < n; i++)
		printf(" %02x", p[i]);
	printf("\n");
}

static int same(const void *a, size_t alen, const void *b, size_t blen)
{
	if (alen == blen && !memcmp(a, b, alen))
		return 1;
	hexdump("got ", a, alen);
	hexdump("want", b, blen);
	return 0;
}

/* ------------------------------------------------------------------ */
/* golden vectors: cip 10.0.0.1 cport 1 vip 10.0.0.2 vport 2, and      */
/* cip 2001:db8::1 cport 1 vip 2001:db8::2 vport 2                     */

#define V6_CIP	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01
#define V6_VIP	0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02

/* IPv4 option, IPv4 inside: type 31, length 16, operation 0, padding 0 */
static const unsigned char gold_v4_in4[16] = {
	0x1f, 0x10, 0x00, 0x00,		/* type length operation padding */
	0x00, 0x01, 0x00, 0x02,		/* cport 1, vport 2 */
	0x0a, 0x00, 0x00, 0x01,		/* cip 10.0.0.1 */
	0x0a, 0x00, 0x00, 0x02,		/* vip 10.0.0.2 */
};

/* IPv4 option, IPv6 inside: length 40, operation bit 0 set */
static const unsigned char gold_v4_in6[40] = {
	0x1f, 0x28, 0x01, 0x00,
	0x00, 0x01, 0x00, 0x02,
	V6_CIP,
	V6_VIP,
};

/* IPv6 dstopt, IPv4 inside: nexthdr, hdrlen 1, option 31, optlen 12 */
static const unsigned char gold_v6_in4_tcp[16] = {
	0x06, 0x01, 0x1f, 0x0c,
	0x00, 0x01, 0x00, 0x02,
	0x0a, 0x00, 0x00, 0x01,
	0x0a, 0x00, 0x00, 0x02,
};

/* IPv6 dstopt, IPv6 inside: hdrlen 4, optlen 36 */
static const unsigned char gold_v6_in6_tcp[40] = {
	0x06, 0x04, 0x1f, 0x24,
	0x00, 0x01, 0x00, 0x02,
	V6_CIP,
	V6_VIP,
};

/* the expected bytes for a form; IPv6 nexthdr = @proto */
static size_t golden(int outer, int inner, int proto, unsigned char *buf)
{
	const unsigned char *g;
	size_t n;

	if (outer == AF_INET) {
		g = inner == AF_INET ? gold_v4_in4 : gold_v4_in6;
		n = inner == AF_INET ? sizeof(gold_v4_in4) : sizeof(gold_v4_in6);
	} else {
		g = inner == AF_INET ? gold_v6_in4_tcp : gold_v6_in6_tcp;
		n = inner == AF_INET ? sizeof(gold_v6_in4_tcp) :
				       sizeof(gold_v6_in6_tcp);
	}
	memcpy(buf, g, n);
	if (outer == AF_INET6)
		buf[0] = proto;
	return n;
}

static void endpoints(int inner, struct sockaddr_storage *c,
		      struct sockaddr_storage *v)
{
	struct sockaddr_in6 *c6 = (struct sockaddr_in6 *)c;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)v;
	struct sockaddr_in *c4 = (struct sockaddr_in *)c;
	struct sockaddr_in *v4 = (struct sockaddr_in *)v;

	memset(c, 0, sizeof(*c));
	memset(v, 0, sizeof(*v));
	if (inner == AF_INET) {
		c4->sin_family = v4->sin_family = AF_INET;
		inet_pton(AF_INET, "10.0.0.1", &c4->sin_addr);
		inet_pton(AF_INET, "10.0.0.2", &v4->sin_addr);
		c4->sin_port = htons(1);
		v4->sin_port = htons(2);
	} else {
		c6->sin6_family = v6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, "2001:db8::1", &c6->sin6_addr);
		inet_pton(AF_INET6, "2001:db8::2", &v6->sin6_addr);
		c6->sin6_port = htons(1);
		v6->sin6_port = htons(2);
	}
}

static const char *fam(int f)
{
	return f == AF_INET ? "ipv4" : "ipv6";
}

/* ------------------------------------------------------------------ */
/* 1. layout                                                           */

static void test_layout(void)
{
	struct ip_option o;

	ok(sizeof(struct ip_option) == 40, "sizeof(struct ip_option) == 40");
	ok(offsetof(struct ip_option, header) == 0, "header at 0");
	ok(offsetof(struct ip_option, sport) == 4, "sport at 4");
	ok(offsetof(struct ip_option, dport) == 6, "dport at 6");
	ok(offsetof(struct ip_option, addrs) == TOA_OPT_ADDR_OFFSET,
	   "addrs at %d", TOA_OPT_ADDR_OFFSET);
	ok((char *)&o.addrs.ipv4.daddr - (char *)&o == 12, "ipv4 daddr at 12");
	ok((char *)&o.addrs.ipv6.daddr - (char *)&o == 24, "ipv6 daddr at 24");
	ok((char *)&o.header.ipv4.operation - (char *)&o == 2 &&
	   (char *)&o.header.ipv6.optlen - (char *)&o == 3,
	   "header bytes: operation at 2, optlen at 3");
	ok(sizeof(gold_v4_in4) == TOA_OPT_LEN_INNER4 &&
	   sizeof(gold_v4_in6) == TOA_OPT_LEN_INNER6 &&
	   (TOA_DSTOPT_HDRLEN_INNER4 + 1) * 8 == TOA_OPT_LEN_INNER4 &&
	   (TOA_DSTOPT_HDRLEN_INNER6 + 1) * 8 == TOA_OPT_LEN_INNER6 &&
	   TOA_DSTOPT_OPTLEN_INNER4 + 4 == TOA_OPT_LEN_INNER4 &&
	   TOA_DSTOPT_OPTLEN_INNER6 + 4 == TOA_OPT_LEN_INNER6,
	   "length constants agree with each other and the vectors");
}

/* ------------------------------------------------------------------ */
/* 2. golden vectors                                                   */

static size_t by_fields(int outer, int inner, int proto, struct ip_option *o)
{
	int six = inner == AF_INET6;

	memset(o, 0, sizeof(*o));
	if (outer == AF_INET) {
		o->header.ipv4.type = IPV4_OPTION_TYPE;
		o->header.ipv4.length = six ? 40 : 16;
		o->header.ipv4.operation = six ? TOA_OP_INNER_IPV6 : 0;
	} else {
		o->header.ipv6.nexthdr = proto;
		o->header.ipv6.hdrlen = six ? 4 : 1;
		o->header.ipv6.option = IPV6_HEADER_OPTION;
		o->header.ipv6.optlen = six ? 36 : 12;
	}
	o->sport = htons(1);
	o->dport = htons(2);
	if (six) {
		inet_pton(AF_INET6, "2001:db8::1", o->addrs.ipv6.saddr);
		inet_pton(AF_INET6, "2001:db8::2", o->addrs.ipv6.daddr);
	} else {
		inet_pton(AF_INET, "10.0.0.1", o->addrs.ipv4.saddr);
		inet_pton(AF_INET, "10.0.0.2", o->addrs.ipv4.daddr);
	}
	return six ? 40 : 16;
}

static const int forms[4][2] = {
	{ AF_INET, AF_INET }, { AF_INET, AF_INET6 },
	{ AF_INET6, AF_INET }, { AF_INET6, AF_INET6 },
};

static void test_golden(void)
{
	struct sockaddr_storage c, v;
	unsigned char want[40], got[64];
	struct ip_option o;
	int i, len;
	size_t n;

	for (i = 0; i < 4; i++) {
		int outer = forms[i][0], inner = forms[i][1];

		n = golden(outer, inner, IPPROTO_TCP, want);
		len = by_fields(outer, inner, IPPROTO_TCP, &o);
		ok(same(&o, len, want, n), "struct by fields == golden, %s option, %s inside",
		   fam(outer), fam(inner));
		endpoints(inner, &c, &v);
		len = build_ip_opt(outer, IPPROTO_TCP, (struct sockaddr *)&c,
				   (struct sockaddr *)&v, got, sizeof(got));
		ok(len > 0 && same(got, len, want, n),
		   "build_ip_opt == golden, %s option, %s inside",
		   fam(outer), fam(inner));
	}
	endpoints(AF_INET6, &c, &v);
	errno = 0;
	ok(build_ip_opt(AF_INET, 0, (struct sockaddr *)&c,
			(struct sockaddr *)&v, got, 16) == -1 && errno == ENOSPC,
	   "build_ip_opt: short buffer -> ENOSPC");
}

/* ------------------------------------------------------------------ */
/* 3. validators                                                       */

struct check_case {
	const char *what;
	int v6;			/* toa_opt_check_v6 instead of _v4 */
	int base_outer, base_inner;
	int off, val;		/* poke byte @off (-1: none) */
	int len;		/* bytes available; 0: the form's length */
	enum toa_opt_err want;
	int want_inner6;
};

static const struct check_case check_cases[] = {
	{ "v4 in4 golden", 0, AF_INET, AF_INET, -1, 0, 0, TOA_OPT_OK, 0 },
	{ "v4 in6 golden", 0, AF_INET, AF_INET6, -1, 0, 0, TOA_OPT_OK, 1 },
	{ "v4 in4 with more bytes after", 0, AF_INET, AF_INET, -1, 0, 40,
	  TOA_OPT_OK, 0 },
	{ "v4 operation other bits ignored", 0, AF_INET, AF_INET, 2, 0x02, 0,
	  TOA_OPT_OK, 0 },
	{ "v4 len 0", 0, AF_INET, AF_INET, -1, 0, -1, TOA_OPT_E_TRUNCATED, 0 },
	{ "v4 len 1", 0, AF_INET, AF_INET, -1, 0, 1, TOA_OPT_E_TRUNCATED, 0 },
	{ "v4 in4 cut at 15", 0, AF_INET, AF_INET, -1, 0, 15,
	  TOA_OPT_E_TRUNCATED, 0 },
	{ "v4 in6 cut at 39", 0, AF_INET, AF_INET6, -1, 0, 39,
	  TOA_OPT_E_TRUNCATED, 0 },
	{ "v4 type 30", 0, AF_INET, AF_INET, 0, 30, 0, TOA_OPT_E_TYPE, 0 },
	{ "v4 type 0x9f (copied bit)", 0, AF_INET, AF_INET, 0, 0x9f, 0,
	  TOA_OPT_E_TYPE, 0 },
	{ "v4 length 12", 0, AF_INET, AF_INET, 1, 12, 0, TOA_OPT_E_LENGTH, 0 },
	{ "v4 length 20", 0, AF_INET, AF_INET, 1, 20, 0, TOA_OPT_E_LENGTH, 0 },
	{ "v4 length 16, operation 1", 0, AF_INET, AF_INET, 2, 1, 0,
	  TOA_OPT_E_OPERATION, 0 },
	{ "v4 length 40, operation 0", 0, AF_INET, AF_INET6, 2, 0, 0,
	  TOA_OPT_E_OPERATION, 0 },
	{ "v6 in4 golden", 1, AF_INET6, AF_INET, -1, 0, 0, TOA_OPT_OK, 0 },
	{ "v6 in6 golden", 1, AF_INET6, AF_INET6, -1, 0, 0, TOA_OPT_OK, 1 },
	{ "v6 nexthdr 17 (udp)", 1, AF_INET6, AF_INET, 0, 17, 0, TOA_OPT_OK, 0 },
	{ "v6 len 3", 1, AF_INET6, AF_INET, -1, 0, 3, TOA_OPT_E_TRUNCATED, 0 },
	{ "v6 in4 cut at 15", 1, AF_INET6, AF_INET, -1, 0, 15,
	  TOA_OPT_E_TRUNCATED, 0 },
	{ "v6 in6 cut at 39", 1, AF_INET6, AF_INET6, -1, 0, 39,
	  TOA_OPT_E_TRUNCATED, 0 },
	{ "v6 option 30", 1, AF_INET6, AF_INET, 2, 30, 0, TOA_OPT_E_TYPE, 0 },
	{ "v6 PadN first", 1, AF_INET6, AF_INET, 2, 1, 0, TOA_OPT_E_TYPE, 0 },
	{ "v6 optlen 13", 1, AF_INET6, AF_INET, 3, 13, 0, TOA_OPT_E_LENGTH, 0 },
	{ "v6 optlen 36 in hdrlen 1", 1, AF_INET6, AF_INET, 3, 36, 0,
	  TOA_OPT_E_HDRLEN, 0 },
	{ "v6 optlen 12 in hdrlen 4", 1, AF_INET6, AF_INET6, 3, 12, 0,
	  TOA_OPT_E_HDRLEN, 0 },
	{ "v6 hdrlen 2 (24 bytes, 16 given)", 1, AF_INET6, AF_INET, 1, 2, 0,
	  TOA_OPT_E_TRUNCATED, 0 },
	{ "v6 hdrlen 2 (24 bytes given)", 1, AF_INET6, AF_INET, 1, 2, 24,
	  TOA_OPT_E_HDRLEN, 0 },
};

static void test_checks(void)
{
	unsigned char buf[64];
	unsigned int i;

	for (i = 0; i < sizeof(check_cases) / sizeof(check_cases[0]); i++) {
		const struct check_case *t = &check_cases[i];
		enum toa_opt_err err;
		int inner6 = -1;
		size_t n;
		int len;

		memset(buf, 0, sizeof(buf));
		n = golden(t->base_outer, t->base_inner, IPPROTO_TCP, buf);
		if (t->off >= 0)
			buf[t->off] = t->val;
		len = t->len == 0 ? (int)n : t->len < 0 ? 0 : t->len;
		if (t->v6)
			err = toa_opt_check_v6((struct ip_option *)buf, len,
					       &inner6);
		else
			err = toa_opt_check_v4((struct ip_option *)buf, len,
					       &inner6);
		ok(err == t->want &&
		   (err != TOA_OPT_OK || inner6 == t->want_inner6),
		   "check: %s -> %d (want %d), inner6 %d", t->what, err,
		   t->want, inner6);
	}
}

/* ------------------------------------------------------------------ */
/* 4. set_ip_opt / del_ip_opt on sockets                               */

static int have_net_raw = 1;

static size_t read_back(int fd, int outer, unsigned char *buf, size_t n)
{
	socklen_t len = n;
	int r;

	if (outer == AF_INET)
		r = getsockopt(fd, IPPROTO_IP, IP_OPTIONS, buf, &len);
	else
		r = getsockopt(fd, IPPROTO_IPV6, IPV6_DSTOPTS, buf, &len);
	return r ? (size_t)-1 : len;
}

static void test_sockets_one(int outer, int inner, int type)
{
	int proto = type == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP;
	const char *pname = type == SOCK_STREAM ? "tcp" : "udp";
	struct sockaddr_storage c, v;
	unsigned char want[40], got[64];
	size_t n, len;
	int fd, r;

	fd = socket(outer, type, 0);
	if (fd < 0) {
		skip("socket() failed");
		return;
	}
	endpoints(inner, &c, &v);
	n = golden(outer, inner, proto, want);
	r = set_ip_opt(fd, outer, (struct sockaddr *)&c, (struct sockaddr *)&v);
	if (r && errno == EPERM) {
		have_net_raw = 0;
		skip("set_ip_opt: EPERM, no CAP_NET_RAW");
		close(fd);
		return;
	}
	ok(r == 0, "set_ip_opt %s %s fd, %s inside: %s", fam(outer), pname,
	   fam(inner), r ? strerror(errno) : "0");
	len = read_back(fd, outer, got, sizeof(got));
	ok(len == n && same(got, len, want, n),
	   "read back == golden (%s %s fd, %s inside)", fam(outer), pname,
	   fam(inner));
	r = del_ip_opt(fd, outer);
	len = read_back(fd, outer, got, sizeof(got));
	ok(r == 0 && len == 0, "del_ip_opt clears (%s %s fd, %s inside)",
	   fam(outer), pname, fam(inner));
	close(fd);
}

static void test_sockets(void)
{
	struct sockaddr_storage c4, v4, c6, v6;
	int i, fd;

	for (i = 0; i < 4; i++) {
		test_sockets_one(forms[i][0], forms[i][1], SOCK_STREAM);
		test_sockets_one(forms[i][0], forms[i][1], SOCK_DGRAM);
	}

	endpoints(AF_INET, &c4, &v4);
	endpoints(AF_INET6, &c6, &v6);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	errno = 0;
	ok(set_ip_opt(fd, AF_INET, (struct sockaddr *)&c4,
		      (struct sockaddr *)&v6) == -1 && errno == EINVAL,
	   "set_ip_opt: saddr/daddr families differ -> EINVAL");
	errno = 0;
	ok(set_ip_opt(fd, AF_INET, NULL, (struct sockaddr *)&v4) == -1 &&
	   errno == EINVAL, "set_ip_opt: NULL saddr -> EINVAL");
	errno = 0;
	ok(set_ip_opt(fd, AF_UNIX, (struct sockaddr *)&c4,
		      (struct sockaddr *)&v4) == -1 && errno == EINVAL,
	   "set_ip_opt: fd_family AF_UNIX -> EINVAL");
	c4.ss_family = AF_UNIX;
	v4.ss_family = AF_UNIX;
	errno = 0;
	ok(set_ip_opt(fd, AF_INET, (struct sockaddr *)&c4,
		      (struct sockaddr *)&v4) == -1 && errno == EINVAL,
	   "set_ip_opt: inner family AF_UNIX -> EINVAL");
	errno = 0;
	ok(del_ip_opt(fd, 12345) == -1 && errno == EINVAL,
	   "del_ip_opt: bad family -> EINVAL");
	close(fd);
}

/* ------------------------------------------------------------------ */
/* 5. on the wire, over loopback                                       */

static int bound_socket(int family, int type, struct sockaddr_storage *ss,
			socklen_t *len)
{
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	int fd = socket(family, type, 0);

	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		s4->sin_family = AF_INET;
		s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		*len = sizeof(*s4);
	} else {
		s6->sin6_family = AF_INET6;
		s6->sin6_addr = in6addr_loopback;
		*len = sizeof(*s6);
	}
	if (fd < 0 || bind(fd, (struct sockaddr *)ss, *len) ||
	    getsockname(fd, (struct sockaddr *)ss, len)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* a UDP datagram with the option; the receiver's ancillary data */
static void test_wire_udp(int outer, int inner)
{
	struct sockaddr_storage srv, c, v;
	unsigned char want[40], data[16];
	union { char b[512]; struct cmsghdr a; } cbuf;
	int one = 1, rfd, sfd, found = 0;
	struct iovec iov = { data, sizeof(data) };
	struct msghdr mh;
	struct cmsghdr *cm;
	struct pollfd p;
	socklen_t slen;
	size_t n;

	rfd = bound_socket(outer, SOCK_DGRAM, &srv, &slen);
	sfd = socket(outer, SOCK_DGRAM, 0);
	if (rfd < 0 || sfd < 0) {
		skip("udp loopback sockets");
		goto out;
	}
	if (outer == AF_INET)
		setsockopt(rfd, IPPROTO_IP, IP_RECVOPTS, &one, sizeof(one));
	else
		setsockopt(rfd, IPPROTO_IPV6, IPV6_RECVDSTOPTS, &one,
			   sizeof(one));
	endpoints(inner, &c, &v);
	n = golden(outer, inner, IPPROTO_UDP, want);
	if (set_ip_opt(sfd, outer, (struct sockaddr *)&c,
		       (struct sockaddr *)&v) ||
	    sendto(sfd, "x", 1, 0, (struct sockaddr *)&srv, slen) != 1) {
		ok(0, "udp send with option: %s", strerror(errno));
		goto out;
	}
	p.fd = rfd;
	p.events = POLLIN;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf.b;
	mh.msg_controllen = sizeof(cbuf.b);
	if (poll(&p, 1, 2000) != 1 || recvmsg(rfd, &mh, 0) != 1) {
		ok(0, "udp datagram received");
		goto out;
	}
	for (cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		size_t dl = cm->cmsg_len - CMSG_LEN(0);

		if ((outer == AF_INET && cm->cmsg_level == IPPROTO_IP &&
		     cm->cmsg_type == IP_RECVOPTS) ||
		    (outer == AF_INET6 && cm->cmsg_level == IPPROTO_IPV6 &&
		     cm->cmsg_type == IPV6_DSTOPTS))
			found = same(CMSG_DATA(cm), dl, want, n);
	}
	ok(found, "udp on the wire: %s packet carries the golden %s-inside option",
	   fam(outer), fam(inner));
out:
	if (rfd >= 0)
		close(rfd);
	if (sfd >= 0)
		close(sfd);
}

/* what the capture saw of the client's packets */
struct seen {
	int syn, syn_opt;	/* SYN seen, with the option */
	int ack, ack_opt;	/* first packet after the SYN (the 3rd) */
	int data1, data1_opt;	/* payload "1": sent before del_ip_opt */
	int data2, data2_opt;	/* payload "2": sent after del_ip_opt */
};

/* Find the option in an IPv4 / IPv6 packet; return the TCP header. */
static const unsigned char *tcp_of(const unsigned char *p, size_t n,
				   const unsigned char *want, size_t wn,
				   int *has_opt, size_t *tcplen)
{
	size_t hl;

	*has_opt = 0;
	if (n >= 20 && (p[0] >> 4) == 4 && p[9] == IPPROTO_TCP) {
		hl = (p[0] & 15) * 4;
		if (hl > n)
			return NULL;
		/* our option is the only one set, so it starts at 20 */
		*has_opt = hl - 20 == wn && !memcmp(p + 20, want, wn);
		*tcplen = n - hl;
		return p + hl;
	}
	if (n >= 40 && (p[0] >> 4) == 6) {
		hl = 40;
		if (p[6] == IPV6_HEADER_DST && n >= 48) {
			size_t el = (p[41] + 1) * 8;

			*has_opt = el == wn && hl + el <= n &&
				   !memcmp(p + 40, want, wn);
			if (p[40] != IPPROTO_TCP)
				return NULL;
			hl += el;
		} else if (p[6] != IPPROTO_TCP) {
			return NULL;
		}
		if (hl > n)
			return NULL;
		*tcplen = n - hl;
		return p + hl;
	}
	return NULL;
}

static void classify(struct seen *s, const unsigned char *p, size_t n,
		     unsigned short cport, const unsigned char *want, size_t wn)
{
	const unsigned char *th;
	size_t tl, doff;
	int opt;

	th = tcp_of(p, n, want, wn, &opt, &tl);
	if (!th || tl < 20 || ((th[0] << 8) | th[1]) != cport)
		return;
	doff = (th[12] >> 4) * 4;
	if (th[13] & 0x02) {			/* SYN */
		s->syn = 1;
		s->syn_opt = opt;
		return;
	}
	if (s->syn && !s->ack) {		/* the third packet */
		s->ack = 1;
		s->ack_opt = opt;
	}
	if (tl > doff && th[doff] == '1') {
		s->data1 = 1;
		s->data1_opt = opt;
	}
	if (tl > doff && th[doff] == '2') {
		s->data2 = 1;
		s->data2_opt = opt;
	}
}

static void capture(int cap, struct seen *s, unsigned short cport,
		    const unsigned char *want, size_t wn)
{
	unsigned char pkt[2048];
	struct sockaddr_ll sll;
	socklen_t sl;
	ssize_t r;

	for (;;) {
		sl = sizeof(sll);
		r = recvfrom(cap, pkt, sizeof(pkt), MSG_DONTWAIT,
			     (struct sockaddr *)&sll, &sl);
		if (r < 0)
			break;
		if (sll.sll_pkttype == PACKET_OUTGOING)
			continue;	/* lo shows each packet twice */
		classify(s, pkt, r, cport, want, wn);
	}
}

static int open_capture(void)
{
	struct sockaddr_ll sll;
	int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL));

	if (fd < 0)
		return -1;
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = if_nametoindex("lo");
	if (!sll.sll_ifindex ||
	    bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		close(fd);
		return -1;
	}
	return fd;
}

static void pause_ms(long ms)
{
	struct timespec ts = { 0, ms * 1000000L };

	nanosleep(&ts, NULL);
}

static void test_wire_tcp(int outer, int inner)
{
	struct sockaddr_storage srv, me, c, v;
	int lfd = -1, fd = -1, cap, one = 1;
	unsigned char want[40];
	socklen_t slen, mlen = sizeof(me);
	unsigned short cport;
	struct seen s;
	size_t n;

	cap = open_capture();
	if (cap < 0) {
		skip("AF_PACKET capture on lo");
		return;
	}
	lfd = bound_socket(outer, SOCK_STREAM, &srv, &slen);
	fd = socket(outer, SOCK_STREAM, 0);
	if (lfd < 0 || fd < 0 || listen(lfd, 4)) {
		skip("tcp loopback sockets");
		goto out;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	endpoints(inner, &c, &v);
	n = golden(outer, inner, IPPROTO_TCP, want);
	if (set_ip_opt(fd, outer, (struct sockaddr *)&c,
		       (struct sockaddr *)&v) ||
	    connect(fd, (struct sockaddr *)&srv, slen) ||
	    send(fd, "1", 1, 0) != 1) {
		ok(0, "tcp connect with option: %s", strerror(errno));
		goto out;
	}
	pause_ms(50);
	ok(del_ip_opt(fd, outer) == 0, "tcp del_ip_opt after the handshake");
	send(fd, "2", 1, 0);
	pause_ms(100);
	getsockname(fd, (struct sockaddr *)&me, &mlen);
	cport = ntohs(me.ss_family == AF_INET ?
		      ((struct sockaddr_in *)&me)->sin_port :
		      ((struct sockaddr_in6 *)&me)->sin6_port);
	memset(&s, 0, sizeof(s));
	capture(cap, &s, cport, want, n);
	ok(s.syn && s.syn_opt, "tcp %s/%s: SYN carries the option",
	   fam(outer), fam(inner));
	ok(s.ack && s.ack_opt, "tcp %s/%s: third packet carries the option",
	   fam(outer), fam(inner));
	ok(s.data1 && s.data1_opt,
	   "tcp %s/%s: payload sent before del_ip_opt carries it",
	   fam(outer), fam(inner));
	ok(s.data2 && !s.data2_opt,
	   "tcp %s/%s: payload sent after del_ip_opt does not",
	   fam(outer), fam(inner));
out:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
	close(cap);
}

static void test_wire(void)
{
	int i;

	if (!have_net_raw) {
		skip("on the wire: no CAP_NET_RAW");
		return;
	}
	for (i = 0; i < 4; i++)
		test_wire_udp(forms[i][0], forms[i][1]);
	for (i = 0; i < 4; i++)
		test_wire_tcp(forms[i][0], forms[i][1]);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n");
	test_layout();
	test_golden();
	test_checks();
	test_sockets();
	test_wire();
	printf("1..%d\n", ntest);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
