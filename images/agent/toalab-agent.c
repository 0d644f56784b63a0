// SPDX-License-Identifier: GPL-2.0
/*
 * toalab-agent: the guest side of the toalab VM control channel.
 *
 * Runs as PID 1 of the guest (after the initramfs switched into the host's
 * root filesystem) and serves one virtio-serial port.  The host sends
 * commands, the agent runs them (optionally inside a named network
 * namespace, optionally on a pty) and streams their output back.
 *
 * Why multiplexed frames on one port rather than output files in the shared
 * results directory plus a small request channel: the cloud flavour has no
 * 9p, output files would need polling over 9p (slow under TCG and racy with
 * exit codes), and frames give the host stdout/stderr as they are written,
 * the exit code the moment the job ends, stdin and a pty for 'toalab shell'.
 * Bulk results (pcaps) still go to the shared results directory.
 *
 * Frame: 12-byte header, little endian (host and guest are both x86_64):
 *   u16 magic 0x544c ("LT"), u16 type, u32 job id, u32 payload length
 * followed by the payload.
 *
 * host -> guest
 *   EXEC     u32 flags, u32 argc, then NUL-terminated strings:
 *            netns, cwd, argv[0..argc-1], then KEY=VALUE env entries to the end
 *   STDIN    bytes for the job's stdin; an empty payload closes it
 *   KILL     u32 signal, sent to the job's process group
 *   PING     any payload, echoed back in PONG
 *   SHUTDOWN kill everything, sync, reboot (qemu runs with -no-reboot: it exits)
 *   WINSZ    u16 rows, u16 cols (pty jobs)
 * guest -> host
 *   HELLO    text "key=value\n" lines, sent once when the agent is ready
 *   STARTED  u32 pid
 *   STDOUT / STDERR  output bytes
 *   EXIT     i32: exit code, or -signal number
 *   PONG     the PING payload
 *   ERROR    text; the job did not start (no EXIT follows)
 *
 * A job ends (EXIT sent) when its process has exited: whatever it wrote is
 * drained from its pipes first, output written afterwards by processes it
 * left in the background is discarded (like a shell's $(...) would hang on it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x544c
#define HDR_LEN 12
#define MAX_PAYLOAD (8u << 20)
#define MAX_JOBS 256
#define CHUNK 65536

enum {
	T_EXEC = 1,
	T_STDIN = 2,
	T_KILL = 3,
	T_PING = 4,
	T_SHUTDOWN = 5,
	T_WINSZ = 6,
	T_HELLO = 64,
	T_STARTED = 65,
	T_STDOUT = 66,
	T_STDERR = 67,
	T_EXIT = 68,
	T_PONG = 69,
	T_ERROR = 70,
};

enum { F_STDIN = 1, F_PTY = 2 };

struct job {
	int used;
	uint32_t id;
	pid_t pid;
	int fd_out, fd_err, fd_in;
	int exited, status;
	char *inbuf;
	size_t inlen, inoff;
	int in_eof;		/* close stdin once inbuf is written */
	int pty;
};

static struct job jobs[MAX_JOBS];
static int port_fd = -1;
static int host_gone;

static void logmsg(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("toalab-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = v & 0xff;
	p[1] = v >> 8;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v & 0xff;
	p[1] = (v >> 8) & 0xff;
	p[2] = (v >> 16) & 0xff;
	p[3] = v >> 24;
}

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { .fd = fd, .events = POLLOUT };

				poll(&pfd, 1, 100);
				continue;
			}
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void send_frame(uint16_t type, uint32_t id, const void *data, size_t len)
{
	unsigned char hdr[HDR_LEN];

	put16(hdr, MAGIC);
	put16(hdr + 2, type);
	put32(hdr + 4, id);
	put32(hdr + 8, (uint32_t)len);
	if (write_all(port_fd, hdr, HDR_LEN) || (len && write_all(port_fd, data, len)))
		logmsg("write to control port: %s", strerror(errno));
}

static void send_u32(uint16_t type, uint32_t id, uint32_t v)
{
	unsigned char b[4];

	put32(b, v);
	send_frame(type, id, b, 4);
}

