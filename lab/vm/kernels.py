"""Which Debian kernel a guest boots: a series and flavour, resolved against the
package lists as they are now.

Debian's archive keeps only recent kernel builds, and the packages of one build
do not move together (on 2026-12-01 linux-kbuild-6.1 went to 6.1.192-3 while
linux-image-6.1.0-56 stayed at 6.1.192-2).  So nothing here pins a build: a
request names a series ("6.1", "6.12-rt"), which resolves to the newest build
whose image, headers, headers-common and kbuild packages are all on the mirror,
with dependencies read as Debian states them (``>=`` is not ``=``).  An exact
release may be asked for; it is honoured while the mirror or build/vm has it.

    k = resolve("6.12")                  # Kernel(release='6.12.117+deb12-amd64', ...)
    k.packages                           # [(name, version), ...] to download
    for row in offers(): ...             # what `toalab vm kernels` prints
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.errors import LabError
from lab.vm.config import PIN_FILE, build_dir

Note = Callable[[str], None]

APT_LISTS = Path("/var/lib/apt/lists")
APT_PKGCACHE = Path("/var/cache/apt/pkgcache.bin")
# linux-image-<abi>-<suffix>: 6.1.0-57-amd64, 6.12.117+deb12-rt-amd64 (not the
# linux-image-6.12-amd64 meta package, -dbg or -unsigned)
_IMAGE_RE = re.compile(
    r"linux-image-(?P<abi>(?P<series>\d+\.\d+)(?:\.\d+)*(?:-\d+|\+deb\d+))-(?P<suffix>[a-z0-9-]+)"
)
_RELEASE_RE = re.compile(
    r"(?P<abi>(?P<series>\d+\.\d+)(?:\.\d+)*(?:-\d+|\+deb\d+))(?:-(?P<suffix>[a-z][a-z0-9-]*))?"
)
_SERIES_RE = re.compile(r"(?P<series>\d+\.\d+)(?:-(?P<flavour>[a-z]+))?")


# -- the configuration (images/kernel.toml) ----------------------------------------------------
@dataclass(frozen=True)
class Config:
    default: str
    series: tuple[str, ...]
    other: tuple[str, ...]
    flavours: dict[str, str]  # name -> package suffix

    def flavour_of(self, suffix: str) -> str | None:
        return next((f for f, s in self.flavours.items() if s == suffix), None)


def config() -> Config:
    try:
        with PIN_FILE.open("rb") as f:
            data = tomllib.load(f)
        k, fl = data["kernel"], data["flavours"]
        return Config(
            default=str(k["default"]),
            series=tuple(map(str, k["series"])),
            other=tuple(map(str, k.get("other", ()))),
            flavours={str(a): str(b) for a, b in fl.items()},
        )
    except FileNotFoundError:
        raise LabError(f"{PIN_FILE}: missing (which kernels the VM engine boots)") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as e:
        raise LabError(f"{PIN_FILE}: invalid ({type(e).__name__}: {e})") from None


# -- Debian versions and relations ---------------------------------------------------------------
def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _cmp_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or a revision."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, rev


def version_cmp(a: str, b: str) -> int:
    """<0, 0, >0 as Debian version a sorts before, with, after b (dpkg --compare-versions)."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _cmp_part(ua, ub) or _cmp_part(ra, rb)


_OPS: dict[str, Callable[[int], bool]] = {
    "=": lambda c: c == 0,
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    ">>": lambda c: c > 0,
    "<<": lambda c: c < 0,
}


@dataclass(frozen=True)
class Relation:
    name: str
    op: str | None = None
    version: str | None = None

    def allows(self, version: str) -> bool:
        return self.op is None or _OPS[self.op](version_cmp(version, self.version or ""))

    def __str__(self) -> str:
        return self.name + (f" ({self.op} {self.version})" if self.op else "")


def parse_depends(text: str) -> list[list[Relation]]:
    """A Depends field: a list of alternatives, each a list of relations."""
    out = []
    for group in text.split(","):
        alts = []
        for alt in group.split("|"):
            m = re.fullmatch(
                r"\s*([^\s(:]+)(?::\S+)?\s*(?:\(\s*(<<|<=|=|>=|>>)\s*([^)\s]+)\s*\))?\s*(?:\[.*\])?\s*", alt
            )
            if m:
                alts.append(Relation(m.group(1), m.group(2), m.group(3)))
        if alts:
            out.append(alts)
    return out


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Package stanzas (apt-cache show, a Packages file): field -> value, continuations joined."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t":
            if key:
                cur[key] += "\n" + line.strip()
        else:
            key, _, val = line.partition(":")
            cur[key] = val.strip()
    if cur:
        out.append(cur)
    return out


