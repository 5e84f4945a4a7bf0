#!/usr/bin/env python3
"""NEON inner loops of the product kernels through llvm-mca: cycles per iteration on the
Cortex-A72 (Pi 4), A76 (Pi 5) and A78 (Orin's A78AE) scheduling models, against the peak the
same model gives a block of independent multiply-adds of that kind.

Run from the repository root: `python3 boards/neon_mca.py` (needs the aarch64 rustup target and
Debian's llvm-19: `apt-get install llvm-19`; LLVM 14's llvm-mca, Debian's default `llvm`, schedules
all three cores with the Cortex-A57 model, so it cannot tell them apart; `LLVM_MCA=path` picks
another; prints markdown). It emits the kernels crate's assembly for aarch64, finds each
kernel's innermost single-block loop (the block that branches back to itself and holds the
multiply-adds), and feeds that block to `llvm-mca -iterations=200`.

Multiply-adds counted per instruction: `fmla v.4s` 4 (f32), `sdot v.4s` 16 (i8), `smlal`/
`smlal2 v.4s` 4 (i16 -> i32).
"""

import glob
import os
import re
import subprocess
import sys

# (core, llvm-mca model). LLVM 19 maps -mcpu=cortex-a72, cortex-a76 and cortex-a78 all to its
# Cortex-A57 model (checked: identical resources and cycles), so each core gets the closest
# model LLVM has: the A57 model for the A72 (the same two 128-bit ASIMD pipes; LLVM has no A72
# model), the Neoverse N1 model for the A76 (N1 *is* the A76 core) and for the A78 (an A76
# descendant with the same two 128-bit ASIMD pipes; LLVM has no A78 model, and its X1/V1 model
# has four).
CPUS = [("A72 (Pi 4)", "cortex-a72"), ("A76 (Pi 5)", "neoverse-n1"), ("A78 (Orin)", "neoverse-n1")]
MCA = os.environ.get("LLVM_MCA", "llvm-mca-19")
MACS = {"fmla": 4, "sdot": 16, "smlal": 4, "smlal2": 4}
# Kernel -> (symbol pattern, instruction that marks its loop).
KERNELS = {
    "fp32 linear 6x16 block (NEON)": (r"linear9run_block", "fmla"),
    "int8 SDOT 6-row tile": (r"int813tile_neon_dot", "sdot"),
    # Inlined into `multiply` (the SDOT tile is not: it has its own target features).
    "int8 smlal 6-row tile (no SDOT)": (r"int88multiply", "smlal"),
}


def asm_file():
    subprocess.run(
        ["cargo", "rustc", "--profile", "iter", "--target", "aarch64-unknown-linux-gnu",
         "-p", "sonomask-kernels", "--lib", "--", "--emit", "asm", "-C", "codegen-units=1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = glob.glob("target/aarch64-unknown-linux-gnu/iter/deps/sonomask_kernels-*.s")
    return max(files, key=os.path.getmtime)


def functions(lines):
    """Symbol -> its lines."""
    out, name = {}, None
    for line in lines:
        m = re.match(r"^(_ZN\S+):$", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name:
            out[name].append(line)
    return out


def loops(body, mark):
    """Single-block loops (a label, then instructions ending in a branch back to it) holding
    `mark`, largest first."""
    found, label, block = [], None, []
    for line in body:
        m = re.match(r"^(\.LBB\S+):", line)
        if m:
            label, block = m.group(1), []
            continue
        s = line.strip()
        if not s or s.startswith((".", "//", "@")):
            continue
        block.append(s)
        if label and re.match(r"^b(\.\w+)?\s|^cbn?z\s|^tbn?z\s", s) and s.endswith(label):
            if any(i.split()[0] == mark for i in block):
                found.append(list(block))
            label = None
    return sorted(found, key=len, reverse=True)


def mca(block, cpu):
    """Cycles per iteration (llvm-mca's total cycles / iterations)."""
    text = "\n".join(block) + "\n"
    r = subprocess.run([MCA, "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod",
                        "-iterations=200"], input=text, capture_output=True, text=True, check=True)
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", r.stdout).group(1))
    return cycles / 200


def macs(block):
    return sum(MACS.get(i.split()[0], 0) for i in block if i.split()[0] in MACS)


def peak_block(mark):
    """12 independent multiply-adds of one kind: the model's best rate for it."""
    form = {"fmla": "fmla v{d}.4s, v20.4s, v21.4s", "sdot": "sdot v{d}.4s, v20.16b, v21.16b",
            "smlal": "smlal v{d}.4s, v20.4h, v21.4h"}[mark]
    return [form.format(d=d) for d in range(12)]


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    fns = functions(open(asm_file()).read().splitlines())
    print("| kernel (inner loop) | instructions | multiply-adds | "
          + " | ".join(f"{c} [{m}] cycles/iter, MAC/cycle (peak)" for c, m in CPUS) + " |")
    print("|---|---|---|" + "---|" * len(CPUS))
    for title, (pat, mark) in KERNELS.items():
        names = [n for n in fns if re.search(pat, n)]
        if not names:
            sys.exit(f"no function matching {pat}")
        blocks = [b for n in names for b in loops(fns[n], mark)]
        if not blocks:
            sys.exit(f"no single-block {mark} loop in {names}")
        block = blocks[0]
        row = [title, str(len(block)), str(macs(block))]
        for _, cpu in CPUS:
            c = mca(block, cpu)
            p = macs(peak_block(mark)) / mca(peak_block(mark), cpu)
            row.append(f"{c:.1f}, {macs(block) / c:.1f} ({p:.1f})")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
