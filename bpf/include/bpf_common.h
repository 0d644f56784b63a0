/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * bpf_common.h - what every toalab XDP program includes first.
 *
 * Only UAPI headers and libbpf's bpf_helpers.h / bpf_endian.h: the programs
 * must load on the host kernel (6.x) and on Debian's 6.1, so nothing here
 * needs kfuncs, CO-RE relocations or helpers newer than 5.15.
 */
#ifndef TOALAB_BPF_COMMON_H
#define TOALAB_BPF_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef likely
#define likely(x)	__builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x)	__builtin_expect(!!(x), 0)
#endif

#ifndef __packed
#define __packed	__attribute__((packed))
#endif

/* Bump a counter in a BPF_MAP_TYPE_PERCPU_ARRAY of __u64. */
static __always_inline void percpu_count(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += 1;
}

#endif /* TOALAB_BPF_COMMON_H */
