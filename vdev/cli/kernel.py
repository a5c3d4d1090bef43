"""`vdev kernel`: build a kernel developer's tree for the guest, check a
KERNEL/KDIR pair, fetch Debian's kernel source (docs/kernel-developers.md).

  vdev kernel build KSRC [--out DIR] [--kconfig FILE] [--llvm 1|-NN] [-j N]
  vdev kernel check --kernel IMAGE [--kdir DIR]
  vdev kernel fetch-debian DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vdev.vm.env import VmEnvError


def _say(msg: str) -> None:
    print(f"[kernel] {msg}", flush=True)


def _fail(msg: str, rc: int = 1) -> int:
    print(f"vdev kernel: {msg}", file=sys.stderr, flush=True)
    return rc


def cmd_build(args: argparse.Namespace) -> int:
    from vdev.vm.kernel import build_kernel

    try:
        built = build_kernel(args.ksrc, args.out, kconfig=args.kconfig, llvm=args.llvm,
                             jobs=args.jobs, say=_say)
    except VmEnvError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; the tree is as kbuild left it (run it again to continue)", 130)
    _say(f"next: make run {built.run_args()}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from vdev.vm.env import find_env
    from vdev.vm.kernel import check_pair

    try:
        env = find_env()
        guest = check_pair(args.kernel, args.kdir, env.default_kernel, say=_say)
    except VmEnvError as exc:
        return _fail(str(exc))
    img = guest.image
    _say(f"{img.path}: {img.kind}, release {img.release}"
         + (", PVH entry note" if img.kind == "vmlinux" else ""))
    _say(f"modules build against {guest.tree.build if guest.tree else 'Debian headers'}: ok")
    return 0


def cmd_fetch_debian(args: argparse.Namespace) -> int:
    from vdev.vm.debian_source import PACKAGE, SUITE, fetch

    dest = Path(args.dir).expanduser().resolve() / PACKAGE
    if dest.exists():
        return _fail(f"{dest} exists; remove it or choose another directory")
    _say(f"fetching {PACKAGE} from {SUITE} (about 170 MB) into {dest}")
    try:
        src = fetch(dest)
    except VmEnvError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was left behind", 130)
    _say(f"{PACKAGE} {src.version} in {src.tree}")
    _say(f"next: make kernel KSRC={src.tree}   (or make run KSRC={src.tree})")
    return 0


def add_kernel_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("kernel", help="build your kernel tree for the guest "
                       "(docs/kernel-developers.md)")
    ksub = k.add_subparsers(dest="kernel_command", required=True)
    b = ksub.add_parser("build", help="configure (guest/kernel.config) and build a kernel tree")
    b.add_argument("ksrc", metavar="KSRC", help="the kernel source tree")
    b.add_argument("--out", "-O", metavar="DIR", help="build directory (kbuild's O=)")
    b.add_argument("--kconfig", metavar="FILE", help="your own config fragment, merged last")
    b.add_argument("--llvm", metavar="1|-NN", help="build with clang (kbuild's LLVM=)")
    b.add_argument("--jobs", "-j", type=int, metavar="N", help="parallel jobs (default: CPUs)")
    b.set_defaults(func=cmd_build)
    c = ksub.add_parser("check", help="check a KERNEL/KDIR pair as `make run` does")
    c.add_argument("--kernel", metavar="IMAGE", help="bzImage or vmlinux")
    c.add_argument("--kdir", metavar="DIR", help="its build tree")
    c.set_defaults(func=cmd_check)
    f = ksub.add_parser("fetch-debian", help="download and unpack Debian's linux-source-7.3")
    f.add_argument("dir", metavar="DIR", help="where to unpack it (DIR/linux-source-7.3)")
    f.set_defaults(func=cmd_fetch_debian)
