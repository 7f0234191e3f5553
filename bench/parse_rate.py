"""Measure inboxlink.mime.parse throughput on a generated corpus.

    python bench/parse_rate.py [N]        # default N = 20000

Prints messages/second and microseconds per message (wall and process CPU, median of 3 runs:
fast-mail-parser uses every core, so CPU > wall) for fast_mail_parser.parse_many alone (the floor)
and for inboxlink.mime.parse.parse_many end to end, with the cyclic GC on and off (the sync engine
pauses it around its parse/store pipeline), and headers-only (which does not use fast-mail-parser;
its metadata mode is timed for comparison), and the CPU inboxlink adds to fast-mail-parser's. Runs
on a generated corpus and, when it is importable, on inboxlink.testing.mailgen's realistic one.
"""

from __future__ import annotations

import base64
import gc
import quopri
import random
import statistics
import sys
import time
from collections.abc import Callable

import fast_mail_parser

from inboxlink.mime.parse import parse_many

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "meeting", "tomorrow",
         "please", "find", "attached", "regards", "thanks", "café", "naïve", "Grüße", "señor", "東京",
         "こんにちは", "déjà", "vu"]  # fmt: skip
CHARSETS = ["utf-8", "iso-8859-1", "windows-1252", "shift_jis", "utf-8", "utf-8"]


def _text(rng: random.Random, n: int) -> str:
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))))
    if rng.random() < 0.3:
        lines += ["", "On Mon, 1 Jan 2024 at 10:00, Bob <bob@example.com> wrote:", "> earlier text", "> more"]
    return "\n".join(lines)


def _encode_part(rng: random.Random, text: str, ctype: str) -> str:
    cs = rng.choice(CHARSETS)
    try:
        raw = text.encode(cs)
    except UnicodeEncodeError:
        cs, raw = "utf-8", text.encode("utf-8")
    cte = rng.choice(["8bit", "quoted-printable", "base64", "7bit"])
    if cte == "quoted-printable":
        body = quopri.encodestring(raw).decode("ascii")
    elif cte == "base64":
        body = base64.encodebytes(raw).decode("ascii")
    elif cte == "7bit":
        cs, cte = "us-ascii", "7bit"
        body = text.encode("ascii", "replace").decode("ascii")
    else:
        body = raw.decode(cs)
    return f"Content-Type: {ctype}; charset={cs}\nContent-Transfer-Encoding: {cte}\n\n{body}\n"


def _headers(rng: random.Random, i: int, ctype: str) -> str:
    h = [
        f"From: =?utf-8?q?J=C3=B6rg_{i}?= <sender{i % 97}@example.com>",
        f'To: a{i}@example.org, "Smith, Ann" <ann@example.org>',
        f"Subject: =?utf-8?b?{base64.b64encode(f'Réunion n°{i}'.encode()).decode()}?=",
        f"Date: Mon, {1 + i % 28} Jan 2024 10:{i % 60:02d}:00 +0100",
        f"Message-ID: <m{i}.{rng.randrange(10**9)}@example.com>",
        "MIME-Version: 1.0",
    ]
    for k in range(rng.randint(2, 8)):
        h.append(f"Received: from relay{k}.example.net by mx.example.com; Mon, 1 Jan 2024 10:00:0{k} +0000")
    if rng.random() < 0.5:
        h.append(f"In-Reply-To: <m{i - 1}@example.com>")
        h.append(f"References: <m{i - 2}@example.com>\n <m{i - 1}@example.com>")
    if rng.random() < 0.2:
        h.append("List-Id: <news.example.com>\nList-Unsubscribe: <mailto:u@example.com>")
    h.append(f"Content-Type: {ctype}")
    return "\n".join(h) + "\n"


def message(rng: random.Random, i: int) -> bytes:
    kind = rng.choice(["plain", "html", "alt", "attach", "alt", "plain"])
    text = _text(rng, rng.randint(2, 40))
    html = "<html><body>" + "".join(f"<p>{line}</p>" for line in text.split("\n")) + "</body></html>"
    if kind in ("plain", "html"):
        ctype = "text/plain" if kind == "plain" else "text/html"
        part = _encode_part(rng, text if kind == "plain" else html, ctype)
        hdr = _headers(rng, i, ctype).rsplit("Content-Type:", 1)[0]
        return (hdr + part).encode("utf-8", "surrogateescape").replace(b"\n", b"\r\n")
    out = (
        _headers(
            rng,
            i,
            'multipart/alternative; boundary="=_alt"'
            if kind == "alt"
            else 'multipart/mixed; boundary="=_mix"',
        )
        + "\n"
    )
    if kind == "alt":
        out += "--=_alt\n" + _encode_part(rng, text, "text/plain") + "--=_alt\n"
        out += _encode_part(rng, html, "text/html") + "--=_alt--\n"
    else:
        out += "--=_mix\n" + _encode_part(rng, text, "text/plain")
        for k in range(rng.randint(1, 3)):
            blob = base64.encodebytes(rng.randbytes(rng.randint(100, 30000))).decode()
            out += (
                "--=_mix\nContent-Type: application/octet-stream\n"
                f"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9{k}.bin\n"
                f"Content-Transfer-Encoding: base64\n\n{blob}"
            )
        out += "--=_mix--\n"
    return out.encode("utf-8").replace(b"\n", b"\r\n")


def corpus(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [message(rng, i) for i in range(n)]


def _time(label: str, n: int, fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """Median of `repeat` runs: (wall, CPU) seconds, printed per message too."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"  {label:<44} {n / wall:>9,.0f} msg/s wall {wall * 1000:7.0f} ms wall {cpu * 1000:7.0f} ms CPU"
        f"  ({wall * 1e6 / n:5.1f} / {cpu * 1e6 / n:5.1f} us/msg)"
    )
    return wall, cpu


def _no_gc(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        gc.disable()
        try:
            return fn()
        finally:
            gc.enable()

    return run


def bench(name: str, raws: list[bytes]) -> None:
    n = len(raws)
    heads = [r.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" for r in raws]
    mb = sum(map(len, raws)) / 1e6
    print(f"{name}: {n} messages, {mb:.1f} MB, avg {mb * 1e6 / n:,.0f} bytes (median of 3 runs)")
    _, floor_cpu = _time(
        "fast_mail_parser.parse_many (lazy, floor)",
        n,
        _no_gc(lambda: fast_mail_parser.parse_many(raws, mode="lazy")),
    )
    _time(
        "fast_mail_parser.parse_many (metadata)",
        n,
        _no_gc(lambda: fast_mail_parser.parse_many(heads, mode="metadata")),
    )
    _time("inboxlink parse_many, gc on", n, lambda: parse_many(raws))
    _, full_cpu = _time("inboxlink parse_many, gc off (as the engine)", n, _no_gc(lambda: parse_many(raws)))
    _time(
        "inboxlink parse_many headers_only, gc off", n, _no_gc(lambda: parse_many(heads, headers_only=True))
    )
    extra = (full_cpu - floor_cpu) * 1e6 / n
    print(f"  inboxlink CPU on top of fast-mail-parser's, gc off: {extra:5.1f} us/msg")
    notes: dict[str, int] = {}
    for p in parse_many(raws):
        if p.parse_note:
            key = p.parse_note[:70]
            notes[key] = notes.get(key, 0) + 1
    print("  fallbacks:", notes or "none")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    bench("synthetic corpus (bench/parse_rate.py)", corpus(n))
    try:
        from inboxlink.testing.mailgen import generate
    except ImportError:
        return
    bench("inboxlink.testing.mailgen corpus", list(generate(n, 1)))


if __name__ == "__main__":
    main()