static void send_text(uint16_t type, uint32_t id, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	send_frame(type, id, buf, (size_t)n);
}

static struct job *find_job(uint32_t id)
{
	for (int i = 0; i < MAX_JOBS; i++)
		if (jobs[i].used && jobs[i].id == id)
			return &jobs[i];
	return NULL;
}

static void set_nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Read what is available on one of the job's output fds; returns 0 at EOF. */
static int pump(struct job *j, int *fd, uint16_t type)
{
	static char buf[CHUNK];
	ssize_t n = read(*fd, buf, sizeof(buf));

	if (n > 0) {
		send_frame(type, j->id, buf, (size_t)n);
		return 1;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 1;
	close_fd(fd);	/* EOF, or EIO on a pty whose slave side is gone */
	return 0;
}

static void finish_if_done(struct job *j)
{
	unsigned char b[4];
	int32_t code;

	if (!j->exited)
		return;
	/* The process is gone: drain what it wrote, then end the job. */
	while (j->fd_out >= 0 && pump(j, &j->fd_out, T_STDOUT)) {
		struct pollfd p = { .fd = j->fd_out, .events = POLLIN };

		if (poll(&p, 1, 0) <= 0)
			break;
	}
	while (j->fd_err >= 0 && pump(j, &j->fd_err, T_STDERR)) {
		struct pollfd p = { .fd = j->fd_err, .events = POLLIN };

		if (poll(&p, 1, 0) <= 0)
			break;
	}
	close_fd(&j->fd_out);
	close_fd(&j->fd_err);
	close_fd(&j->fd_in);
	free(j->inbuf);
	if (WIFEXITED(j->status))
		code = WEXITSTATUS(j->status);
	else if (WIFSIGNALED(j->status))
		code = -WTERMSIG(j->status);
	else
		code = -1;
	put32(b, (uint32_t)code);
	send_frame(T_EXIT, j->id, b, 4);
	memset(j, 0, sizeof(*j));
	j->fd_out = j->fd_err = j->fd_in = -1;
}

static void reap(void)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_JOBS; i++) {
			if (jobs[i].used && jobs[i].pid == pid) {
				jobs[i].exited = 1;
				jobs[i].status = status;
				finish_if_done(&jobs[i]);
				break;
			}
		}
		/* anything else is an orphan re-parented to us (PID 1): just reaped */
	}
}

/* In the child: enter the named netns the way 'ip netns exec' does. */
static int enter_netns(const char *name)
{
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "/run/netns/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		dprintf(2, "toalab-agent: no network namespace '%s': %s\n", name, strerror(errno));
		return -1;
	}
	if (setns(fd, CLONE_NEWNET)) {
		dprintf(2, "toalab-agent: setns %s: %s\n", name, strerror(errno));
		return -1;
	}
	close(fd);
	/* A private mount namespace with /sys showing this netns's devices. */
	if (unshare(CLONE_NEWNS) == 0 &&
	    mount("", "/", NULL, MS_SLAVE | MS_REC, NULL) == 0 &&
	    umount2("/sys", MNT_DETACH) == 0)
		mount(name, "/sys", "sysfs", 0, NULL);
	return 0;
}

static void child_exec(const char *netns, const char *cwd, char **argv, char **env, int nenv,
		       unsigned flags, int in_fd, int out_fd, int err_fd, const char *pts)
{
	sigset_t none;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	setsid();
	if (flags & F_PTY) {
		int s = open(pts, O_RDWR);

		if (s < 0)
			_exit(126);
		ioctl(s, TIOCSCTTY, 0);
		dup2(s, 0);
		dup2(s, 1);
		dup2(s, 2);
		if (s > 2)
			close(s);
	} else {
		dup2(in_fd, 0);
		dup2(out_fd, 1);
		dup2(err_fd, 2);
	}
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	if (*netns && enter_netns(netns))
		_exit(126);
	if (chdir(*cwd ? cwd : "/")) {
		dprintf(2, "toalab-agent: cd %s: %s\n", cwd, strerror(errno));
		_exit(126);
	}
	for (int i = 0; i < nenv; i++)
		putenv(env[i]);
	execvp(argv[0], argv);
	dprintf(2, "toalab-agent: cannot run '%s': %s\n", argv[0], strerror(errno));
	_exit(127);
}

