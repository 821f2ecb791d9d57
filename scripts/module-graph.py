#!/usr/bin/env python3
"""Print which top-level module of src/ uses which (from `use crate::...` and `crate::x::` paths),
and any cycles among second-level modules (e.g. run::up <-> run::down).

Usage: scripts/module-graph.py [--level 1|2]
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

LEVEL = int(sys.argv[sys.argv.index('--level') + 1]) if '--level' in sys.argv else 2


def module_of(path: Path) -> str:
    parts = list(path.relative_to('src').with_suffix('').parts)
    if parts[-1] == 'mod':
        parts = parts[:-1]
    return '::'.join(parts[:LEVEL]) or 'lib'


def main():
    edges = defaultdict(set)
    for path in Path('src').rglob('*.rs'):
        if path.name == 'tests.rs':
            continue  # unit tests may use anything
        src = module_of(path)
        text = path.read_text()
        text = text.split('#[cfg(test)]')[0]  # tests may use anything
        text = '\n'.join(l for l in text.splitlines() if not l.lstrip().startswith('//'))
        for m in re.finditer(r'crate::((?:\w+::?){1,%d})' % LEVEL, text):
            dst = '::'.join([p for p in m.group(1).split('::') if p][:LEVEL])
            if dst and not src.startswith(dst) and not dst.startswith(src):
                edges[src].add(dst)
        here = src.split('::')
        for m in re.finditer(r'\bsuper::(\w+)', text):
            if len(here) >= 2 and path.name != 'mod.rs':
                dst = '::'.join(here[:-1] + [m.group(1)])[: len(src) + 40]
                dst = '::'.join(dst.split('::')[:LEVEL])
                if dst != src and not src.startswith(dst):
                    edges[src].add(dst)
    for s in sorted(edges):
        print(f'{s} -> {", ".join(sorted(edges[s]))}')
    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
    print('cycles:', ', '.join(f'{a} <-> {b}' for a, b in cycles) or 'none')


if __name__ == '__main__':
    main()
