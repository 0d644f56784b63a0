"""Kernel resolution (lab/vm/kernels.py): series x flavour against the package lists.

The stanzas below are the shape apt-cache show prints; the first case is what
the mirror looked like on 2026-12-01, when linux-kbuild-6.1 had moved on to
6.1.192-3 while linux-image-6.1.0-56 stayed at 6.1.192-2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.vm import kernels
from lab.vm.image import ImageBuilder
from lab.vm.kernels import Catalog, Kernel, Relation, Request

CFG = kernels.Config(
    default="6.1",
    series=("6.1", "6.12"),
    other=("6.12",),
    flavours={"generic": "amd64", "cloud": "cloud-amd64", "rt": "rt-amd64"},
)


def stanza(pkg: str, version: str, depends: str = "") -> str:
    return f"Package: {pkg}\nVersion: {version}\n" + (f"Depends: {depends}\n" if depends else "") + "\n"


def headers61(abi: str, v: str, flav: str = "amd64") -> str:
    common = f"linux-headers-{abi}-common" + ("-rt" if flav.startswith("rt") else "")
    return stanza(
        f"linux-headers-{abi}-{flav}", v,
        f"{common} (= {v}), linux-kbuild-6.1 (>= {v}), linux-compiler-gcc-12-x86",
    ) + stanza(common, v)  # fmt: skip


MIRROR = (
    # 6.1.0-56: image and headers at -2, kbuild only at -3 (and an old one in main)
    stanza("linux-image-6.1.0-56-amd64", "6.1.192-2")
    + headers61("6.1.0-56", "6.1.192-2")
    + stanza("linux-image-6.1.0-57-amd64", "6.1.192-3")
    + headers61("6.1.0-57", "6.1.192-3")
    + stanza("linux-kbuild-6.1", "6.1.192-3")
    + stanza("linux-kbuild-6.1", "6.1.176-1")
    + stanza("linux-image-6.1.0-57-rt-amd64", "6.1.192-3")
    + headers61("6.1.0-57", "6.1.192-3", "rt-amd64")
    # 6.1.0-55 cloud: the image is listed, its headers are gone
    + stanza("linux-image-6.1.0-55-cloud-amd64", "6.1.185-1")
    + stanza("linux-image-6.12.117+deb12-amd64", "6.12.117-1~deb12u1", "kmod, initramfs-tools")
    + stanza(
        "linux-headers-6.12.117+deb12-amd64",
        "6.12.117-1~deb12u1",
        "linux-base (>= 4.12~), linux-headers-6.12.117+deb12-common (= 6.12.117-1~deb12u1), "
        "linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1) | linux-image-6.12.117+deb12-amd64-unsigned "
        "(= 6.12.117-1~deb12u1), linux-kbuild-6.12.117+deb12, gcc-12",
    )
    + stanza("linux-headers-6.12.117+deb12-common", "6.12.117-1~deb12u1")
    + stanza("linux-kbuild-6.12.117+deb12", "6.12.117-1~deb12u1")
    # not kernels of a flavour we boot, and meta packages
    + stanza("linux-image-6.12-amd64", "6.12.117-1~deb12u1")
    + stanza("linux-image-6.1.0-57-amd64-unsigned", "6.1.192-3")
    + stanza("linux-image-6.1.0-57-armmp", "6.1.192-3")
)


def catalog() -> Catalog:
    cat = Catalog()
    cat.add(kernels.parse_stanzas(MIRROR))
    return cat


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("6.1.192-3", "6.1.192-2", 1),
        ("6.1.192-2", "6.1.176-1", 1),
        ("6.12.117-1~deb12u1", "6.12.117-1", -1),  # ~ sorts before everything
        ("6.12.117-1~deb12u1", "6.12.115-1~deb12u1", 1),
        ("1:1.0", "2.0", 1),  # the epoch first
        ("1.0a", "1.0", 1),
        ("1.0", "1.0-0", 0),
        ("4.12~", "4.12", -1),
        ("6.1.0", "6.1.00", 0),
    ],
)
def test_debian_version_order(a: str, b: str, want: int) -> None:
    got = kernels.version_cmp(a, b)
    assert (got > 0) - (got < 0) == want
    back = kernels.version_cmp(b, a)
    assert (back > 0) - (back < 0) == -want


def test_relations_are_read_as_debian_states_them() -> None:
    deps = kernels.parse_depends("a (= 1.0), b (>= 2) | c, d:any, e [amd64]")
    assert deps == [[Relation("a", "=", "1.0")], [Relation("b", ">=", "2"), Relation("c")],
                    [Relation("d")], [Relation("e")]]  # fmt: skip
    assert Relation("k", ">=", "6.1.192-2").allows("6.1.192-3")
    assert not Relation("k", "=", "6.1.192-2").allows("6.1.192-3")
    assert Relation("k", "<<", "2").allows("1.9") and not Relation("k", ">>", "2").allows("2")


def test_a_build_whose_kbuild_moved_on_still_resolves() -> None:
    """The failure of 2026-12-01: >= is not =, so 6.1.0-56 takes kbuild 6.1.192-3."""
    by = {b.kernel.release: b for b in kernels.builds(catalog(), CFG)}
    b56 = by["6.1.0-56-amd64"]
    assert not b56.problem
    assert dict(b56.kernel.packages) == {
        "linux-image-6.1.0-56-amd64": "6.1.192-2",
        "linux-headers-6.1.0-56-amd64": "6.1.192-2",
        "linux-headers-6.1.0-56-common": "6.1.192-2",
        "linux-kbuild-6.1": "6.1.192-3",  # the newest that satisfies >=, not the old one in main
    }
    rt = by["6.1.0-57-rt-amd64"].kernel
    assert rt.flavour == "rt" and ("linux-headers-6.1.0-57-common-rt", "6.1.192-3") in rt.packages
    k612 = by["6.12.117+deb12-amd64"].kernel
    assert (k612.series, k612.flavour, k612.abi) == ("6.12", "generic", "6.12.117+deb12")
    assert ("linux-kbuild-6.12.117+deb12", "6.12.117-1~deb12u1") in k612.packages
    assert "headers" in by["6.1.0-55-cloud-amd64"].problem
    assert not any(r.startswith(("6.12-", "6.1.0-57-amd64-unsigned", "6.1.0-57-armmp")) for r in by)


def test_requests() -> None:
    p = kernels.parse_request
    assert p("6.12", cfg=CFG) == Request("6.12", "generic")
    assert p("6.1-rt", cfg=CFG) == Request("6.1", "rt")
    assert p("6.1", "cloud", cfg=CFG) == Request("6.1", "cloud")
    assert p("6.1.0-56-amd64", cfg=CFG) == Request("6.1", "generic", "6.1.0-56-amd64")
    assert p("6.12.117+deb12-rt-amd64", cfg=CFG) == Request("6.12", "rt", "6.12.117+deb12-rt-amd64")
    assert p("6.1.0-57", "rt", cfg=CFG) == Request("6.1", "rt", "6.1.0-57-rt-amd64")
    assert p(None, cfg=CFG) == Request("6.1", "generic")


@pytest.mark.parametrize(
    ("text", "flavour", "msg"),
    [
        ("5.10", None, "unknown kernel series '5.10' (series: 6.1, 6.12"),
        ("6.1-xen", None, "unknown kernel flavour 'xen' in '6.1-xen' (flavours: generic, cloud, rt)"),
        ("6.1", "xen", "unknown kernel flavour 'xen' (flavours: generic, cloud, rt)"),
        ("6.1-rt", "cloud", "disagree"),
        ("6.1.0-57-armmp", None, "unknown kernel flavour suffix '-armmp'"),
        ("latest", None, "bad kernel 'latest': give a series (6.1, 6.12)"),
        ("6.1; reboot", None, "bad kernel"),
    ],
)
def test_bad_requests_are_one_line(text: str, flavour: str | None, msg: str) -> None:
    with pytest.raises(LabError) as e:
        kernels.parse_request(text, flavour, cfg=CFG)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_newest_of_the_series_and_an_exact_build_while_it_is_there() -> None:
    mirror = kernels.builds(catalog(), CFG)
    notes: list[str] = []
    pick = kernels.choose
    assert pick(Request("6.1", "generic"), mirror, [], notes.append).release == "6.1.0-57-amd64"
    assert pick(Request("6.12", "generic"), mirror, [], notes.append).version == "6.12.117-1~deb12u1"
    exact = pick(Request("6.1", "generic", "6.1.0-56-amd64"), mirror, [], notes.append)
    assert exact.release == "6.1.0-56-amd64" and notes == []
    # gone from the mirror: one line, and the newest of the same series and flavour
    gone = pick(Request("6.1", "generic", "6.1.0-50-amd64"), mirror, [], notes.append)
    assert gone.release == "6.1.0-57-amd64"
    assert notes == ["6.1.0-50-amd64 is no longer on the Debian mirror; using 6.1.0-57-amd64 (6.1.192-3), "
                     "the newest 6.1 generic"]  # fmt: skip


def test_offline_a_kernel_built_here_keeps_working() -> None:
    built = Kernel(
        "6.1", "generic", "6.1.0-50", "amd64", "6.1.180-1", (("linux-image-6.1.0-50-amd64", "6.1.180-1"),)
    )
    notes: list[str] = []
    # no package lists at all (or nothing for that series): what build/vm has
    assert kernels.choose(Request("6.1", "generic"), [], [built], notes.append) == built
    assert len(notes) == 1 and "built here" in notes[0]
    # an exact request the mirror dropped but build/vm still has: honoured silently
    mirror = kernels.builds(catalog(), CFG)
    assert kernels.choose(Request("6.1", "generic", "6.1.0-50-amd64"), mirror, [built], notes.append) == built
    with pytest.raises(
        LabError, match=r"no Debian 6.1 cloud kernel in the package lists \(linux-headers-6.1.0-55"
    ):
        kernels.choose(Request("6.1", "cloud"), mirror, [built], notes.append)


def test_kernel_record_round_trips() -> None:
    k = kernels.builds(catalog(), CFG)[0].kernel
    assert Kernel.from_json(json.loads(json.dumps(k.to_json()))) == k


def test_offers_table() -> None:
    mirror = kernels.builds(catalog(), CFG)
    rows = {(o.series, o.flavour): o for o in kernels.offers(mirror, [], CFG)}
    assert len(rows) == 6 and rows["6.1", "generic"].default
    assert rows["6.1", "generic"].builds == 2 and rows["6.1", "generic"].newest.release == "6.1.0-57-amd64"
    assert rows["6.12", "rt"].newest is None and rows["6.1", "cloud"].problems


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt-cache")
def test_this_machines_lists_offer_the_default_series(tmp_path: Path) -> None:
    """Against the real package lists (apt-cache only, no network)."""
    mirror = kernels.mirror_builds(build=tmp_path)
    if not mirror:
        pytest.skip("no kernel in this machine's package lists (apt-get update never ran)")
    k = kernels.choose(kernels.parse_request(None), mirror, [], lambda _m: None)
    assert k.release.startswith(k.series) and len(k.packages) >= 3
    assert (tmp_path / "mirror.json").exists()
    assert kernels.mirror_builds(build=tmp_path) == mirror  # the cache gives the same answer


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_a_package_gone_from_the_mirror_is_one_line_and_leaves_no_partial(tmp_path: Path) -> None:
    k = Kernel("6.1", "generic", "6.1.0-1", "amd64", "0.0-not-a-version",
               (("linux-image-6.1.0-1-amd64", "0.0-not-a-version"),))  # fmt: skip
    b = ImageBuilder(k, build=tmp_path, progress=None)
    with pytest.raises(LabError) as e:
        b.build()
    msg = str(e.value)
    assert "\n" not in msg and "linux-image-6.1.0-1-amd64=0.0-not-a-version" in msg
    assert "no longer on the Debian mirror" in msg
    assert not list((tmp_path / "debs").iterdir()) and not (tmp_path / k.release / "root.tmp").exists()