static void do_exec(uint32_t id, const unsigned char *p, uint32_t len)
{
	uint32_t flags, argc;
	const char *s, *end = (const char *)p + len;
	const char *netns, *cwd;
	char **argv = NULL, **env = NULL;
	int nenv = 0, slot = -1;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	int master = -1;
	char pts[128] = "";
	pid_t pid;
	struct job *j;

	if (len < 8 || find_job(id)) {
		send_text(T_ERROR, id, "bad EXEC frame");
		return;
	}
	if (len && p[len - 1] != 0) {
		send_text(T_ERROR, id, "EXEC payload not NUL-terminated");
		return;
	}
	flags = get32(p);
	argc = get32(p + 4);
	s = (const char *)p + 8;
	if (argc == 0 || argc > 65536) {
		send_text(T_ERROR, id, "bad argc %u", argc);
		return;
	}
	for (int i = 0; i < MAX_JOBS; i++)
		if (!jobs[i].used) {
			slot = i;
			break;
		}
	if (slot < 0) {
		send_text(T_ERROR, id, "too many jobs (%d)", MAX_JOBS);
		return;
	}
	netns = s;
	s += strlen(s) + 1;
	if (s >= end)
		goto short_frame;
	cwd = s;
	s += strlen(s) + 1;
	argv = calloc(argc + 1, sizeof(char *));
	for (uint32_t i = 0; i < argc; i++) {
		if (s >= end)
			goto short_frame;
		argv[i] = (char *)s;
		s += strlen(s) + 1;
	}
	env = calloc(len / 2 + 1, sizeof(char *));
	while (s < end) {
		env[nenv++] = (char *)s;
		s += strlen(s) + 1;
	}

	if (flags & F_PTY) {
		master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (master < 0 || grantpt(master) || unlockpt(master) ||
		    ptsname_r(master, pts, sizeof(pts))) {
			send_text(T_ERROR, id, "pty: %s", strerror(errno));
			goto out;
		}
	} else {
		if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
			send_text(T_ERROR, id, "pipe: %s", strerror(errno));
			goto out;
		}
		if (flags & F_STDIN) {
			if (pipe2(in, O_CLOEXEC)) {
				send_text(T_ERROR, id, "pipe: %s", strerror(errno));
				goto out;
			}
		} else {
			in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		}
	}
	pid = fork();
	if (pid < 0) {
		send_text(T_ERROR, id, "fork: %s", strerror(errno));
		goto out;
	}
	if (pid == 0)
		child_exec(netns, cwd, argv, env, nenv, flags, in[0], out[1], err[1], pts);

	j = &jobs[slot];
	memset(j, 0, sizeof(*j));
	j->used = 1;
	j->id = id;
	j->pid = pid;
	j->pty = !!(flags & F_PTY);
	if (flags & F_PTY) {
		j->fd_out = master;
		j->fd_in = dup(master);
		j->fd_err = -1;
		master = -1;
	} else {
		j->fd_out = out[0];
		j->fd_err = err[0];
		j->fd_in = (flags & F_STDIN) ? in[1] : -1;
		out[0] = err[0] = -1;
		in[1] = -1;
	}
	set_nonblock(j->fd_out);
	if (j->fd_err >= 0)
		set_nonblock(j->fd_err);
	if (j->fd_in >= 0)
		set_nonblock(j->fd_in);
	send_u32(T_STARTED, id, (uint32_t)pid);
	goto out;

short_frame:
	send_text(T_ERROR, id, "EXEC payload too short");
out:
	close_fd(&in[0]);
	close_fd(&in[1]);
	close_fd(&out[0]);
	close_fd(&out[1]);
	close_fd(&err[0]);
	close_fd(&err[1]);
	close_fd(&master);
	free(argv);
	free(env);
}

