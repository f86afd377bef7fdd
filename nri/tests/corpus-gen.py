#!/usr/bin/env python3
"""Regenerates tests/corpus/*.bin: trunk byte streams (NRI mux frames carrying ttRPC frames)
replayed by tests/corpus.rs. Valid, edge-case and hostile inputs; see corpus/README.md.
Deterministic: running it again produces the same files."""
import os, random, struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data

def field_varint(num, value):
    return varint(num << 3) + varint(value)

def request(service, method, payload, timeout=0):
    body = field_bytes(1, service.encode()) + field_bytes(2, method.encode())
    if payload:
        body += field_bytes(3, payload)
    if timeout:
        body += field_varint(4, timeout)
    return body

def ttrpc(stream, kind, flags, body, length=None):
    return struct.pack(">IIBB", len(body) if length is None else length, stream, kind, flags) + body

def mux(conn, payload, length=None):
    return struct.pack(">II", conn, len(payload) if length is None else length) + payload

def go_frames(conn, message):
    """What containerd sends: one frame if <= 4096 bytes, else [4096, rest]."""
    if len(message) <= 4096:
        return mux(conn, message)
    return mux(conn, message[:4096]) + mux(conn, message[4096:])

PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"

configure = (field_bytes(2, b"containerd") + field_bytes(3, b"v2.3.4")
             + field_varint(4, 5000) + field_varint(5, 2000) + field_bytes(6, b"v0.12.0"))

def pod(i, netns=True):
    ns = field_bytes(1, b"network") + field_bytes(2, b"/var/run/netns/cni-%08d" % i)
    linux = field_bytes(5, ns) if netns else b""
    return (field_bytes(1, b"%064x" % i) + field_bytes(2, b"web-%d" % i)
            + field_bytes(3, b"uid-%d" % i) + field_bytes(4, b"default")
            + (field_bytes(8, linux) if linux else b"") + field_varint(9, 1000 + i)
            + field_bytes(10, b"10.88.0.%d" % (i % 250 + 2)))

files = {}

# Valid traffic.
files["register_plugin_example.bin"] = bytes.fromhex(
    "00000002 0000004d 00000043 00000001 0100".replace(" ", "")) + \
    field_bytes(1, RUNTIME.encode()) + field_bytes(2, b"RegisterPlugin") + \
    field_bytes(3, field_bytes(1, b"netshim") + field_bytes(2, b"10")) + \
    bytes.fromhex("2080e497d012")
files["configure_containerd.bin"] = go_frames(1, ttrpc(1, 1, 0, request(PLUGIN, "Configure", configure, 2_000_000_000)))
files["ok_response_without_status.bin"] = mux(2, ttrpc(1, 2, 0, b""))
files["ok_response_with_empty_status.bin"] = mux(2, ttrpc(1, 2, 0, b"\x0a\x00"))
files["unimplemented_response.bin"] = mux(2, ttrpc(1, 2, 0, field_bytes(1, field_varint(1, 12) + field_bytes(2, b"method RunPodSandbox"))))
sync = b"".join(field_bytes(1, pod(i, i % 3 != 0)) for i in range(120)) + field_varint(3, 0)
files["synchronize_large_4096_rest.bin"] = go_frames(1, ttrpc(3, 1, 0, request(PLUGIN, "Synchronize", sync, 1_900_000_000)))
big = ttrpc(5, 1, 0, request(PLUGIN, "Synchronize", sync))
files["synchronize_header_then_body.bin"] = mux(1, big[:10]) + mux(1, big[10:])
files["synchronize_one_byte_frames.bin"] = b"".join(mux(1, big[i:i+1]) for i in range(0, 600)) + mux(1, big[600:])
files["two_messages_one_frame.bin"] = mux(1, ttrpc(7, 1, 0, request(PLUGIN, "Shutdown", b"")) + ttrpc(9, 1, 0, request(PLUGIN, "Shutdown", b"")))
files["interleaved_conns.bin"] = (mux(1, big[:100]) + mux(2, ttrpc(1, 2, 0, b"")) + mux(1, big[100:]))

# Edge cases and hostile input.
files["empty.bin"] = b""
files["truncated_mux_header.bin"] = b"\x00\x00\x00\x01\x00"
files["truncated_ttrpc_header.bin"] = mux(1, b"\x00\x00\x00\x05\x00")
files["zero_length_frames.bin"] = mux(1, b"") * 300 + mux(2, b"") * 300
files["reserved_and_unknown_conns.bin"] = mux(0, b"hello") + mux(3, b"x" * 100) + mux(0xFFFFFFFF, b"y" * 10)
files["mux_length_u32_max.bin"] = mux(1, b"\x00" * 64, length=0xFFFFFFFF)
files["ttrpc_oversize_announced.bin"] = mux(1, ttrpc(11, 1, 0, b"", length=(4 << 20) + 1) + b"\xAB" * 100)
files["ttrpc_length_u32_max.bin"] = mux(1, ttrpc(13, 1, 0, b"", length=0xFFFFFFFF))
files["even_stream_id.bin"] = mux(1, ttrpc(2, 1, 0, request(PLUGIN, "Configure", configure)))
files["reused_stream_id.bin"] = mux(1, ttrpc(15, 1, 0, request(PLUGIN, "Shutdown", b""))) + mux(1, ttrpc(15, 1, 0, request(PLUGIN, "Shutdown", b"")))
files["streaming_flag.bin"] = mux(1, ttrpc(17, 1, 2, request(PLUGIN, "Configure", configure)))
files["data_frame.bin"] = mux(1, ttrpc(19, 3, 1, b"stream data"))
files["unknown_frame_type.bin"] = mux(1, ttrpc(21, 0x7F, 0xFF, b"???"))
files["garbage_request_body.bin"] = mux(1, ttrpc(23, 1, 0, bytes(range(256))))
files["request_invalid_utf8.bin"] = mux(1, ttrpc(25, 1, 0, field_bytes(1, b"\xff\xfe\xfd") + field_bytes(2, b"Configure")))
files["request_length_overflow.bin"] = mux(1, ttrpc(27, 1, 0, b"\x0a\xff\xff\xff\xff\x0f" + b"x" * 10))
files["request_varint_overflow.bin"] = mux(1, ttrpc(29, 1, 0, b"\x20" + b"\xff" * 11))
files["payload_not_configure.bin"] = mux(1, ttrpc(31, 1, 0, request(PLUGIN, "Configure", b"\x12\xff\xff\xff\xff\x0f")))
files["unknown_service_and_method.bin"] = mux(1, ttrpc(33, 1, 0, request("x.Y", "Z", b""))) + mux(1, ttrpc(35, 1, 0, request(PLUGIN, "Bogus", b"")))
files["response_on_server_conn.bin"] = mux(1, ttrpc(37, 2, 0, b"\x0a\x00"))
files["request_on_client_conn.bin"] = mux(2, ttrpc(1, 1, 0, request(RUNTIME, "RegisterPlugin", b"")))
files["deep_nested_groups.bin"] = mux(1, ttrpc(39, 1, 0, request(PLUGIN, "Synchronize", b"\x0b" * 200 + b"\x0c" * 200)))
rng = random.Random(5)
files["random_noise.bin"] = bytes(rng.randrange(256) for _ in range(3000))
files["random_frames.bin"] = b"".join(mux(rng.choice([1, 2]), bytes(rng.randrange(256) for _ in range(rng.randrange(40)))) for _ in range(100))

os.makedirs(HERE, exist_ok=True)
for name, data in sorted(files.items()):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
print(f"{len(files)} files in {HERE}")
