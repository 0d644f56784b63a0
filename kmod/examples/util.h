/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* util.h - small helpers shared by the example programs. */
#ifndef _EXAMPLES_UTIL_H
#define _EXAMPLES_UTIL_H

#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>

#include "toa.h"
#include "uoa.h"

extern int json_mode;			/* --json: one object per line */
extern volatile sig_atomic_t stop;	/* set by SIGTERM / SIGINT */

/* "10.0.0.1:1", "[2001:db8::1]:1", "2001:db8::1" (port 0), "10.0.0.1" */
int parse_addr_port(const char *s, struct sockaddr_storage *ss);
/* host and port separately (the CLI's "HOST PORT") */
int parse_host(const char *host, const char *port, struct sockaddr_storage *ss);
socklen_t ss_len(const struct sockaddr_storage *ss);

/* "ipv4: 10.0.0.1:1" / "ipv6: [2001:db8::1]:1" */
void fmt_text(char *buf, size_t n, const struct sockaddr *sa);
/* {"family":"ipv4","addr":"10.0.0.1","port":1} */
void fmt_json(char *buf, size_t n, const struct sockaddr *sa);
/* the same from the modules' endpoint structs (identical layouts) */
void ep_to_ss(const struct toa_ep *ep, struct sockaddr_storage *ss);
void ss_to_ep(const struct sockaddr_storage *ss, struct uoa_ep *ep);

const char *errno_name(int err);
void install_signals(void);
/* print an error event (JSON) or a line on stderr; returns 1 */
int report_error(const char *op, int err);
unsigned long parse_ulong(const char *s, const char *what);
/* --raw-opt HEX: put these bytes verbatim in IP_OPTIONS (AF_INET) or
 * IPV6_DSTOPTS (AF_INET6), e.g. to send malformed options; 0 or -1 */
int set_raw_opt(int fd, int family, const char *hex);

#endif /* _EXAMPLES_UTIL_H */