static void flush_stdin(struct job *j)
{
	while (j->fd_in >= 0 && j->inoff < j->inlen) {
		ssize_t n = write(j->fd_in, j->inbuf + j->inoff, j->inlen - j->inoff);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			j->inoff = j->inlen;	/* EPIPE: the reader is gone */
			break;
		}
		j->inoff += (size_t)n;
	}
	if (j->inoff == j->inlen) {
		free(j->inbuf);
		j->inbuf = NULL;
		j->inlen = j->inoff = 0;
		if (j->in_eof)
			close_fd(&j->fd_in);
	}
}

static void do_stdin(uint32_t id, const unsigned char *p, uint32_t len)
{
	struct job *j = find_job(id);
	char *nb;

	if (!j || j->fd_in < 0)
		return;
	if (len == 0) {
		if (j->pty) {
			/* end of input on a terminal is the EOF character */
			p = (const unsigned char *)"\x04";
			len = 1;
		} else {
			j->in_eof = 1;
			flush_stdin(j);
			return;
		}
	}
	nb = realloc(j->inbuf, j->inlen + len);
	if (!nb)
		return;
	memcpy(nb + j->inlen, p, len);
	j->inbuf = nb;
	j->inlen += len;
	flush_stdin(j);
}

static void shutdown_all(void)
{
	for (int i = 0; i < MAX_JOBS; i++)
		if (jobs[i].used)
			kill(-jobs[i].pid, SIGKILL);
	sync();
	if (getpid() == 1)
		reboot(RB_AUTOBOOT);	/* no ACPI in the guest; qemu has -no-reboot */
	exit(0);
}

static void handle_frame(uint16_t type, uint32_t id, const unsigned char *p, uint32_t len)
{
	struct job *j;

	switch (type) {
	case T_EXEC:
		do_exec(id, p, len);
		break;
	case T_STDIN:
		do_stdin(id, p, len);
		break;
	case T_KILL:
		j = find_job(id);
		if (j && len >= 4 && !j->exited) {
			int sig = (int)get32(p);

			if (kill(-j->pid, sig) && errno == ESRCH)
				kill(j->pid, sig);
		}
		break;
	case T_PING:
		send_frame(T_PONG, id, p, len);
		break;
	case T_SHUTDOWN:
		shutdown_all();
		break;
	case T_WINSZ:
		j = find_job(id);
		if (j && len >= 4 && j->fd_out >= 0) {
			struct winsize ws = { .ws_row = get16(p), .ws_col = get16(p + 2) };

			ioctl(j->fd_out, TIOCSWINSZ, &ws);
		}
		break;
	default:
		logmsg("unknown frame type %u", type);
	}
}

static unsigned char *rbuf;
static size_t rlen, rcap;

static void read_port(void)
{
	ssize_t n;
	size_t off = 0;

	if (rcap - rlen < CHUNK) {
		rcap = rcap ? rcap * 2 : 4 * CHUNK;
		rbuf = realloc(rbuf, rcap);
		if (!rbuf) {
			logmsg("out of memory");
			abort();
		}
	}
	n = read(port_fd, rbuf + rlen, rcap - rlen);
	if (n == 0) {
		/* host side not connected: poll reports HUP until it is back */
		host_gone = 1;
		return;
	}
	if (n < 0)
		return;
	host_gone = 0;
	rlen += (size_t)n;
	while (rlen - off >= HDR_LEN) {
		const unsigned char *h = rbuf + off;
		uint32_t plen = get32(h + 8);

		if (get16(h) != MAGIC || plen > MAX_PAYLOAD) {
			logmsg("bad frame from host, resetting buffer");
			rlen = off = 0;
			break;
		}
		if (rlen - off < HDR_LEN + plen)
			break;
		handle_frame(get16(h + 2), get32(h + 4), h + HDR_LEN, plen);
		off += HDR_LEN + plen;
	}
	memmove(rbuf, rbuf + off, rlen - off);
	rlen -= off;
}

