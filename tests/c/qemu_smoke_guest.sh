#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
# /init of the qemu_smoke.sh guest: run the cases, report, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
sleep 1

PASS=0
FAIL=0
check() {	# check NAME FILE PATTERN
	if grep -q -- "$3" "$2"; then
		PASS=$((PASS + 1)); echo "SMOKE ok: $1"
	else
		FAIL=$((FAIL + 1)); echo "SMOKE FAIL: $1 (want $3)"; cat "$2"
	fi
}

insmod /toa.ko toa_map_table_bits=14 || echo "SMOKE FAIL: insmod toa"
insmod /uoa.ko uoa_map_timeout=5 || echo "SMOKE FAIL: insmod uoa"

C4=10.0.0.1:1; V4=10.0.0.2:2; C6=[2001:db8::1]:1; V6=[2001:db8::2]:2
J4C='"client":{"family":"ipv4","addr":"10.0.0.1","port":1}'
J6C='"client":{"family":"ipv6","addr":"2001:db8::1","port":1}'
P4='"peer":{"family":"ipv4","addr":"10.0.0.1","port":1}'
S4='"sock":{"family":"ipv4","addr":"10.0.0.2","port":2}'
P6='"peer":{"family":"ipv6","addr":"2001:db8::1","port":1}'
S6='"sock":{"family":"ipv6","addr":"2001:db8::2","port":2}'
PM='"peer":{"family":"ipv6","addr":"::ffff:10.0.0.1","port":1}'
SM='"sock":{"family":"ipv6","addr":"::ffff:10.0.0.2","port":2}'

tcp_case() {	# NAME SERVER_FLAG SERVER_IP CIP VIP PEER SOCK LOOKUP
	tcp_server $2 --json --once --timeout 5 8192 > /tmp/$1 &
	sleep 0.3
	tcp_client --json --opt $4 $5 $3 8192 > /tmp/$1.c
	wait
	check "$1 getpeername" /tmp/$1 "$6"
	check "$1 getsockname" /tmp/$1 "$7"
	check "$1 lookup" /tmp/$1 "$8"
}

tcp_case tcp44 -4 127.0.0.1 $C4 $V4 "$P4" "$S4" "$J4C"
tcp_case tcp66 -6 ::1 $C6 $V6 "$P6" "$S6" "$J6C"
tcp_case tcp64 -4 127.0.0.1 $C6 $V6 "$P6" "$S6" "$J6C"
tcp_case tcp46 -6 ::1 $C4 $V4 "$PM" "$SM" "$J4C"
tcp_case tcpmapped -6 127.0.0.1 $C4 $V4 "$PM" "$SM" "$J4C"
check "tcp64 addrlen 28" /tmp/tcp64 '"peer_len":28'
check "tcp64 accept() too" /tmp/tcp64 '"accept":{"family":"ipv6","addr":"2001:db8::1"'

# no option: the real addresses, lookup ENOENT
tcp_server --json --once --timeout 5 8192 > /tmp/tcpno &
sleep 0.3
tcp_client --json 127.0.0.1 8192 > /dev/null
wait
check "tcp no option" /tmp/tcpno '"peer":{"family":"ipv4","addr":"127.0.0.1"'
check "tcp no option lookup" /tmp/tcpno '"lookup_error":"ENOENT"'

udp_case() {	# NAME SERVER_FLAG SERVER_IP CIP VIP LOOKUP
	udp_server $2 --json --count 2 9000 > /tmp/$1 &
	sleep 0.3
	udp_client --json --count 2 --opt $4 $5 $3 9000 > /tmp/$1.c
	wait
	check "$1 lookup" /tmp/$1 "$6"
}
udp_case udp44 -4 127.0.0.1 $C4 $V4 "$J4C"
udp_case udp66 -6 ::1 $C6 $V6 "$J6C"
udp_case udp64 -4 127.0.0.1 $C6 $V6 "$J6C"
udp_case udp46 -6 ::1 $C4 $V4 "$J4C"
udp_case udpmapped -6 127.0.0.1 $C6 $V6 "$J6C"

