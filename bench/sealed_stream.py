"""What sealing the stream costs the protocol itself (issue 14, decision D26), in one process:
the same `Connection` code path with its AES-256-GCM sealer, and with the sealer replaced by
one that only appends a 16-byte tag (the baseline: framing, encoding and decoding as before,
no cryptography), for 4 KiB and 1 MiB `Write` mutations sent and received; and what a
connection's handshake costs now (X25519, HKDF, HMAC proofs).

    python -m tandem.bench.sealed_stream [--out FILE] [--quick]

The end-to-end figure (a lab pair, encrypted against the release before) is measured by
running `tandem.bench.replication` from both trees back to back: `docs/benchmarks.md`.
"""

from __future__ import annotations

import time
from typing import Any

from tandem.bench.fs_overhead import bench_parser, emit, machine
from tandem.engine.protocol.connection import Connection, Identity, Side
from tandem.fsdriver.mutation import Write

SECRET = b"a benchmark secret of enough bytes"
TAG = 16


class _Unsealed:
    """The baseline: what the framing costs without the cipher (same sizes on the wire)."""

    def encrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
        return data + b"\0" * TAG

    def decrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
        return bytes(data[:-TAG])


def _pair() -> tuple[Connection, Connection]:
    a = Connection(Side.INITIATOR, Identity("a", "bench"), SECRET)
    b = Connection(Side.RESPONDER, Identity("b", "bench"), SECRET)
    for _ in range(4):
        b.receive(a.bytes_to_send())
        a.receive(b.bytes_to_send())
    return a, b


def _frames_per_second(size: int, count: int, sealed: bool) -> float:
    a, b = _pair()
    if not sealed:
        a._sealer = b._opener = _Unsealed()  # type: ignore[assignment]
    data = bytes(range(256)) * (size // 256)  # lz4 finds nothing to gain: sent as is
    started = time.perf_counter()
    for seq in range(1, count + 1):
        a.send_mutation(seq, Write(b"db", seq * size, data))
        events = b.receive(a.bytes_to_send())
        assert len(events) == 1
    return count / (time.perf_counter() - started)


def _handshakes_per_second(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        _pair()
    return count / (time.perf_counter() - started)


def run(quick: bool) -> dict[str, Any]:
    rounds = 3
    figures: dict[str, Any] = {}
    for name, size, count in (("4k", 4096, 20_000), ("1m", 1 << 20, 300)):
        count = count // 5 if quick else count
        sealed, plain = [], []
        for _ in range(rounds):  # interleaved: the machine's drift hits both alike
            plain.append(_frames_per_second(size, count, sealed=False))
            sealed.append(_frames_per_second(size, count, sealed=True))
        best_sealed, best_plain = max(sealed), max(plain)
        figures[name] = {
            "frames_per_s_sealed": round(best_sealed),
            "frames_per_s_unsealed": round(best_plain),
            "us_per_frame_sealed": round(1e6 / best_sealed, 2),
            "us_per_frame_unsealed": round(1e6 / best_plain, 2),
            "sealing_us_per_frame": round(1e6 / best_sealed - 1e6 / best_plain, 2),
            "sealed_vs_unsealed": round(best_sealed / best_plain, 3),
            "mib_per_s_sealed": round(best_sealed * size / (1 << 20), 1),
        }
    figures["handshakes_per_s"] = round(_handshakes_per_second(100 if quick else 500))
    return figures


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    started = time.time()
    report = {
        "benchmark": "sealed_stream",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "quick": args.quick,
        "figures": run(args.quick),
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
