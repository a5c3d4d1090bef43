"""`vdev qemu build` (make qemu): QEMU with our root-port IDE series, built into the
cache (qemu/README.md); prints the binary's path.

  vdev qemu build [--check] [-j N]
"""

from __future__ import annotations

import argparse
import sys


def cmd_build(args: argparse.Namespace) -> int:
    from vdev.vm.qemu_build import QemuBuildError, ensure_qemu, stop_children

    try:
        binary = ensure_qemu(jobs=args.jobs, check=args.check)
    except QemuBuildError as exc:
        stop_children()
        print(f"vdev qemu build: {exc}", file=sys.stderr)
        return 1
    except BaseException:  # interrupted, or an error the command line's guard words;
        stop_children()  # ensure_qemu removed its partial results on the way out
        raise
    print(binary)
    return 0


def add_qemu_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = sub.add_parser("qemu", help="build the patched QEMU (qemu/README.md)")
    qsub = q.add_subparsers(dest="qemu_command", required=True)
    b = qsub.add_parser("build", help="build QEMU with the root-port IDE series into the "
                        "cache (once) and print its path")
    b.add_argument("--check", action="store_true",
                   help="run the series' qtests even if the build is cached")
    b.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="parallel compile jobs (default: all CPUs, niced)")
    b.set_defaults(func=cmd_build)
