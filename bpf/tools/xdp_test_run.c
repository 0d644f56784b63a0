// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * xdp_test_run - run an XDP program of a BPF object on packets with
 * BPF_PROG_TEST_RUN and print the outcome as one JSON object.
 *
 *   xdp_test_run OBJ --prog NAME [options] [PACKET...]
 *
 * PACKET (repeatable; each is one run):
 *   --hex HEX            packet bytes as hex (spaces/colons allowed)
 *   --file PATH          raw packet bytes, or a pcap file (every packet of it)
 *   --ingress-in-pcap    for the pcap files that follow: each packet's ingress
 *                        ifindex is its record's microseconds field (a long
 *                        run of packets on several ports in one file)
 * options:
 *   --repeat N           run each packet N times; duration_ns is per run
 *   --ifindex N          xdp_md.ingress_ifindex of the packets that follow
 *                        (before the first: the kernel's, lo)
 *   --ports N            run in the network namespace toalab-xdp-ports, with
 *                        lo (ifindex 1) and devices of ifindex 2..N, so
 *                        that packets can come in on distinct ports (the
 *                        kernel resolves ingress_ifindex to a device)
 *   --map-update MAP KEYHEX VALHEX   before running (repeatable); a per-CPU
 *                        map gets VALHEX on every CPU
 *   --dump-map MAP       after running, dump MAP (repeatable)
 *   --self MAP           put the program itself at key 0 of the program array
 *                        MAP (a program that tail-calls itself)
 *   --load-only          load (verifier) and report, run nothing
 *
 * Output: {"prog": ..., "results": [{"retval", "action", "data_out",
 * "duration_ns", "repeat"}...], "retval"/"action"/"data_out"/"duration_ns"
 * of the first result, "maps": {MAP: [{"key": hex, "value": hex} or
 * {"key": hex, "values": [hex per CPU]}]}}.  Errors go to stderr (the
 * verifier log included) with exit status 1; usage errors exit 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/wait.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define MAX_PKTS	4096
#define MAX_MAPOPS	64
#define OUT_SIZE	(64 * 1024)

struct pkt {
	unsigned char *data;
	size_t len;
	int ifindex;		/* -1: the kernel's default */
};

struct map_update {
	const char *map;
	const char *key;
	const char *val;
};

struct opts {
	const char *obj;
	const char *prog;
	unsigned int repeat;
	int ifindex;		/* for the packets added next */
	int ingress_in_pcap;
	int ports;
	int load_only;
	struct pkt pkts[MAX_PKTS];
	int npkts;
	struct map_update upd[MAX_MAPOPS];
	int nupd;
	const char *dump[MAX_MAPOPS];
	int ndump;
	const char *self;	/* --self: a program array to hold the program */
};

static int verbose;

static void usage(void)
{
	fprintf(stderr,
		"usage: xdp_test_run OBJ --prog NAME [--hex HEX|[--ingress-in-pcap] --file PATH]... [--repeat N]\n"
		"                    [--ifindex N] [--ports N] [--map-update MAP KEYHEX VALHEX]...\n"
		"                    [--dump-map MAP]... [--self MAP] [--load-only] [-v]\n");
	exit(2);
}

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "xdp_test_run: ");
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(1);
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parse hex, ignoring spaces, colons, dashes and an optional 0x. */
static unsigned char *parse_hex(const char *s, size_t *len)
{
	size_t n = strlen(s), o = 0;
	unsigned char *buf = malloc(n / 2 + 1);
	int hi = -1;

	if (!buf)
		die("%s", "out of memory");
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	for (; *s; s++) {
		int v;

		if (*s == ' ' || *s == ':' || *s == '-' || *s == '\n' || *s == '\t')
			continue;
		v = hexval(*s);
		if (v < 0)
			die("bad hex digit in '%s'", s);
		if (hi < 0) {
			hi = v;
		} else {
			buf[o++] = (unsigned char)(hi << 4 | v);
			hi = -1;
		}
	}
	if (hi >= 0)
		die("%s", "odd number of hex digits");
	*len = o;
	return buf;
}

static void add_pkt(struct opts *o, unsigned char *data, size_t len)
{
	if (o->npkts >= MAX_PKTS)
		die("%s", "too many packets");
	o->pkts[o->npkts].data = data;
	o->pkts[o->npkts].len = len;
	o->pkts[o->npkts].ifindex = o->ifindex;
	o->npkts++;
}

