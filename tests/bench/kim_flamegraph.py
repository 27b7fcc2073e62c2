#!/usr/bin/env python3
"""kim_flamegraph.py — a flame graph (SVG) of one program's samples in `perf script` output.

    perf record -a -g -F 999 -o w1.data -- kim-bench --workload W1 --no-ceilings
    perf script -i w1.data | tests/bench/kim_flamegraph.py --comm kim-broker > w1.svg

Stacks are folded (root first), widths are shares of the samples, colours tell where the
time goes: kim's own code, LMDB, ZeroMQ, libsodium, libc and the kernel. Only the standard
library: the benchmark tools must run on a machine that has only the project's packages.
"""
import argparse
import collections
import html
import sys

WIDTH, ROW, FONT = 1200, 16, 11
COLOURS = [  # (part of the frame's library or name, fill)
    ("kim-broker", "#e8743b"), ("liblmdb", "#5b8ff9"), ("libzmq", "#9d6fdb"),
    ("libczmq", "#b497e6"), ("libsodium", "#3fb68b"), ("libc", "#c9c9c9"),
    ("kernel", "#f2c94c"), ("", "#e0a060")]


def stacks(lines, comms):
    """Yields (stack root first, weight) per sample of the given commands."""
    stack, keep = [], False
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if keep and stack:
                yield tuple(reversed(stack)), 1
            stack, keep = [], False
            continue
        if not line.startswith((" ", "\t")):
            keep = line.split(None, 1)[0] in comms
            continue
        if keep:
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                continue
            name, where = parts[1].rsplit(" (", 1) if " (" in parts[1] else (parts[1], "")
            name = name.split("+0x")[0]
            lib = where.rstrip(")").rsplit("/", 1)[-1]
            if name == "[unknown]":
                name = "[" + (lib or "unknown") + "]"
            if "kernel" in lib or lib.startswith("[k"):
                lib = "kernel"
            stack.append((name, lib))
    if keep and stack:
        yield tuple(reversed(stack)), 1


def colour(lib):
    for part, fill in COLOURS:
        if part in lib:
            return fill
    return COLOURS[-1][1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comm", action="append", default=[],
                        help="command name whose samples count (repeatable; default kim-broker)")
    parser.add_argument("--title", default="kim-broker, W1")
    args = parser.parse_args()
    comms = set(args.comm or ["kim-broker"])
    tree = lambda: collections.defaultdict(tree)  # noqa: E731
    root, counts, total = tree(), collections.Counter(), 0
    for stack, weight in stacks(sys.stdin, comms):
        total += weight
        node, path = root, ()
        for frame in stack:
            path += (frame,)
            counts[path] += weight
            node = node[frame]
    if not total:
        sys.exit("no samples of %s in the input" % ", ".join(sorted(comms)))
    rects, depth_max = [], 0

    def walk(node, path, x, depth):
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        for frame in sorted(node, key=lambda f: -counts[path + (f,)]):
            share = counts[path + (frame,)] / total
            width = share * WIDTH
            if width >= 0.5:
                rects.append((x, depth, width, frame, share))
                walk(node[frame], path + (frame,), x, depth + 1)
            x += width

    walk(root, (), 0.0, 0)
    height = (depth_max + 3) * ROW
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="monospace" '
           'font-size="%d">' % (WIDTH, height, FONT),
           '<text x="4" y="%d">%s: %d samples; width = share of the CPU time. Colours: kim, '
           'LMDB, ZeroMQ, libsodium, libc, kernel</text>' % (ROW - 4, html.escape(args.title), total)]
    for x, depth, width, (name, lib), share in rects:
        y = height - (depth + 1) * ROW
        label = "%s (%s) %.1f%%" % (name, lib or "?", share * 100)
        out.append('<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" '
                   'fill="%s" stroke="white" stroke-width="0.3"/>' % (
                       html.escape(label), x, y, width, ROW - 1, colour(lib)))
        chars = int(width / (FONT * 0.62))
        if chars >= 4:
            text = name if len(name) <= chars else name[:chars - 1] + "…"
            out.append('<text x="%.1f" y="%d">%s</text>' % (x + 2, y + ROW - 4, html.escape(text)))
        out.append("</g>")
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
