#!/usr/bin/env python3
"""An independent decoder for the sonomask wire protocol, version 1 (docs/PROTOCOL.md).

Standard library only, written from the specification rather than from the Rust code, so the
specification is proven implementable; tests/wire_python.rs checks it against streams the Rust
encoder produced, faults included.

    python3 tools/sonomask_wire.py decode STREAM [--out DIR]

prints one JSON line per message or event; with --out, writes every verified mask as a PGM
(0/255). Each mask line carries the sha256 of its pixels as one byte per pixel (0 or 1).
"""
import hashlib
import json
import math
import os
import struct
import sys
import zlib

VERSION = 1
HEADER_LEN = 6
CRC_LEN = 4
MAX_PAYLOAD = 1024
MAX_ENCODED = (HEADER_LEN + MAX_PAYLOAD + CRC_LEN) + (HEADER_LEN + MAX_PAYLOAD + CRC_LEN) // 254 + 1
MAX_MASK_PIXELS = 1 << 24

HELLO, STATUS, MASK, MASK_DATA, PROMPT, ACK, ERROR = 0x01, 0x02, 0x10, 0x11, 0x20, 0x30, 0x31
MEASURE = 0x12  # version 1 revision 1.1


class Bad(Exception):
    pass


def cobs_decode(block):
    out = bytearray()
    i = 0
    while i < len(block):
        code = block[i]
        if code == 0:
            raise Bad("cobs: zero byte")
        i += 1
        end = i + code - 1
        if end > len(block):
            raise Bad("cobs: truncated")
        out += block[i:end]
        i = end
        if code < 0xFF and i < len(block):
            out.append(0)
    return bytes(out)


def parse_frame(raw):
    if len(raw) < HEADER_LEN + CRC_LEN:
        raise Bad("frame too short")
    version, msg_type, seq, length = struct.unpack_from("<BBHH", raw, 0)
    if length != len(raw) - HEADER_LEN - CRC_LEN or length > MAX_PAYLOAD:
        raise Bad("length mismatch")
    (crc,) = struct.unpack_from("<I", raw, len(raw) - CRC_LEN)
    if zlib.crc32(raw[:-CRC_LEN]) != crc:
        raise Bad("crc mismatch")
    return version, msg_type, seq, raw[HEADER_LEN:-CRC_LEN]


