// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * lb_mactx.c - the bench baseline of bench/bench_lb.py: swap the Ethernet
 * addresses and send the frame back out (XDP_TX), the cheapest program that
 * still touches the packet.
 */
#include "bpf_common.h"
#include <linux/if_ether.h>

SEC("xdp")
int xdp_mactx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