static uint32_t rd32(const unsigned char *p, int swap)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return swap ? __builtin_bswap32(v) : v;
}

/* A raw packet, or each packet of a classic pcap file. */
static void load_file(struct opts *o, const char *path)
{
	FILE *f = fopen(path, "rb");
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (!f)
		die("cannot open %s", path);
	for (;;) {
		if (len + 65536 > cap) {
			cap = cap ? cap * 2 : 131072;
			buf = realloc(buf, cap);
			if (!buf)
				die("%s", "out of memory");
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	fclose(f);

	uint32_t magic = len >= 4 ? rd32(buf, 0) : 0;
	int swap = magic == 0xd4c3b2a1 || magic == 0x4d3cb2a1;

	if (magic != 0xa1b2c3d4 && magic != 0xa1b23c4d && !swap) {
		add_pkt(o, buf, len);
		return;
	}
	size_t off = 24;

	while (off + 16 <= len) {
		uint32_t incl = rd32(buf + off + 8, swap);
		unsigned char *p;

		off += 16;
		if (incl > len - off)
			die("truncated pcap %s", path);
		p = malloc(incl ? incl : 1);
		if (!p)
			die("%s", "out of memory");
		memcpy(p, buf + off, incl);
		add_pkt(o, p, incl);
		if (o->ingress_in_pcap)
			o->pkts[o->npkts - 1].ifindex = (int)rd32(buf + off - 12, swap);
		off += incl;
	}
	free(buf);
}

static void print_hex(const unsigned char *p, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
	putchar('"');
}

static const char *action_name(unsigned int r)
{
	switch (r) {
	case XDP_ABORTED: return "XDP_ABORTED";
	case XDP_DROP: return "XDP_DROP";
	case XDP_PASS: return "XDP_PASS";
	case XDP_TX: return "XDP_TX";
	case XDP_REDIRECT: return "XDP_REDIRECT";
	default: return "UNKNOWN";
	}
}

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	/* The verifier log comes at WARN level when a load fails. */
	if (level == LIBBPF_DEBUG && !verbose)
		return 0;
	return vfprintf(stderr, fmt, args);
}

static struct bpf_map *find_map(struct bpf_object *obj, const char *name)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, name);

	if (!m)
		die("no map named %s in the object", name);
	return m;
}

