"""A bundle's C on a Cortex-M: a bare-metal project for one of QEMU's Arm boards (the Cortex-M0 of
the micro:bit, the M3, M4, M7, M33 and M55 of the MPS2/MPS3 boards: :data:`TARGETS`), built with
the Arm GNU toolchain and run in ``qemu-system-arm``.

:func:`write_project` writes the generated model (``NAME.h``, ``NAME.c``), the images it runs on
(``inputs.h``), a startup file (vector table, ``.data`` copy, ``.bss`` clear), a ``main`` that
runs every image and prints its integer logits and the SysTick ticks it took through semihosting
(newlib-nano, no other library), a linker script for the board's memory map and a ``Makefile``.
:func:`build` compiles it (``arm-none-eabi-gcc -mcpu=CORE -mthumb -Os``) and measures the model's
flash (``.text`` + ``.rodata`` + ``.data`` of the model's object) and RAM (its ``.data`` +
``.bss``, plus its stack scratch) with ``arm-none-eabi-size``. :func:`run` runs the image in QEMU
with ``-icount shift=0`` (the virtual clock advances 1 ns per instruction), so SysTick's ticks
count instructions: ``main`` first times a loop of known length to find instructions per tick.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...errors import CodegenError, CompilerNotFoundError, ConfigError


@dataclass(frozen=True)
class Target:
    """A core and the QEMU board that has it: where code (as flash) and data (RAM) live there."""

    machine: str  # qemu-system-arm -M
    flash: int  # origin of the code memory the core boots from (its vector table)
    ram: int  # origin of the data memory
    flash_length: str  # their sizes, as the linker script writes them
    ram_length: str


# The M0 and M3 have no DSP extension (byte lanes in plain 32-bit adds, binary searches); the M4, M7,
# M33 (in secure state) and M55 (not Helium) run the DSP extension's forms.
TARGETS = {
    "cortex-m0": Target("microbit", 0x00000000, 0x20000000, "256K", "16K"),  # Armv6-M: small models
    "cortex-m3": Target("mps2-an385", 0x00000000, 0x20000000, "4M", "4M"),
    "cortex-m4": Target("mps2-an386", 0x00000000, 0x20000000, "4M", "4M"),
    "cortex-m7": Target("mps2-an500", 0x00000000, 0x20000000, "4M", "4M"),
    "cortex-m33": Target("mps2-an505", 0x10000000, 0x38000000, "4M", "2M"),
    "cortex-m55": Target("mps3-an547", 0x00000000, 0x20000000, "512K", "512K"),  # its ITCM and DTCM
}


def board(target: str) -> Target:
    """The board of core ``target``; a ConfigError naming the cores there are otherwise."""
    if target not in TARGETS:
        raise ConfigError("target", target, ", ".join(map(repr, TARGETS)))
    return TARGETS[target]


CC, SIZE, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"
LDFLAGS = ["-nostartfiles", "--specs=nano.specs", "--specs=rdimon.specs", "-Wl,--gc-sections", "-T", "link.ld"]


def cflags(target: str) -> list[str]:
    """The compiler's flags for ``target``'s core."""
    return ["-std=c99", f"-mcpu={target}", "-mthumb", "-Os", "-ffunction-sections", "-fdata-sections", "-Wall"]


SPIN = 1_000_000  # iterations of the two-instruction calibration loop

LINKER = """\
/* {machine} ({core}): code and constants in its boot memory (as flash), data in its RAM. */
ENTRY(Reset_Handler)
MEMORY
{{
    FLASH (rx) : ORIGIN = {flash:#010x}, LENGTH = {flash_length}
    RAM (rwx)  : ORIGIN = {ram:#010x}, LENGTH = {ram_length}
}}
_estack = ORIGIN(RAM) + LENGTH(RAM);
SECTIONS
{{
    .isr_vector : {{ KEEP(*(.isr_vector)) }} > FLASH
    .text : {{ *(.text*) *(.rodata*) KEEP(*(.init)) KEEP(*(.fini)) . = ALIGN(8); }} > FLASH
    .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
    _sidata = LOADADDR(.data);
    .data : {{ . = ALIGN(8); _sdata = .; *(.data*) . = ALIGN(8); _edata = .; }} > RAM AT > FLASH
    .bss (NOLOAD) : {{ . = ALIGN(8); _sbss = .; *(.bss*) *(COMMON) . = ALIGN(8); _ebss = .; }} > RAM
    end = .;
    _end = .;
}}
"""

STARTUP = """\
/* Cortex-M startup: the vector table, .data copied from flash, .bss cleared, then main. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void Reset_Handler(void);
void SysTick_Handler(void);

static void Default_Handler(void) { for (;;) {} }
void _init(void) {}
void _fini(void) {}

__attribute__((section(".isr_vector"), used))
static void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler,
    SysTick_Handler,
};

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    exit(main());
}
"""

MAIN = """\
/* Runs NAME on every image of inputs.h; prints its integer logits and the SysTick ticks it took. */
#include <stdint.h>
#include <stdio.h>
#include "{name}.h"
#include "inputs.h"

extern void initialise_monitor_handles(void);

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static volatile uint32_t wraps;
void SysTick_Handler(void) {{ wraps++; }}

static uint32_t ticks(void)
{{
    uint32_t w, v;
    do {{ w = wraps; v = SYST_CVR; }} while (w != wraps);
    return (w << 24) + (0xFFFFFFu - v);
}}

static void spin(uint32_t n)
{{
    __asm volatile(".syntax unified\\n1: subs %0, %0, #1\\n bne 1b" : "+r"(n) : : "cc");  /* Armv6-M too */
}}

int main(void)
{{
    static int32_t logits[{up}_OUTPUT_SIZE];
    uint32_t t0, t1;
    int i, j;
    initialise_monitor_handles();
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u;  /* processor clock, interrupt, enabled */
    while (SYST_CVR == 0u) {{}}  /* the first reload */
    t0 = ticks();
    spin({spin}u);
    t1 = ticks();
    printf("calibration %lu %lu\\n", (unsigned long){spin2}u, (unsigned long)(t1 - t0));
    for (i = 0; i < SQ_IMAGES; i++) {{
        t0 = ticks();
        {name}_run(sq_images[i], logits);
        t1 = ticks();
        printf("image %d %lu", i, (unsigned long)(t1 - t0));
        for (j = 0; j < {up}_OUTPUT_SIZE; j++) printf(" %ld", (long)logits[j]);
        printf("\\n");
    }}
    return 0;
}}
"""


def _makefile(name: str, target: str) -> str:
    return f"""\
# Builds {name}.elf for QEMU's {TARGETS[target].machine} ({target}) and runs it: make && make run
CC = {CC}
CFLAGS = {' '.join(cflags(target))}
LDFLAGS = {' '.join(LDFLAGS)}

{name}.elf: startup.c main.c {name}.c {name}.h inputs.h link.ld
\t$(CC) $(CFLAGS) startup.c main.c {name}.c $(LDFLAGS) -o $@
\t{SIZE} $@

run: {name}.elf
\t{' '.join(_qemu(target, name + '.elf'))}
"""


def _qemu(target: str, elf: str) -> list[str]:
    return [QEMU, "-M", TARGETS[target].machine, "-nographic", "-icount", "shift=0", "-semihosting-config",
            "enable=on,target=native", "-kernel", elf]


def _bytes(length: str) -> int:
    """A linker script's length ("16K", "4M") in bytes."""
    return int(length[:-1]) << {"K": 10, "M": 20}[length[-1]]


def _inputs(images: np.ndarray, ctype: str, size: int) -> str:
    rows = [", ".join(str(int(v)) for v in image.reshape(-1)) for image in images]
    body = ",\n    ".join("{" + r + "}" for r in rows)
    return (f"/* {len(images)} input images (generated by shiftquant). */\n#define SQ_IMAGES {len(images)}\n"
            f"static const {ctype} sq_images[SQ_IMAGES][{size}] = {{\n    {body}\n}};\n")


def write_project(bundle, outdir, name: str = "model", images=None, target: str = "cortex-m4"):
    """The project for ``target`` in ``outdir``: the model's C and the files around it, running
    ``images`` (integer inputs of the bundle's input shape, default one zero image). Returns the
    lowered program."""
    from . import codegen

    target_board = board(target)
    program = codegen(bundle, outdir, name, borders="minimal")  # least RAM and fewest instructions
    if program.input_kind != "pixels" or program.output_kind != "logits":
        raise CodegenError("a microcontroller project needs an integer-only bundle (pixels in, integer logits out)")
    for what, need, length in (("RAM", program.ram_bytes, lambda b: b.ram_length),
                               ("flash for its constants", program.flash_bytes, lambda b: b.flash_length)):
        if need > _bytes(length(target_board)):  # the linker checks the rest (code, newlib, the stack it leaves)
            fits = [t for t, b in TARGETS.items() if need <= _bytes(length(b))]
            raise ConfigError("target", target, f"a core whose board has the {need:,} bytes of {what} this model "
                              f"needs ({target_board.machine} has {length(target_board)}B): "
                              + ", ".join(map(repr, fits)))
    size = int(np.prod(program.input.shape))
    images = np.zeros((1, size), np.int64) if images is None else np.asarray(images).reshape(len(images), -1)
    if images.shape[1] != size or images.min(initial=0) < program.input.lo or images.max(initial=0) > program.input.hi:
        raise ConfigError("images", f"shape {list(images.shape)}", f"(n, {size}) integers {program.input.lo} to "
                          f"{program.input.hi}")
    out = Path(outdir)
    files = {"link.ld": LINKER.format(core=target, **asdict(target_board)), "startup.c": STARTUP, "Makefile": _makefile(name, target),
             "main.c": MAIN.format(name=name, up=name.upper(), spin=SPIN, spin2=2 * SPIN),
             "inputs.h": _inputs(images, program.input.ctype, size)}
    for fname, text in files.items():
        (out / fname).write_text(text)
    return program


@dataclass
class Build:
    elf: Path
    flash_bytes: int  # the model's .text + .rodata + .data
    ram_bytes: int  # the model's .data + .bss, plus its stack scratch
    sections: dict  # the model object's text / data / bss as arm-none-eabi-size reports them
    warnings: str = ""  # what the compiler said about the model's C (-Wall)
    target: str = "cortex-m4"


def tools_missing() -> list[str]:
    return [t for t in (CC, SIZE, QEMU) if shutil.which(t) is None]


def build(outdir, name: str = "model", stack_bytes: int = 0, target: str = "cortex-m4") -> Build:
    """Compile the project :func:`write_project` wrote for ``target``; the model's sizes from its
    object file."""
    if shutil.which(CC) is None:
        raise CompilerNotFoundError(f"{CC} not found: install the Arm GNU toolchain (Debian: gcc-arm-none-eabi "
                                    "libnewlib-arm-none-eabi)")
    board(target)
    out, flags = Path(outdir), cflags(target)
    said = {}  # the compiler's messages, per output
    for args in ([CC, *flags, "-c", f"{name}.c", "-o", f"{name}.o"],
                 [CC, *flags, "startup.c", "main.c", f"{name}.o", *LDFLAGS, "-o", f"{name}.elf"]):
        done = subprocess.run(args, cwd=out, capture_output=True, text=True)
        if done.returncode != 0:
            raise CodegenError(f"{' '.join(args[:2])}... failed:\n{done.stderr[-2000:]}")
        said[args[-1]] = done.stderr
    text, data, bss = _size(out / f"{name}.o")
    return Build(out / f"{name}.elf", text + data, data + bss + stack_bytes, {"text": text, "data": data, "bss": bss},
                 said[f"{name}.o"], target)


def measure(bundle, target: str = "cortex-m4") -> Build:
    """The model's sizes on ``target``: its project written and built in a temporary folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        program = write_project(bundle, tmp, "model", target=target)
        return build(tmp, "model", program.stack_bytes, target)


STAMP = "/* Built for a Cortex-M"


def stamp_header(header, name: str, built: Build) -> None:
    """Add the measured flash and RAM of ``built`` to the generated header ``header``
    (``NAME_CORTEX_M4_FLASH_BYTES`` for a Cortex-M4), replacing any earlier build's."""
    path, up = Path(header), name.upper()
    core = built.target.upper().replace("-", "_")
    lines = [line for line in path.read_text().splitlines() if not line.startswith((STAMP, f"#define {up}_CORTEX_M"))]
    end = max(i for i, line in enumerate(lines) if line.startswith("#endif"))
    lines[end:end] = [f"{STAMP}{built.target[len('cortex-m'):]} ({' '.join([CC, *cflags(built.target)])}, "
                      "arm-none-eabi-size of the model's object): flash is .text + .rodata + .data, RAM .data + .bss "
                      "+ stack scratch. */",
                      f"#define {up}_{core}_FLASH_BYTES ({built.flash_bytes})",
                      f"#define {up}_{core}_RAM_BYTES ({built.ram_bytes})", ""]
    path.write_text("\n".join(lines) + "\n")


def _size(path: Path) -> tuple[int, int, int]:
    lines = subprocess.run([SIZE, str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return text, data, bss


@dataclass
class Run:
    logits: np.ndarray  # (images, outputs) int64
    instructions: np.ndarray  # per image, from SysTick ticks and the calibration loop


def run(elf, timeout: float = 600.0, target: str = "cortex-m4") -> Run:
    """Run a project built for ``target`` in QEMU; its logits and instructions per image."""
    if shutil.which(QEMU) is None:
        raise CompilerNotFoundError(f"{QEMU} not found (Debian: qemu-system-arm)")
    board(target)
    done = subprocess.run(_qemu(target, os.fspath(elf)), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise CodegenError(f"{QEMU} exited with {done.returncode}: {done.stderr[-1000:]}")
    cal = re.search(r"^calibration (\d+) (\d+)$", done.stdout, re.M)
    rows = [line.split()[2:] for line in done.stdout.splitlines() if line.startswith("image ")]
    if cal is None or not rows:
        raise CodegenError(f"unexpected output from the target: {done.stdout[-500:]!r}")
    per_tick = int(cal.group(1)) / max(int(cal.group(2)), 1)
    table = np.asarray(rows, dtype=np.int64)
    return Run(table[:, 1:], table[:, 0] * per_tick)
