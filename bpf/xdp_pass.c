// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * xdp_pass.c - pass everything.  Attached natively to a veth that receives
 * XDP_REDIRECTed frames from its peer: a veth accepts redirected frames only
 * while it runs an XDP program (or has GRO on).
 */
#include "bpf_common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}