# option 31 after other IPv4 options; a malformed one is counted, ignored
OPT44=1f100000000100020a0000010a000002
tcp_raw() {	# NAME HEX PATTERN
	tcp_server --json --once --timeout 5 8192 > /tmp/$1 &
	sleep 0.3
	tcp_client --json --raw-opt $2 127.0.0.1 8192 > /tmp/$1.c
	wait
	check "$1" /tmp/$1 "$3"
}
tcp_raw tcp-after-nops 01010101$OPT44 "$P4"
tcp_raw tcp-after-opt30 1e040000$OPT44 "$P4"
tcp_raw tcp-bad-operation 1f100100000100020a0000010a000002 \
	'"peer":{"family":"ipv4","addr":"127.0.0.1"'
check "malformed_operation counted" /proc/net/toa_stats "^malformed_operation 1"

echo "--- toa_stats"; cat /proc/net/toa_stats
echo "--- uoa_stats"; cat /proc/net/uoa_stats
check "toa entries back to 0" /proc/net/toa_stats "^entries 0"

# a netns sees the proc files and gets UOA hooks of its own
unshare -n sh -c "ip link set lo up
	cat /proc/net/toa_stats > /tmp/nsstat
	udp_server --json --once 9000 > /tmp/udpns &
	sleep 0.3
	udp_client --json --once --opt $C4 $V4 127.0.0.1 9000 > /dev/null
	wait"
check "toa_stats in a netns" /tmp/nsstat "syn_recv_v4"
check "udp in a netns" /tmp/udpns "$J4C"

# expiry: uoa_map_timeout=5
udp_server --json --count 2 9001 > /tmp/udpexp &
sleep 0.3
udp_client --json --once --opt $C4 $V4 --bind 127.0.0.1:40000 127.0.0.1 9001 >/dev/null
sleep 12
udp_client --json --once --bind 127.0.0.1:40000 127.0.0.1 9001 >/dev/null
wait
check "udp entry expired" /tmp/udpexp '"n":1,.*"lookup_error":"ENOENT"'

# unload and reload under traffic
tcp_server --json --timeout 2 8193 > /dev/null &
SRV=$!
udp_server --json 9002 > /dev/null &
USRV=$!
sleep 0.3
( i=0; while [ $i -lt 200 ]; do
	tcp_client --json --count 1 --opt $C4 $V4 127.0.0.1 8193 >/dev/null 2>&1
	udp_client --json --count 1 --opt $C6 $V6 127.0.0.1 9002 >/dev/null 2>&1
	i=$((i + 1)); done ) &
LOAD=$!
for n in 1 2 3 4 5; do
	sleep 0.5
	rmmod toa || echo "SMOKE FAIL: rmmod toa $n"
	rmmod uoa || echo "SMOKE FAIL: rmmod uoa $n"
	insmod /toa.ko || echo "SMOKE FAIL: insmod toa $n"
	insmod /uoa.ko || echo "SMOKE FAIL: insmod uoa $n"
done
wait $LOAD
kill $SRV $USRV

# rmmod with a live connection that has an entry
tcp_server --json --once --timeout 10 8194 > /tmp/live &
sleep 0.3
tcp_client --json --count 3 --interval-ms 1500 --opt $C4 $V4 127.0.0.1 8194 \
	> /dev/null &
sleep 1
grep "^entries" /proc/net/toa_stats > /tmp/live_entries
check "live entry before rmmod" /tmp/live_entries "^entries [1-9]"
rmmod toa && echo rmmod-ok > /tmp/rmlive
check "rmmod toa with a live entry" /tmp/rmlive rmmod-ok
wait
insmod /toa.ko
rmmod toa && rmmod uoa && PASS=$((PASS + 1)) || FAIL=$((FAIL + 1))
dmesg | grep -iE "bug|warn|oops|rcu|toa|uoa|kprobe" | grep -v "module verification" | tail -20 > /tmp/dmesg
cat /tmp/dmesg
if grep -qiE "bug:|warning:|oops|stall" /tmp/dmesg; then
	FAIL=$((FAIL + 1)); echo "SMOKE FAIL: kernel complained"
fi

echo "--- test_toa_opt on the 6.1 kernel"
test_toa_opt > /tmp/t; tail -1 /tmp/t; grep "^not ok" /tmp/t
check "test_toa_opt on 6.1" /tmp/t " 0 failed"

echo "SMOKE: $PASS passed, $FAIL failed"
reboot -f