static int is_percpu(enum bpf_map_type t)
{
	return t == BPF_MAP_TYPE_PERCPU_ARRAY || t == BPF_MAP_TYPE_PERCPU_HASH ||
	       t == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

static void map_update(struct bpf_object *obj, const struct map_update *u, int ncpu)
{
	struct bpf_map *m = find_map(obj, u->map);
	size_t klen, vlen, ksz = bpf_map__key_size(m), vsz = bpf_map__value_size(m);
	unsigned char *key = parse_hex(u->key, &klen);
	unsigned char *val = parse_hex(u->val, &vlen);
	unsigned char *vbuf = val;
	size_t vtot = vsz;

	if (klen != ksz || vlen != vsz) {
		fprintf(stderr, "xdp_test_run: map %s: key is %zu bytes (got %zu), value %zu (got %zu)\n",
			u->map, ksz, klen, vsz, vlen);
		exit(1);
	}
	if (is_percpu(bpf_map__type(m))) {
		size_t stride = (vsz + 7) & ~(size_t)7;

		vtot = stride * ncpu;
		vbuf = calloc(1, vtot);
		if (!vbuf)
			die("%s", "out of memory");
		for (int c = 0; c < ncpu; c++)
			memcpy(vbuf + c * stride, val, vsz);
	}
	if (bpf_map__update_elem(m, key, ksz, vbuf, vtot, BPF_ANY))
		die("updating map %s failed", u->map);
	if (vbuf != val)
		free(vbuf);
	free(key);
	free(val);
}

static void map_dump(struct bpf_object *obj, const char *name, int ncpu)
{
	struct bpf_map *m = find_map(obj, name);
	size_t ksz = bpf_map__key_size(m), vsz = bpf_map__value_size(m);
	int percpu = is_percpu(bpf_map__type(m));
	size_t stride = (vsz + 7) & ~(size_t)7;
	size_t vtot = percpu ? stride * ncpu : vsz;
	unsigned char *key = calloc(1, ksz), *next = calloc(1, ksz), *val = calloc(1, vtot);
	int first = 1, err;

	if (!key || !next || !val)
		die("%s", "out of memory");
	printf("\"%s\": [", name);
	err = bpf_map__get_next_key(m, NULL, next, ksz);
	while (!err) {
		memcpy(key, next, ksz);
		if (!bpf_map__lookup_elem(m, key, ksz, val, vtot, 0)) {
			printf("%s{\"key\": ", first ? "" : ", ");
			print_hex(key, ksz);
			if (percpu) {
				printf(", \"values\": [");
				for (int c = 0; c < ncpu; c++) {
					if (c)
						printf(", ");
					print_hex(val + c * stride, vsz);
				}
				printf("]}");
			} else {
				printf(", \"value\": ");
				print_hex(val, vsz);
				putchar('}');
			}
			first = 0;
		}
		err = bpf_map__get_next_key(m, key, next, ksz);
	}
	putchar(']');
	free(key);
	free(next);
	free(val);
}

#define PORTS_NETNS	"toalab-xdp-ports"

static int run_ip(char *const argv[])
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		execvp("ip", argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

/*
 * Enter the network namespace PORTS_NETNS (`ip netns add` makes it on first
 * use), where devices of ifindex 2..@n (bridges: every kernel we run has
 * them, a lab's switch is one) exist besides lo.  One namespace for every
 * run, kept: a namespace per run would leave the kernel a backlog of
 * namespaces to clean up, which holds the locks the next lab's `up` needs.
 * `toalab down --all` removes it with the other toalab- namespaces.
 */
static void private_ports(int n)
{
	char *add_ns[] = { "ip", "netns", "add", PORTS_NETNS, NULL };
	int fd;

	fd = open("/run/netns/" PORTS_NETNS, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		run_ip(add_ns);	/* a concurrent run may have made it: open again */
		fd = open("/run/netns/" PORTS_NETNS, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0)
		die("cannot make network namespace %s for --ports (needs root and iproute2)", PORTS_NETNS);
	if (setns(fd, CLONE_NEWNET))
		die("setns into %s: needs root", PORTS_NETNS);
	close(fd);
	for (int i = 2; i <= n; i++) {
		char name[16], idx[12];
		char *add_dev[] = { "ip", "link", "add", "name", name, "index", idx, "type", "bridge", NULL };

		if (if_indextoname((unsigned int)i, name))
			continue;
		snprintf(name, sizeof(name), "port%d", i);
		snprintf(idx, sizeof(idx), "%d", i);
		run_ip(add_dev);	/* may lose a race to a concurrent run: */
		if (!if_indextoname((unsigned int)i, name))
			die("ip link add %s type bridge failed (iproute2 or bridge support missing?)", name);
	}
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->repeat = 1;
	o->ifindex = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int more = argc - i - 1;

		if (!strcmp(a, "--prog") && more >= 1) {
			o->prog = argv[++i];
		} else if (!strcmp(a, "--hex") && more >= 1) {
			size_t n;
			unsigned char *p = parse_hex(argv[++i], &n);

			add_pkt(o, p, n);
		} else if (!strcmp(a, "--file") && more >= 1) {
			load_file(o, argv[++i]);
		} else if (!strcmp(a, "--repeat") && more >= 1) {
			long r = strtol(argv[++i], NULL, 0);

			if (r < 1 || r > 100000000)
				die("bad --repeat %s", argv[i]);
			o->repeat = (unsigned int)r;
		} else if (!strcmp(a, "--ifindex") && more >= 1) {
			o->ifindex = (int)strtol(argv[++i], NULL, 0);
		} else if (!strcmp(a, "--ingress-in-pcap")) {
			o->ingress_in_pcap = 1;
		} else if (!strcmp(a, "--ports") && more >= 1) {
			long n = strtol(argv[++i], NULL, 0);

			if (n < 1 || n > 64)
				die("bad --ports %s (1..64)", argv[i]);
			o->ports = (int)n;
		} else if (!strcmp(a, "--map-update") && more >= 3) {
			if (o->nupd >= MAX_MAPOPS)
				die("%s", "too many --map-update");
			o->upd[o->nupd].map = argv[i + 1];
			o->upd[o->nupd].key = argv[i + 2];
			o->upd[o->nupd].val = argv[i + 3];
			o->nupd++;
			i += 3;
		} else if (!strcmp(a, "--dump-map") && more >= 1) {
			if (o->ndump >= MAX_MAPOPS)
				die("%s", "too many --dump-map");
			o->dump[o->ndump++] = argv[++i];
		} else if (!strcmp(a, "--self") && more >= 1) {
			o->self = argv[++i];
		} else if (!strcmp(a, "--load-only")) {
			o->load_only = 1;
		} else if (!strcmp(a, "-v")) {
			verbose = 1;
		} else if (a[0] == '-' || o->obj) {
			usage();
		} else {
			o->obj = a;
		}
	}
	if (!o->obj || !o->prog)
		usage();
	if (!o->load_only && !o->npkts)
		die("%s", "no packet: give --hex or --file (or --load-only)");
}

int main(int argc, char **argv)
{
	static struct opts o;
	struct bpf_object *obj;
	struct bpf_program *prog, *p;
	unsigned char *out;
	int fd, ncpu;

	parse_args(argc, argv, &o);
	if (o.ports > 1)
		private_ports(o.ports);
	libbpf_set_print(libbpf_print);
	ncpu = libbpf_num_possible_cpus();
	if (ncpu < 1)
		die("%s", "cannot count CPUs");

	obj = bpf_object__open_file(o.obj, NULL);
	if (!obj)
		die("cannot open BPF object %s", o.obj);
	prog = bpf_object__find_program_by_name(obj, o.prog);
	if (!prog)
		die("no program named %s in the object", o.prog);
	bpf_object__for_each_program(p, obj)
		bpf_program__set_autoload(p, p == prog);
	if (bpf_object__load(obj))
		die("loading %s failed (verifier log above)", o.obj);
	fd = bpf_program__fd(prog);

	for (int i = 0; i < o.nupd; i++)
		map_update(obj, &o.upd[i], ncpu);
	if (o.self) {
		__u32 zero = 0;

		if (bpf_map__update_elem(find_map(obj, o.self), &zero, sizeof(zero), &fd,
					 sizeof(fd), BPF_ANY))
			die("putting the program into %s failed", o.self);
	}

	printf("{\"prog\": \"%s\"", o.prog);
	if (o.load_only) {
		struct bpf_prog_info info;
		__u32 len = sizeof(info);

		memset(&info, 0, sizeof(info));
		if (bpf_obj_get_info_by_fd(fd, &info, &len))
			die("%s", "cannot read program info");
		printf(", \"loaded\": true, \"xlated_insns\": %u, \"jited_bytes\": %u, "
		       "\"verified_insns\": %u}\n",
		       info.xlated_prog_len / 8, info.jited_prog_len, info.verified_insns);
		bpf_object__close(obj);
		return 0;
	}

	out = malloc(OUT_SIZE);
	if (!out)
		die("%s", "out of memory");
	printf(", \"results\": [");
	for (int i = 0; i < o.npkts; i++) {
		struct xdp_md ctx = {
			.data_end = (__u32)o.pkts[i].len,
			.ingress_ifindex = (__u32)o.pkts[i].ifindex,
		};
		LIBBPF_OPTS(bpf_test_run_opts, t,
			.data_in = o.pkts[i].data,
			.data_size_in = (__u32)o.pkts[i].len,
			.data_out = out,
			.data_size_out = OUT_SIZE,
			.repeat = o.repeat,
		);
		int err;

		if (o.pkts[i].ifindex >= 0) {
			t.ctx_in = &ctx;
			t.ctx_size_in = sizeof(ctx);
		}
		err = bpf_prog_test_run_opts(fd, &t);
		if (err) {
			fprintf(stderr, "xdp_test_run: BPF_PROG_TEST_RUN on packet %d failed: %s\n",
				i, strerror(errno));
			return 1;
		}
		printf("%s{\"retval\": %u, \"action\": \"%s\", \"data_out\": ", i ? ", " : "",
		       t.retval, action_name(t.retval));
		print_hex(out, t.data_size_out);
		printf(", \"duration_ns\": %u, \"repeat\": %u}", t.duration, o.repeat);
	}
	printf("]");
	printf(", \"maps\": {");
	for (int i = 0; i < o.ndump; i++) {
		if (i)
			printf(", ");
		map_dump(obj, o.dump[i], ncpu);
	}
	printf("}}\n");
	free(out);
	bpf_object__close(obj);
	return 0;
}
