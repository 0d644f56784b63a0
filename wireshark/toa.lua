-- toa.lua - Wireshark/tshark dissector of the TOA/UOA address option.
--
-- A fullnat load balancer tells the real server the client's address and
-- port and the VIP's in IP option 31 (IPv4: 16 bytes with IPv4 inside, 40
-- with IPv6 inside; byte 2 bit 0 says which) or in an IPv6 Destination
-- Options header holding option 31 (data 12 or 36 bytes).  Layout:
-- kmod/include/toa_opt.h; reference codec: lab/wire.py.
--
-- Wireshark shows IPv4 option 31 as unknown and the IPv6 option as raw
-- bytes and offers no table to hang an IP option dissector on, so this is
-- a postdissector: for every IPv4 and IPv6 header in the packet (the outer
-- one, and the inner one of VXLAN), it walks the IPv4 options or the
-- extension header chain and decodes each option 31 it finds.
--
-- Fields: toa.form ("ipv4" option / "ipv6" dstopt), toa.type, toa.length,
-- toa.operation, toa.family (4 or 6: the addresses inside), toa.cport,
-- toa.vport, toa.cip / toa.vip (IPv4 inside), toa.cip6 / toa.vip6 (IPv6
-- inside).  A malformed option (bad length, family bit against the length,
-- IPv6 lengths that disagree, truncation) is flagged with an expert
-- warning, toa.malformed.
--
--   tshark -X lua_script:wireshark/toa.lua -r lab.pcap -Y 'toa.cip == 198.51.100.10'
--   toalab wireshark install      (copies it to ~/.local/lib/wireshark/plugins/)

local toa = Proto("toa", "TOA/UOA address option")

local f = {
	form = ProtoField.string("toa.form", "Form"),
	type = ProtoField.uint8("toa.type", "Option type", base.DEC),
	length = ProtoField.uint8("toa.length", "Length", base.DEC),
	operation = ProtoField.uint8("toa.operation", "Operation", base.HEX),
	nexthdr = ProtoField.uint8("toa.nexthdr", "Next header", base.DEC),
	hdrlen = ProtoField.uint8("toa.hdrlen", "Header length (8-octet units, first not counted)", base.DEC),
	family = ProtoField.uint8("toa.family", "Family inside", base.DEC),
	cport = ProtoField.uint16("toa.cport", "Client port", base.DEC),
	vport = ProtoField.uint16("toa.vport", "VIP port", base.DEC),
	cip = ProtoField.ipv4("toa.cip", "Client address"),
	vip = ProtoField.ipv4("toa.vip", "VIP"),
	cip6 = ProtoField.ipv6("toa.cip6", "Client address"),
	vip6 = ProtoField.ipv6("toa.vip6", "VIP"),
}
toa.fields = { f.form, f.type, f.length, f.operation, f.nexthdr, f.hdrlen, f.family, f.cport, f.vport,
	f.cip, f.vip, f.cip6, f.vip6 }

local bad = ProtoExpert.new("toa.malformed", "Malformed TOA/UOA option", expert.group.MALFORMED,
	expert.severity.WARN)
toa.experts = { bad }

local ip_field = Field.new("ip")
local ipv6_field = Field.new("ipv6")

local OPT_TYPE = 31
local LEN4, LEN6 = 16, 40 -- whole option by the family inside
local DSTOPT = 60
local EXT_HEADERS = { [0] = true, [43] = true, [60] = true } -- hop-by-hop, routing, destination options

-- The ports and addresses at tvb offset `at` (after 4 bytes of header).
local function fields(tree, tvb, at, six)
	tree:add(f.family, six and 6 or 4):set_generated()
	tree:add(f.cport, tvb(at + 4, 2))
	tree:add(f.vport, tvb(at + 6, 2))
	if six then
		tree:add(f.cip6, tvb(at + 8, 16))
		tree:add(f.vip6, tvb(at + 24, 16))
	else
		tree:add(f.cip, tvb(at + 8, 4))
		tree:add(f.vip, tvb(at + 12, 4))
	end
end

-- IPv4 option 31 at `at`, `room` bytes to the end of the options.
local function ipv4_option(root, tvb, at, room)
	local olen = room >= 2 and tvb(at + 1, 1):uint() or 0
	local t = root:add(toa, tvb(at, math.min(math.max(olen, 1), room)), "TOA/UOA address option (IPv4 option 31)")
	t:add(f.form, "ipv4"):set_generated()
	t:add(f.type, tvb(at, 1))
	if room < 2 then
		t:add_proto_expert_info(bad, "option truncated: no length byte")
		return
	end
	t:add(f.length, tvb(at + 1, 1))
	if olen ~= LEN4 and olen ~= LEN6 then
		t:add_proto_expert_info(bad, string.format("length %d is neither 16 (IPv4 inside) nor 40 (IPv6 inside)", olen))
		return
	end
	if room < olen then
		t:add_proto_expert_info(bad, string.format("option truncated: %d of %d bytes", room, olen))
		return
	end
	local op = tvb(at + 2, 1):uint()
	t:add(f.operation, tvb(at + 2, 1))
	local six = olen == LEN6
	if (op % 2 == 1) ~= six then
		t:add_proto_expert_info(bad, string.format("operation bit 0 is %d but the length %d says IPv%d inside",
			op % 2, olen, six and 6 or 4))
	end
	fields(t, tvb, at, six)
	t:append_text(string.format(", %s", six and "IPv6 inside" or "IPv4 inside"))
