#!/usr/bin/env python3
"""Print the longest functions in src/ (lines from `fn` to its closing brace), longest first.

Usage: scripts/fn-lengths.py [LIMIT]   # exit 1 if any function is longer than LIMIT lines
Brace matching skips strings, chars and comments well enough for rustfmt-formatted code.
"""
import re
import sys
from pathlib import Path

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)')


def body_lines(lines, start):
    depth, seen = 0, False
    for i in range(start, len(lines)):
        code = re.sub(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])\'|//.*', '', lines[i])
        for ch in code:
            if ch == '{':
                depth += 1
                seen = True
            elif ch == '}':
                depth -= 1
        if seen and depth == 0:
            return i - start + 1
        if not seen and code.rstrip().endswith(';'):
            return 0  # a declaration without a body
    return 0


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    found = []
    for path in sorted(Path('src').rglob('*.rs')):
        lines = path.read_text().splitlines()
        in_tests = False
        for i, line in enumerate(lines):
            if line.startswith('#[cfg(test)]'):
                in_tests = True
            m = FN.match(line)
            if m and not in_tests:
                found.append((body_lines(lines, i), f'{path}:{i + 1}', m.group(6)))
    found.sort(reverse=True)
    for n, where, name in found[:15]:
        print(f'{n:5} {where} {name}')
    if limit is not None and found and found[0][0] > limit:
        sys.exit(1)


if __name__ == '__main__':
    main()
