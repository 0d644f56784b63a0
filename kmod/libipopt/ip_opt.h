/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * ip_opt.h - put the TOA/UOA option on a socket (for L7 load balancers).
 *
 *   int fd = socket(AF_INET, SOCK_STREAM, 0);
 *   set_ip_opt(fd, AF_INET, (struct sockaddr *)&cip, (struct sockaddr *)&vip);
 *   connect(fd, ...);       // every packet of fd now carries the option
 *   send(fd, ...);          // the handshake's third packet has gone out
 *   del_ip_opt(fd, AF_INET);
 *
 * fd_family is the family of the packets the socket sends: AF_INET uses
 * setsockopt(IPPROTO_IP, IP_OPTIONS) with the IPv4 option, AF_INET6 uses
 * setsockopt(IPPROTO_IPV6, IPV6_DSTOPTS) with a Destination Options
 * header.  (An AF_INET6 socket talking to a v4-mapped address sends IPv4
 * packets: pass AF_INET.)  saddr is cip:cport, daddr vip:vport; both
 * struct sockaddr_in, or both struct sockaddr_in6 (the inner family).
 *
 * Both kernels' setsockopt want CAP_NET_RAW for these options (type 31 is
 * unknown to the IPv4 stack; IPV6_DSTOPTS always).
 *
 * Return 0, or -1 with errno set: EINVAL for bad arguments (NULL, saddr
 * and daddr of different families, a family that is neither AF_INET nor
 * AF_INET6), otherwise whatever setsockopt set (EPERM without CAP_NET_RAW).
 */
#ifndef _IP_OPT_H
#define _IP_OPT_H

#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

int set_ip_opt(int fd, int fd_family, struct sockaddr *saddr,
	       struct sockaddr *daddr);
int del_ip_opt(int fd, int fd_family);

/*
 * build_ip_opt - the bytes set_ip_opt would pass to setsockopt.
 * @l4proto: nexthdr of the IPv6 form (IPPROTO_TCP / IPPROTO_UDP; the
 *           kernel rewrites it on the wire anyway); unused for AF_INET.
 * Return: the length (16 or 40), or -1 with errno EINVAL (or ENOSPC if
 * @buflen is too small).
 */
int build_ip_opt(int fd_family, int l4proto, const struct sockaddr *saddr,
		 const struct sockaddr *daddr, void *buf, size_t buflen);

#ifdef __cplusplus
}
#endif

#endif /* _IP_OPT_H */