class Reader:
    def __init__(self, data):
        self.d, self.i = data, 0

    def take(self, n):
        if self.i + n > len(self.d):
            raise Bad("payload truncated")
        s = self.d[self.i:self.i + n]
        self.i += n
        return s

    def u(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def text(self, n, limit):
        if n > limit:
            raise Bad("string over limit")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("string not utf-8")

    def rest(self):
        return self.d[self.i:]


def parse_mask_header(p):
    r = Reader(p)
    h = {}
    h["frame_id"], h["timestamp_us"], h["prompt_id"], h["object"], h["encoding"] = (
        r.u("I"), r.u("Q"), r.u("H"), r.u("B"), r.u("B"))
    h["width"], h["height"] = r.u("H"), r.u("H")
    h["bbox"] = [r.u("H") for _ in range(4)]
    h["score"], h["area"], h["data_len"], h["data_crc"], h["chunk_count"] = (
        r.u("f"), r.u("I"), r.u("I"), r.u("I"), r.u("H"))
    n = h["width"] * h["height"]
    x0, y0, x1, y1 = h["bbox"]
    if h["encoding"] not in (0, 1):
        raise Bad("mask encoding")
    if n > MAX_MASK_PIXELS or h["area"] > n or x1 > h["width"] or y1 > h["height"] or x0 > x1 or y0 > y1:
        raise Bad("mask size, area or bbox")
    if h["chunk_count"] == 0:
        raise Bad("chunk count")
    data = r.rest()
    if len(data) > h["data_len"] or (h["chunk_count"] == 1 and len(data) != h["data_len"]):
        raise Bad("mask data length")
    return h, data


def decode_mask(encoding, data, n):
    """One byte per pixel (0/1) from RLE-varint (0) or MSB-first raw bits (1)."""
    if encoding == 1:
        if len(data) != (n + 7) // 8:
            raise Bad("raw length")
        bits = bytearray(len(data) * 8)
        for i, b in enumerate(data):
            for k in range(8):
                bits[i * 8 + k] = (b >> (7 - k)) & 1
        if any(bits[n:]):
            raise Bad("raw padding")
        return bytes(bits[:n])
    out = bytearray()
    value, acc, shift, nbytes, runs = 0, 0, 0, 0, 0
    for b in data:
        acc |= (b & 0x7F) << shift
        nbytes += 1
        if b & 0x80:
            shift += 7
            if nbytes >= 5:
                raise Bad("varint too long")
            continue
        if acc > 0xFFFFFFFF:
            raise Bad("varint too large")
        if acc == 0 and runs > 0:
            raise Bad("empty run")
        if len(out) + acc > n:
            raise Bad("runs too long")
        out += bytes([value]) * acc
        value ^= 1
        runs += 1
        acc, shift, nbytes = 0, 0, 0
    if nbytes or len(out) != n or runs == 0:
        raise Bad("runs too short")
    return bytes(out)


def parse_message(t, p):
    r = Reader(p)
    if t == HELLO:
        lo, hi = r.u("B"), r.u("B")
        if lo == 0 or lo > hi:
            raise Bad("version range")
        m = {"type": "hello", "versions": [lo, hi], "session_id": r.u("I"), "capabilities": r.u("I"),
             "max_payload": r.u("H")}
        m["device"] = r.text(r.u("B"), 32)
        m["board"] = r.text(r.u("B"), 32)
        count = r.u("B")
        if count > 4:
            raise Bad("model list")
        m["models"] = [{"role": r.u("B"), "precision": r.u("B"), "sha256": r.take(32).hex()} for _ in range(count)]
        return m
    if t == STATUS:
        m = {"type": "status"}
        for k in ("frames_in", "masks_sent", "queue_drops", "errors", "reconnects"):
            m[k] = r.u("I")
        m["fps"], m["last_error"] = r.u("H") / 100.0, r.u("H")
        n = r.u("B")
        if n > 12:
            raise Bad("stage list")
        stages = {}
        for _ in range(n):
            name = r.text(r.u("B"), 16)
            stages[name] = r.u("I")
        m["stages_us"] = stages
        return m
    if t == PROMPT:
        m = {"type": "prompt", "prompt_id": r.u("H"), "pipeline": r.u("B"), "flags": r.u("B"),
             "box": [r.u("H") for _ in range(4)]}
        if m["prompt_id"] == 0 or m["pipeline"] > 2:
            raise Bad("prompt id or pipeline")
        n = r.u("B")
        if n > 16:
            raise Bad("point list")
        m["points"] = [[r.u("H"), r.u("H"), r.u("B")] for _ in range(n)]
        if any(pt[2] > 1 for pt in m["points"]):
            raise Bad("point label")
        m["text"] = r.text(r.u("H"), 512)
        return m
    if t == ACK:
        return {"type": "ack", "acked_seq": r.u("H"), "acked_type": r.u("B"), "ref_id": r.u("H")}
    if t == ERROR:
        m = {"type": "error", "code": r.u("H"), "ref_seq": r.u("H"), "ref_type": r.u("B")}
        m["message"] = r.text(r.u("B"), 200)
        return m
    if t == MEASURE:
        fid, obj, target, unit, flags = r.u("I"), r.u("B"), r.u("B"), r.u("B"), r.u("B")
        if target not in (1, 2) or unit > 1:
            raise Bad("measure target or unit")
        v = [r.u("f") for _ in range(3 + 5 + 10 + 2)]
        num = lambda x: x if math.isfinite(x) else None  # noqa: E731
        cal = lambda c: {"length": num(c[4]), "from_px": [num(c[0]), num(c[1])], "to_px": [num(c[2]), num(c[3])]}  # noqa: E731
        area, perimeter, hc, ell, long_axis, short_axis, spacing = v[0], v[1], v[2], v[3:8], v[8:13], v[13:18], v[18:20]
        return {
            "type": "measure", "frame_id": fid, "object": obj, "target": "hc" if target == 1 else "lesion",
            "unit": "mm" if unit == 1 else "px", "area": num(area), "perimeter": num(perimeter), "hc": num(hc),
            "hc_source": None if not math.isfinite(hc) else ("skull outer border" if flags & 2 else "mask ellipse"),
            "ellipse": None if not flags & 1 else {"cx_px": num(ell[0]), "cy_px": num(ell[1]), "semi_major": num(ell[2]),
                                                   "semi_minor": num(ell[3]), "angle_deg": num(ell[4])},
            "long_axis": cal(long_axis), "short_axis": cal(short_axis),
            "pixel_spacing_mm": [spacing[0], spacing[1]] if math.isfinite(spacing[0]) else None,
        }
    raise Bad("unknown type 0x%02x" % t)


class Decoder:
    """Bytes in, JSON-able events out; mirrors the receiver rules of PROTOCOL.md section 7."""

    def __init__(self, out_dir=None):
        self.buf = bytearray()
        self.discarding = False
        self.last_seq = None
        self.session = None
        self.cur = None  # mask in progress: dict with header, chunks, data
        self.out_dir = out_dir
        self.stats = {"frames": 0, "frame_errors": 0, "lost_frames": 0, "masks": 0, "masks_dropped": 0,
                      "parse_errors": 0, "version_errors": 0}

    def feed(self, data):
        events = []
        for b in data:
            if b != 0:
                if not self.discarding:
                    self.buf.append(b)
                    if len(self.buf) > MAX_ENCODED:
                        self.discarding = True
                        self.buf = bytearray()
                continue
            if self.discarding:
                self.discarding = False
                self.stats["frame_errors"] += 1
                events.append({"type": "frame_error", "error": "oversize"})
                continue
            block, self.buf = bytes(self.buf), bytearray()
            if not block:
                continue
            try:
                frame = parse_frame(cobs_decode(block))
            except Bad as e:
                self.stats["frame_errors"] += 1
                events.append({"type": "frame_error", "error": str(e)})
                continue
            events.extend(self.frame(*frame))
        return events

    def drop(self, reason):
        self.cur = None
        self.stats["masks_dropped"] += 1
        return {"type": "mask_dropped", "reason": reason}

    def frame(self, version, t, seq, payload):
        self.stats["frames"] += 1
        ev = []
        msg, err = None, None
        if version == VERSION:
            try:
                msg = parse_message(t, payload) if t not in (MASK, MASK_DATA) else None
                if t == MASK:
                    msg = ("mask",) + parse_mask_header(payload)
                elif t == MASK_DATA:
                    if len(payload) < 11:
                        raise Bad("payload truncated")
                    fid, obj, idx, off = struct.unpack_from("<IBHI", payload, 0)
                    if idx == 0:
                        raise Bad("chunk index")
                    msg = ("data", fid, obj, idx, off, payload[11:])
            except Bad as e:
                err = str(e)
        if isinstance(msg, dict) and msg["type"] == "hello":
            if self.session is not None and self.session != msg["session_id"]:
                self.last_seq = None
            self.session = msg["session_id"]
        if self.last_seq is not None:
            gap = (seq - (self.last_seq + 1)) & 0xFFFF
            if gap:
                self.stats["lost_frames"] += gap
                ev.append({"type": "lost", "frames": gap})
                if self.cur is not None:
                    ev.append(self.drop("frame lost"))
        self.last_seq = seq
        if version != VERSION:
            self.stats["version_errors"] += 1
            return ev + [{"type": "version_error", "seq": seq, "version": version}]
        if err is not None:
            self.stats["parse_errors"] += 1
            return ev + [{"type": "parse_error", "seq": seq, "error": err}]
        if isinstance(msg, dict):
            msg["seq"] = seq
            return ev + [msg]
        if msg[0] == "mask":
            _, h, data = msg
            if self.cur is not None:
                ev.append(self.drop("interrupted"))
            self.cur = {"h": h, "next": 0, "data": bytearray()}
            return ev + self.push(data)
        _, fid, obj, idx, off, data = msg
        if self.cur is None:
            self.stats["masks_dropped"] += 1
            return ev + [{"type": "mask_dropped", "reason": "no start"}]
        h = self.cur["h"]
        if (fid, obj, idx, off) != (h["frame_id"], h["object"], self.cur["next"], len(self.cur["data"])):
            return ev + [self.drop("out of order")]
        return ev + self.push(data)

    def push(self, data):
        c, h = self.cur, self.cur["h"]
        if len(c["data"]) + len(data) > h["data_len"] or c["next"] >= h["chunk_count"]:
            return [self.drop("out of order")]
        c["data"] += data
        c["next"] += 1
        if c["next"] < h["chunk_count"]:
            return []
        self.cur = None
        data = bytes(c["data"])
        if len(data) != h["data_len"]:
            self.stats["masks_dropped"] += 1
            return [{"type": "mask_dropped", "reason": "length"}]
        if zlib.crc32(data) != h["data_crc"]:
            self.stats["masks_dropped"] += 1
            return [{"type": "mask_dropped", "reason": "data crc"}]
        try:
            pixels = decode_mask(h["encoding"], data, h["width"] * h["height"])
        except Bad as e:
            self.stats["masks_dropped"] += 1
            return [{"type": "mask_dropped", "reason": str(e)}]
        self.stats["masks"] += 1
        ev = {"type": "mask", "frame_id": h["frame_id"], "prompt_id": h["prompt_id"], "object": h["object"],
              "width": h["width"], "height": h["height"], "encoding": ["rle", "raw"][h["encoding"]],
              "bbox": h["bbox"], "area": h["area"], "data_bytes": h["data_len"],
              "sha256": hashlib.sha256(pixels).hexdigest()}
        if self.out_dir:
            path = os.path.join(self.out_dir, "mask_%06d_%d.pgm" % (h["frame_id"], h["object"]))
            with open(path, "wb") as f:
                f.write(b"P5\n%d %d\n255\n" % (h["width"], h["height"]))
                f.write(bytes(255 * p for p in pixels))
            ev["file"] = path
        return [ev]


def main(argv):
    if len(argv) < 2 or argv[0] != "decode":
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out_dir = None
    if "--out" in argv:
        out_dir = argv[argv.index("--out") + 1]
        os.makedirs(out_dir, exist_ok=True)
    src = sys.stdin.buffer if argv[1] == "-" else open(argv[1], "rb")
    dec = Decoder(out_dir)
    while True:
        chunk = src.read(65536)
        if not chunk:
            break
        for ev in dec.feed(chunk):
            print(json.dumps(ev, sort_keys=True))
    print(json.dumps(dict(type="summary", **dec.stats), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
