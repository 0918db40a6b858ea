"""
Summarise a py-spy raw (collapsed stacks) profile: top frames by self time
(the leaf of each sample) and by total time (anywhere on the stack).

    /tmp/venv/bin/py-spy record -p PID -d 5 -f raw -o FILE
    python bench/http/pyspy_top.py FILE [N]
"""

import collections
import sys


def main() -> None:
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25
    self_t: collections.Counter = collections.Counter()
    total_t: collections.Counter = collections.Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            c = int(count)
            frames = stack.split(";")
            samples += c
            self_t[frames[-1]] += c
            for fr in set(frames):
                total_t[fr] += c
    print(f"{samples} samples")
    print(f"\ntop {n} by self time:")
    for fr, c in self_t.most_common(n):
        print(f"{100 * c / samples:5.1f}%  {fr}")
    print(f"\ntop {n} by total time:")
    for fr, c in total_t.most_common(n):
        print(f"{100 * c / samples:5.1f}%  {fr}")


if __name__ == "__main__":
    main()