# -- the catalogue: what the package lists carry -------------------------------------------------
@dataclass
class Catalog:
    """Every version of every package the lists know, with its Depends."""

    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> version -> Depends

    def add(self, stanzas: Iterable[dict[str, str]]) -> None:
        for s in stanzas:
            if "Package" in s and "Version" in s:
                self.versions.setdefault(s["Package"], {})[s["Version"]] = s.get("Depends", "")

    def best(self, rel: Relation) -> str | None:
        """The newest version of rel.name that satisfies rel."""
        ok = [v for v in self.versions.get(rel.name, {}) if rel.allows(v)]
        return max(ok, key=_VersionKey) if ok else None


class _VersionKey:
    def __init__(self, v: str) -> None:
        self.v = v

    def __lt__(self, other: _VersionKey) -> bool:
        return version_cmp(self.v, other.v) < 0


@dataclass(frozen=True)
class Kernel:
    """One Debian kernel build: what to download, and what the guest's uname -r says."""

    series: str  # 6.1
    flavour: str  # generic | cloud | rt
    abi: str  # 6.1.0-57, 6.12.117+deb12
    suffix: str  # amd64 | cloud-amd64 | rt-amd64
    version: str  # the image's Debian version, 6.1.192-3
    packages: tuple[tuple[str, str], ...] = ()  # image, headers and what they need

    @property
    def release(self) -> str:
        return f"{self.abi}-{self.suffix}"

    @property
    def image_pkg(self) -> str:
        return f"linux-image-{self.release}"

    @property
    def headers_pkg(self) -> str:
        return f"linux-headers-{self.release}"

    @property
    def name(self) -> str:
        """series-flavour, as asked for on the command line."""
        return f"{self.series}-{self.flavour}"

    def describe(self) -> str:
        return f"{self.release} ({self.image_pkg} {self.version}, {self.series} {self.flavour})"

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["release"] = self.release
        d["packages"] = [list(p) for p in self.packages]
        return d

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Kernel:
        pk = d.get("packages") or []
        return cls(
            series=str(d["series"]),
            flavour=str(d["flavour"]),
            abi=str(d["abi"]),
            suffix=str(d["suffix"]),
            version=str(d["version"]),
            packages=tuple((str(a), str(b)) for a, b in pk),  # type: ignore[misc, union-attr]
        )


@dataclass(frozen=True)
class Build:
    """A build the lists name, and why it cannot be used if it cannot."""

    kernel: Kernel
    problem: str = ""


def builds(cat: Catalog, cfg: Config) -> list[Build]:
    """Every kernel build of a known flavour in the catalogue, newest first."""
    out = []
    for name, versions in cat.versions.items():
        m = _IMAGE_RE.fullmatch(name)
        flavour = cfg.flavour_of(m.group("suffix")) if m else None
        if not m or flavour is None:
            continue
        for version in versions:
            k = Kernel(m.group("series"), flavour, m.group("abi"), m.group("suffix"), version)
            out.append(_complete(cat, k))
    out.sort(key=lambda b: (_VersionKey(b.kernel.version), b.kernel.abi), reverse=True)
    return out


def _complete(cat: Catalog, k: Kernel) -> Build:
    """k with the packages it needs: the headers of the same version, and what the
    headers depend on among linux-headers-* / linux-kbuild-* as Debian states it."""
    pkgs = [(k.image_pkg, k.version)]
    if k.version not in cat.versions.get(k.headers_pkg, {}):
        return Build(k, f"{k.headers_pkg} {k.version} is not on the mirror")
    pkgs.append((k.headers_pkg, k.version))
    for alts in parse_depends(cat.versions[k.headers_pkg][k.version]):
        alts = [r for r in alts if re.match(r"linux-(headers|kbuild)-", r.name)]
        if not alts:
            continue
        pick = next(((r.name, v) for r in alts if (v := cat.best(r))), None)
        if pick is None:
            return Build(k, f"{k.headers_pkg} needs {' | '.join(map(str, alts))}: not on the mirror")
        pkgs.append(pick)
    return Build(Kernel(k.series, k.flavour, k.abi, k.suffix, k.version, tuple(pkgs)))