static int open_port(const char *want)
{
	char path[300], name[128];
	DIR *d;
	struct dirent *e;

	for (int tries = 0; tries < 500; tries++) {
		d = opendir("/sys/class/virtio-ports");
		while (d && (e = readdir(d))) {
			FILE *f;

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
			f = fopen(path, "r");
			if (!f)
				continue;
			if (fgets(name, sizeof(name), f)) {
				name[strcspn(name, "\n")] = 0;
				if (!strcmp(name, want)) {
					int fd;

					fclose(f);
					snprintf(path, sizeof(path), "/dev/%s", e->d_name);
					closedir(d);
					fd = open(path, O_RDWR | O_CLOEXEC);
					if (fd < 0)
						logmsg("open %s: %s", path, strerror(errno));
					return fd;
				}
			}
			fclose(f);
		}
		if (d)
			closedir(d);
		usleep(10000);
	}
	logmsg("no virtio port named %s", want);
	return -1;
}

int main(int argc, char **argv)
{
	const char *portname = argc > 1 ? argv[1] : "toalab.ctl";
	struct pollfd pfd[2 + 3 * MAX_JOBS];
	struct job *who[2 + 3 * MAX_JOBS];
	int what[2 + 3 * MAX_JOBS];
	struct utsname u;
	struct timespec ts;
	sigset_t mask;
	int sfd;

	for (int i = 0; i < MAX_JOBS; i++)
		jobs[i].fd_out = jobs[i].fd_err = jobs[i].fd_in = -1;
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	port_fd = open_port(portname);
	if (port_fd < 0 || sfd < 0) {
		if (getpid() == 1)
			for (;;)
				pause();	/* the host's ready timeout reports it */
		return 1;
	}
	uname(&u);
	clock_gettime(CLOCK_BOOTTIME, &ts);
	send_text(T_HELLO, 0, "release=%s\nversion=%s\nuptime_ms=%ld\npid=%d\n", u.release,
		  u.version, (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, (int)getpid());

	for (;;) {
		int n = 0, r;

		pfd[n].fd = port_fd;
		pfd[n].events = POLLIN;
		who[n] = NULL;
		what[n++] = 0;
		pfd[n].fd = sfd;
		pfd[n].events = POLLIN;
		who[n] = NULL;
		what[n++] = 1;
		for (int i = 0; i < MAX_JOBS; i++) {
			struct job *j = &jobs[i];

			if (!j->used)
				continue;
			if (j->fd_out >= 0) {
				pfd[n].fd = j->fd_out;
				pfd[n].events = POLLIN;
				who[n] = j;
				what[n++] = 2;
			}
			if (j->fd_err >= 0) {
				pfd[n].fd = j->fd_err;
				pfd[n].events = POLLIN;
				who[n] = j;
				what[n++] = 3;
			}
			if (j->fd_in >= 0 && j->inoff < j->inlen) {
				pfd[n].fd = j->fd_in;
				pfd[n].events = POLLOUT;
				who[n] = j;
				what[n++] = 4;
			}
		}
		if (host_gone)
			pfd[0].fd = -1;	/* do not spin on HUP; look again in 50 ms */
		r = poll(pfd, (nfds_t)n, host_gone ? 50 : -1);
		if (r < 0 && errno != EINTR) {
			logmsg("poll: %s", strerror(errno));
			sleep(1);
			continue;
		}
		if (host_gone) {
			host_gone = 0;
			continue;
		}
		for (int i = 0; i < n; i++) {
			struct job *j = who[i];

			if (!pfd[i].revents)
				continue;
			switch (what[i]) {
			case 0:
				read_port();
				break;
			case 1: {
				struct signalfd_siginfo si;

				while (read(sfd, &si, sizeof(si)) > 0)
					;
				break;
			}
			case 2:
				if (j->used && j->fd_out == pfd[i].fd)
					pump(j, &j->fd_out, T_STDOUT);
				break;
			case 3:
				if (j->used && j->fd_err == pfd[i].fd)
					pump(j, &j->fd_err, T_STDERR);
				break;
			case 4:
				if (j->used)
					flush_stdin(j);
				break;
			}
		}
		reap();
	}
}
