"""
A vmprof profile as collapsed stacks (the format py-spy's --format raw
writes and flame-graph tools read): one line per distinct stack,
C{frame;frame;...;leaf count}, each frame C{function (file:line)}.

    pypy bench/vmprof_collapse.py PROFILE OUTPUT

Run with vmprof importable (bench/.venv-profile-pypy on PYTHONPATH). Frames
of JIT-compiled or native code that vmprof cannot name are left out, so the
leaf is the innermost Python function.
"""

import sys

import vmprof


def frame(name):
    # vmprof names Python code "py:function:line:file".
    _, function, line, path = name.split(":", 3)
    return f"{function} ({path}:{line})"


def main():
    stats = vmprof.read_profile(sys.argv[1])
    counts = {}
    for profile in stats.profiles:
        names = [stats.adr_dict.get(address) for address in profile[0]]
        frames = [frame(name) for name in names if name and name.startswith("py:")]
        if frames:
            stack = ";".join(frames)
            counts[stack] = counts.get(stack, 0) + 1
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for stack, count in counts.items():
            out.write(f"{stack} {count}\n")


if __name__ == "__main__":
    main()