def apt_catalog() -> Catalog:
    """The catalogue of the package lists on this machine (no network: apt-cache only)."""
    cat = Catalog()
    names = _apt(["apt-cache", "pkgnames", "linux-image-"]).split()
    images = sorted(n for n in names if _IMAGE_RE.fullmatch(n))
    if not images:
        return cat
    heads = [n.replace("linux-image-", "linux-headers-", 1) for n in images]
    known = set(_apt(["apt-cache", "pkgnames", "linux-"]).split())
    cat.add(parse_stanzas(_apt(["apt-cache", "show", *images, *(h for h in heads if h in known)])))
    deps = set()
    for h in heads:
        for d in cat.versions.get(h, {}).values():
            deps |= {
                r.name
                for alts in parse_depends(d)
                for r in alts
                if re.match(r"linux-(headers|kbuild)-", r.name)
            }
    deps &= known
    if deps:
        cat.add(parse_stanzas(_apt(["apt-cache", "show", *sorted(deps)])))
    return cat


def _apt(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    except FileNotFoundError:
        raise LabError(f"{argv[0]} not found: the VM engine needs Debian's apt to fetch kernels") from None
    return p.stdout


def lists_key() -> list[int]:
    """Changes whenever apt-get update changes the package lists."""
    key = []
    for p in (APT_LISTS, APT_PKGCACHE):
        try:
            key.append(p.stat().st_mtime_ns)
        except FileNotFoundError:
            key.append(0)
    return key


def mirror_builds(cfg: Config | None = None, *, build: Path | None = None) -> list[Build]:
    """builds() of the package lists, cached in build/vm/mirror.json until the lists change."""
    cfg = cfg or config()
    cache = (build or build_dir()) / "mirror.json"
    key = [*lists_key(), sorted(cfg.flavours.items())]
    try:
        data = json.loads(cache.read_text())
        if data["key"] == json.loads(json.dumps(key)):
            return [Build(Kernel.from_json(b["kernel"]), b["problem"]) for b in data["builds"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = builds(apt_catalog(), cfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {"key": key, "builds": [{"kernel": b.kernel.to_json(), "problem": b.problem} for b in found]}
        )
    )
    os.replace(tmp, cache)
    return found


def local_kernels(build: Path | None = None) -> list[Kernel]:
    """The kernels already extracted under build/vm (each has a kernel.json), newest first."""
    out = []
    for f in (build or build_dir()).glob("*/kernel.json"):
        try:
            out.append(Kernel.from_json(json.loads(f.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    out.sort(key=lambda k: (_VersionKey(k.version), k.abi), reverse=True)
    return out


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    series: str
    flavour: str
    release: str | None = None  # an exact build

    def __str__(self) -> str:
        return self.release or f"{self.series}-{self.flavour}"


def parse_request(text: str | None, flavour: str | None = None, cfg: Config | None = None) -> Request:
    """'6.1', '6.12-rt', '6.1.0-57-amd64', '6.1.0-57' (+ flavour); None: the default."""
    cfg = cfg or config()
    text = (text or "").strip() or os.environ.get("TOALAB_KERNEL", "").strip() or cfg.default
    if flavour is not None and flavour not in cfg.flavours:
        raise LabError(f"unknown kernel flavour '{flavour}' (flavours: {', '.join(cfg.flavours)})")
    m = _SERIES_RE.fullmatch(text)
    if m:
        series, fl = m.group("series"), m.group("flavour")
        if series not in cfg.series:
            raise LabError(
                f"unknown kernel series '{series}' (series: {', '.join(cfg.series)}; see toalab vm kernels)"
            )
        if fl is not None and fl not in cfg.flavours:
            raise LabError(f"unknown kernel flavour '{fl}' in '{text}' (flavours: {', '.join(cfg.flavours)})")
        if fl and flavour and fl != flavour:
            raise LabError(f"kernel '{text}' and flavour '{flavour}' disagree: give one of them")
        return Request(series, fl or flavour or "generic")
    m = _RELEASE_RE.fullmatch(text)
    if m:
        suffix = m.group("suffix") or cfg.flavours[flavour or "generic"]
        fl = cfg.flavour_of(suffix)
        if fl is None:
            raise LabError(
                f"unknown kernel flavour suffix '-{suffix}' in '{text}' "
                f"(suffixes: {', '.join(cfg.flavours.values())})"
            )
        if flavour and fl != flavour:
            raise LabError(f"kernel '{text}' is the {fl} flavour, not {flavour}: give one of them")
        if m.group("series") not in cfg.series:
            raise LabError(f"kernel '{text}' is not of a known series ({', '.join(cfg.series)})")
        return Request(m.group("series"), fl, f"{m.group('abi')}-{suffix}")
    raise LabError(
        f"bad kernel '{text}': give a series ({', '.join(cfg.series)}), optionally -flavour "
        f"({', '.join(cfg.flavours)}), or an exact release such as 6.1.0-57-amd64"
    )


def choose(req: Request, mirror: list[Build], local: list[Kernel], note: Note) -> Kernel:
    """The kernel for req: an exact release from the mirror or build/vm, else the newest usable
    build of its series and flavour on the mirror, else the newest built here."""
    usable = [
        b.kernel
        for b in mirror
        if not b.problem and (b.kernel.series, b.kernel.flavour) == (req.series, req.flavour)
    ]
    ours = [k for k in local if (k.series, k.flavour) == (req.series, req.flavour)]
    if req.release:
        hit = next((k for k in usable + ours if k.release == req.release), None)
        if hit:
            return hit
        if usable or ours:
            k = (usable or ours)[0]
            note(f"{req.release} is no longer on the Debian mirror; using {k.release} ({k.version}), "
                 f"the newest {req.series} {req.flavour}")  # fmt: skip
            return k
    elif usable:
        return usable[0]
    elif ours:
        note(
            f"no {req.series} {req.flavour} kernel in the package lists; using {ours[0].release}, built here"
        )
        return ours[0]
    why = next(
        (b.problem for b in mirror if (b.kernel.series, b.kernel.flavour) == (req.series, req.flavour)), ""
    )
    raise LabError(
        f"no Debian {req.series} {req.flavour} kernel in the package lists"
        + (f" ({why})" if why else "")
        + ": run apt-get update (the mirror must be reachable), then toalab vm kernels"
    )


def resolve(text: str | None = None, flavour: str | None = None, *, note: Note | None = None,
            build: Path | None = None, refresh: bool = False) -> Kernel:  # fmt: skip
    """The kernel a request names, from the package lists as they are now.

    With no lists at all (a fresh container) or refresh=True, apt-get update runs first."""
    cfg = config()
    req = parse_request(text, flavour, cfg)
    note = note or (lambda _m: None)
    if refresh or lists_key()[0] == 0 or not any(APT_LISTS.glob("*_Packages*")):
        apt_update(note)
    mirror = mirror_builds(cfg, build=build)
    return choose(req, mirror, local_kernels(build), note)


def apt_update(note: Note) -> bool:
    note("refreshing the package lists (apt-get update)")
    p = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
    return p.returncode == 0


# -- `toalab vm kernels` ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    series: str
    flavour: str
    newest: Kernel | None  # the newest usable build on the mirror
    builds: int  # usable builds on the mirror
    problems: tuple[str, ...]  # builds the mirror names but cannot give whole
    built: tuple[str, ...]  # releases extracted under build/vm
    default: bool


def offers(mirror: list[Build], local: list[Kernel], cfg: Config | None = None) -> list[Offer]:
    cfg = cfg or config()
    default = parse_request(cfg.default, cfg=cfg)
    out = []
    for series in cfg.series:
        for fl in cfg.flavours:
            mine = [b for b in mirror if (b.kernel.series, b.kernel.flavour) == (series, fl)]
            ok = [b.kernel for b in mine if not b.problem]
            out.append(Offer(
                series, fl, ok[0] if ok else None, len(ok),
                tuple(f"{b.kernel.release} {b.kernel.version}: {b.problem}" for b in mine if b.problem),
                tuple(k.release for k in local if (k.series, k.flavour) == (series, fl)),
                (default.series, default.flavour) == (series, fl),
            ))  # fmt: skip
    return out