end

-- The IPv4 header at `off`: walk its options.
local function in_ipv4(root, tvb, off)
	local ihl = (tvb(off, 1):uint() % 16) * 4
	if ihl <= 20 or off + ihl > tvb:len() then
		return
	end
	local at, stop = off + 20, off + ihl
	while at < stop do
		local kind = tvb(at, 1):uint()
		if kind == 0 then
			return
		elseif kind == 1 then
			at = at + 1
		else
			if kind == OPT_TYPE then
				ipv4_option(root, tvb, at, stop - at)
			end
			local l = stop - at >= 2 and tvb(at + 1, 1):uint() or 0
			if l < 2 then
				return
			end
			at = at + l
		end
	end
end

-- Option 31 at `at` inside the Destination Options header at `hdr`: `decl` bytes by
-- its length field, `avail` of them in the frame.
local function ipv6_option(root, tvb, hdr, decl, avail, at)
	local t = root:add(toa, tvb(hdr, math.min(decl, avail)), "TOA/UOA address option (IPv6 destination option 31)")
	t:add(f.form, "ipv6"):set_generated()
	t:add(f.nexthdr, tvb(hdr, 1))
	t:add(f.hdrlen, tvb(hdr + 1, 1))
	t:add(f.type, tvb(at, 1))
	if hdr + avail - at < 2 then
		t:add_proto_expert_info(bad, "option truncated: no length byte")
		return
	end
	local dlen = tvb(at + 1, 1):uint()
	t:add(f.length, tvb(at + 1, 1))
	if dlen ~= LEN4 - 4 and dlen ~= LEN6 - 4 then
		t:add_proto_expert_info(bad, string.format("option length %d is neither 12 (IPv4 inside) nor 36 (IPv6 inside)", dlen))
		return
	end
	if at + 2 + dlen > hdr + decl then
		t:add_proto_expert_info(bad, string.format("option 31 of %d bytes runs past its %d-byte header (header length field)",
			dlen + 2, decl))
		return
	end
	if at + 2 + dlen > hdr + avail then
		t:add_proto_expert_info(bad, string.format("option truncated: %d of %d bytes", hdr + avail - at - 2, dlen))
		return
	end
	-- the project's form: option 31 alone, right after the 2 header bytes, the header exactly its size
	if at == hdr + 2 and decl ~= dlen + 4 then
		t:add_proto_expert_info(bad, string.format("header of %d bytes, but option 31 of %d data bytes makes %d",
			decl, dlen, dlen + 4))
	end
	-- toa_opt.h's layout: cport 2 bytes after the option's type and length
	fields(t, tvb, at - 2, dlen == LEN6 - 4)
	t:append_text(string.format(", %s", dlen == LEN6 - 4 and "IPv6 inside" or "IPv4 inside"))
end

-- The IPv6 header at `off`: walk the extension headers, and the options of each destination header.
local function in_ipv6(root, tvb, off)
	if off + 40 > tvb:len() then
		return
	end
	local nh, at = tvb(off + 6, 1):uint(), off + 40
	while EXT_HEADERS[nh] do
		if at + 2 > tvb:len() then
			if nh == DSTOPT and at < tvb:len() then
				local t = root:add(toa, tvb(at, tvb:len() - at), "TOA/UOA address option (IPv6)")
				t:add_proto_expert_info(bad, "destination options header truncated")
			end
			return
		end
		local decl = (tvb(at + 1, 1):uint() + 1) * 8
		local avail = math.min(decl, tvb:len() - at)
		if nh == DSTOPT then
			local o = at + 2
			while o < at + avail do
				local kind = tvb(o, 1):uint()
				if kind == 0 then
					o = o + 1
				elseif kind == OPT_TYPE then
					ipv6_option(root, tvb, at, decl, avail, o)
					break
				elseif o + 2 > at + avail then
					break
				else
					o = o + 2 + tvb(o + 1, 1):uint()
				end
			end
		end
		if avail < decl then
			return
		end
		nh, at = tvb(at, 1):uint(), at + decl
	end
end

-- FieldInfo ranges of the frame: a field of another data source (reassembly) is not ours to walk.
local function offsets(field, tvb)
	local out = {}
	for _, fi in ipairs({ field() }) do
		if fi.offset + fi.len <= tvb:len() and tvb(fi.offset, fi.len):bytes() == fi.range:bytes() then
			out[#out + 1] = fi.offset
		end
	end
	return out
end

function toa.dissector(tvb, pinfo, root)
	for _, off in ipairs(offsets(ip_field, tvb)) do
		in_ipv4(root, tvb, off)
	end
	for _, off in ipairs(offsets(ipv6_field, tvb)) do
		in_ipv6(root, tvb, off)
	end
end

register_postdissector(toa)
