#!/bin/sh
# Install what the lab needs: Debian packages, then a virtualenv with the
# toalab package.  Idempotent, and quiet when everything is already there.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="
  make gcc libc6-dev python3-venv
  iproute2 iputils-ping tcpdump tshark ethtool netcat-openbsd procps kmod iperf3 graphviz
  clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool
  linux-headers-amd64 dwarves
  qemu-system-x86 busybox-static xz-utils lz4 cpio util-linux
"

missing=""
for p in $APT_PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "bootstrap: installing Debian packages:$missing"
	if [ "$(id -u)" != 0 ]; then
		echo "bootstrap: need root to install packages (run as root or: sudo make)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

VENV=.venv
PY=${PYTHON:-python3}
stamp=$VENV/.toalab-installed
if [ ! -x "$VENV/bin/python" ]; then
	echo "bootstrap: creating $VENV"
	"$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
	echo "bootstrap: installing toalab and its Python dependencies into $VENV"
	if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]' >"$VENV/pip.log" 2>&1; then
		cat "$VENV/pip.log" >&2
		exit 1
	fi
	touch "$stamp"
fi
