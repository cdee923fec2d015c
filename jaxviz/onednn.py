"""oneDNN's convolution as an XLA custom call: the CPU's own best conv kernels, from JAX.

XLA:CPU's convs and batched dots run far below a CPU's matmul rate, and its bf16
convs do not reach AMX (bench/README.md). oneDNN (the library TensorFlow and PyTorch
use on CPUs) picks a kernel for the CPU it runs on: AMX or AVX512-bf16 tiles for
bfloat16, AVX-512 or AVX2 brgemm for float32. ``conv3x3`` calls its conv through
``jax.ffi``, ``batched_matmul`` its matmul, and ``winograd4`` is ``ops``' float32
Winograd conv in one call: its tile transforms in C++ (vectorized, on every core, a
cache-sized block of tiles at a time, each thread on blocks of its own where there are
enough) around oneDNN's matmul, with XLA's sums;
``winograd4_bias_relu``, ``winograd4_relu_grad`` and ``winograd4_pool_grad`` are a conv
layer (bias, relu, and the max pool after it) forward and backward, each in one such call,
optionally with the layer before's bias and relu too (``x_bias``).

The handlers (``native/onednn_conv.cc``) are compiled on first use with the C++
compiler (``$CXX``, a program or one with its options such as ``ccache g++``, else ``g++``;
for this CPU: ``-march=native``) against jaxlib's FFI headers and the oneDNN of the
PyPI wheels ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` (dependencies of jaxviz on
x86-64 Linux), and cached per source, jaxlib, oneDNN and CPU in jaxviz's cache folder
(``~/.cache/jaxviz/onednn`` by default; ``$JAXVIZ_CACHE`` or ``$XDG_CACHE_HOME`` move it).
Where any of these is missing, or ``JAXVIZ_ONEDNN=0`` is set, ``available()`` is False
and the pure-XLA convs of ``jaxviz.ops`` run instead.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxviz import checks
from jaxviz.errors import notice

ENV = "JAXVIZ_ONEDNN"  # "0" (or off, no, false, none): never use oneDNN (the pure-XLA convs run)
SOURCE = Path(__file__).parent / "native" / "onednn_conv.cc"
TARGETS = {jnp.dtype(jnp.float32): "jaxviz_onednn_conv_f32", jnp.dtype(jnp.bfloat16): "jaxviz_onednn_conv_bf16"}
MISSING = ("the onednn conv is not available here: it needs oneDNN 3 (pip install onednn-cpu-gomp onednn-devel-cpu-gomp; "
           "jaxviz installs them on x86-64 Linux), a C++ compiler (g++) and JAXVIZ_ONEDNN not 0; or use conv auto")
NO_BF16 = ("oneDNN has no bfloat16 conv on this CPU (it needs AVX-512 or AMX); use float32, or conv auto "
           "(bfloat16 then runs XLA's convs)")
STALE_S = 3600  # a compile's temporary file unwritten this long was left by a killed run (a compile takes ~30 s)
COMPILE_LIMIT_S = 900  # a compile still running after this (30x its time on 2 cores) is a hung $CXX: XLA's convs run
MATMUL = "jaxviz_onednn_batched_matmul_f32"
KERNEL = "jaxviz_winograd_kernel_f32"
WINOGRAD = "jaxviz_winograd4_f32"
WINOGRAD_BIAS_RELU = "jaxviz_winograd4_bias_relu_f32"
WINOGRAD_BIAS_RELU_POOL = "jaxviz_winograd4_bias_relu_pool_f32"
WINOGRAD_RELU_GRAD = "jaxviz_winograd4_relu_grad_f32"
WINOGRAD_POOL_GRAD = "jaxviz_winograd4_pool_grad_f32"
WINOGRAD_IN_RELU_BIAS_RELU = "jaxviz_winograd4_in_relu_bias_relu_f32"
WINOGRAD_IN_RELU_BIAS_RELU_POOL = "jaxviz_winograd4_in_relu_bias_relu_pool_f32"
WINOGRAD_IN_RELU_GRAD = "jaxviz_winograd4_in_relu_grad_f32"
WINOGRAD_IN_POOL_GRAD = "jaxviz_winograd4_in_pool_grad_f32"
SYMBOLS = {"jaxviz_onednn_conv_f32": "JaxvizOnednnConvF32", "jaxviz_onednn_conv_bf16": "JaxvizOnednnConvBF16",
           MATMUL: "JaxvizOnednnBatchedMatmulF32", KERNEL: "JaxvizWinogradKernelF32", WINOGRAD: "JaxvizWinograd4F32",
           WINOGRAD_BIAS_RELU: "JaxvizWinograd4BiasReluF32", WINOGRAD_BIAS_RELU_POOL: "JaxvizWinograd4BiasReluPoolF32",
           WINOGRAD_RELU_GRAD: "JaxvizWinograd4ReluGradF32", WINOGRAD_POOL_GRAD: "JaxvizWinograd4PoolGradF32",
           WINOGRAD_IN_RELU_BIAS_RELU: "JaxvizWinograd4InReluBiasReluF32",
           WINOGRAD_IN_RELU_BIAS_RELU_POOL: "JaxvizWinograd4InReluBiasReluPoolF32",
           WINOGRAD_IN_RELU_GRAD: "JaxvizWinograd4InReluGradF32", WINOGRAD_IN_POOL_GRAD: "JaxvizWinograd4InPoolGradF32"}


def _prefix() -> Path | None:
    """The environment whose ``include/`` and ``lib/`` hold oneDNN 3 (the PyPI wheels install there)."""
    for root in dict.fromkeys((sys.prefix, sys.base_prefix)):
        p = Path(root)
        if (p / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and (p / "lib" / "libdnnl.so.3").exists():
            return p
    return None


def _cache_dir() -> Path:
    """The folder of compiled handlers: ``onednn/`` in jaxviz's cache (``weights.default_cache_dir``:
    ``$JAXVIZ_CACHE``, an absolute ``$XDG_CACHE_HOME``/jaxviz, else ~/.cache/jaxviz)."""
    from jaxviz.weights import default_cache_dir

    return default_cache_dir() / "onednn"


def cpu_signature() -> bytes:
    """This CPU's model (name, family, number) and flags: what code compiled for the CPU it runs on
    (-march=native, which tunes by family and model; the library here, XLA's executables in
    ``compile_cache``) is valid for."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return b"".join(sorted({l for l in f if l.startswith((b"model", b"cpu family", b"flags"))}))
    except OSError:
        return b""


# Runs the compile (argv: the temporary file, the library, the compiler's command line), then puts
# the library in place, on disk before it has its name, or removes the temporary file: a process
# of its own, so that a command stopped during the half-minute compile (SIGTERM, or Ctrl-C and
# os._exit from cli_run) leaves the whole library or nothing, never a temporary file. Ctrl-C, a
# closed terminal or a SIGTERM to the process group reach the compiler too, ending it without a library.
_COMPILE = """
import os, signal, subprocess, sys
for s in (signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.default_int_handler)
tmp, out = sys.argv[1:3]
try:
    code = subprocess.run(sys.argv[3:]).returncode
    if code == 0:
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, out)
except KeyboardInterrupt:
    code = 130
finally:
    if os.path.exists(tmp):
        os.unlink(tmp)
sys.exit(code)
"""


def _whole(path: Path) -> bool:
    """Whether ``path`` is a whole 64-bit ELF file: every segment and table its header names lies
    inside it. Loading a cut-short library (a crash before its data reached the disk, a bad copy)
    kills the process with SIGBUS, where a damaged one is to be built again."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":  # 64-bit, little-endian
        return False
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    if phentsize < 56 or phoff + phnum * phentsize > len(data) or shoff + shnum * shentsize > len(data):
        return False
    for i in range(phnum):
        offset, _, _, filesz = struct.unpack_from("<QQQQ", data, phoff + i * phentsize + 8)
        if offset + filesz > len(data):
            return False
    return True


def _build(prefix: Path) -> Path:
    """The compiled handlers for this source, jaxlib and oneDNN (compiled now if not cached)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise OSError("no C++ compiler (g++ or $CXX)")
    lib = (prefix / "lib" / "libdnnl.so.3").resolve()
    tag = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), jax.ffi.include_dir().encode(),
                                     jax.__version__.encode(), str(lib).encode(), cxx.encode(), cpu_signature()])).hexdigest()[:16]
    out = _cache_dir() / f"onednn_conv-{tag}.so"
    if _whole(out):
        return out
    compiler = _compiler(cxx)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out.parent)
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    except OSError as e:  # XDG_CACHE_HOME a file, say: name the folder, not a missing oneDNN
        from jaxviz.image import in_the_way

        raise OSError(f"cannot write the build cache folder {out.parent} ({in_the_way(out.parent) or e.strerror}); "
                      "point JAXVIZ_CACHE (or XDG_CACHE_HOME) at a writable folder") from None
    os.close(fd)
    # no FMA contraction: the Winograd transforms round as XLA's do (native/onednn_conv.cc)
    cmd = [*compiler, "-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}",
           str(SOURCE), "-o", tmp, f"-L{lib.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib.parent}"]
    notice(f"jaxviz: compiling oneDNN's conv for this CPU, once (about half a minute on 2 cores; kept in {out.parent})")
    try:
        helper = subprocess.Popen([sys.executable or "python3", "-I", "-c", _COMPILE, tmp, str(out), *cmd],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = helper.communicate(timeout=COMPILE_LIMIT_S)
        except BaseException as e:  # a KeyboardInterrupt of this process alone (a notebook's), or the limit: the
            helper.terminate()  # helper stops the compiler and removes its file (killed, it would leave it writing)
            helper.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                raise OSError(f"compiling {SOURCE.name} took over {COMPILE_LIMIT_S} s and was stopped; check "
                              f"$CXX ({cxx}), or set JAXVIZ_ONEDNN=0") from None
            raise
        if helper.returncode != 0:
            lines = err.strip().splitlines()
            if any("No space left on device" in l for l in lines):  # the linker's line; gcc ends on "ld returned 1"
                raise OSError(f"compiling {SOURCE.name}: no space left on device in {out.parent} or the temporary "
                              "folder; free some space, or point JAXVIZ_CACHE (or TMPDIR) at another folder")
            raise OSError(f"compiling {SOURCE.name} failed: {lines[-1] if lines else f'exit status {helper.returncode}'}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _remove_stale(folder: Path) -> None:
    """Remove the compiles' temporary files that a killed run left in ``folder`` (a SIGKILL to its
    process group ends the helper too, before its clean-up; each run left a library's worth): those
    unwritten for STALE_S seconds."""
    now = time.time()
    for p in folder.glob("onednn_conv-*.so.*.tmp"):
        try:
            if now - p.stat().st_mtime > STALE_S:
                p.unlink()
        except OSError:
            pass


def _compiler(cxx: str) -> list[str]:
    """The compiler's command line start: ``cxx`` where it names a program, else its words (a
    ``$CXX`` of a compiler and its options, "ccache g++", as make and CMake take it); an OSError
    naming ``$CXX`` where there is no such program (the compile's helper ended in a traceback
    whose last line was all the notice said)."""
    try:
        words = [cxx] if shutil.which(cxx) else shlex.split(cxx)
    except ValueError:  # an unbalanced quote
        words = []
    if not words or shutil.which(words[0]) is None:
        raise OSError(f"CXX={cxx!r} names no program here; set CXX to a C++ compiler such as g++, or unset it")
    return words


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded handlers, registered with XLA, or None; why building or loading them failed,
    or None when they loaded or oneDNN is off or absent here). Once per process; a compile (first
    use on this CPU) is said as a notice, a failure is not (``_library`` says it)."""
    if checks.off(os.environ.get(ENV)) or not sys.platform.startswith("linux"):
        return None, None
    prefix = _prefix()
    if prefix is None:
        return None, None
    try:
        lib = ctypes.CDLL(str(_build(prefix)))
        handlers = {target: getattr(lib, symbol) for target, symbol in SYMBOLS.items()}
    except OSError as e:
        return None, str(e)
    except AttributeError as e:  # a whole library of other code (a $CXX that built something else): a traceback
        return None, f"{e}: not a build of {SOURCE.name}; delete it, and check $CXX"
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return lib, None


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    """The loaded handlers (once per process), or None where oneDNN cannot run; a failed build
    is said once, as a notice (``errors.notice``; XLA's convs run instead)."""
    lib, error = _load()
    if error:
        notice(f"jaxviz: oneDNN conv unavailable ({error}); using XLA's convs")
    return lib


def build_error() -> str | None:
    """Why oneDNN's handlers could not be built or loaded here (no compiler, a compile error,
    an unwritable cache folder), or None; says no failure on stderr (a command asking for the
    onednn conv reports it as its one line)."""
    return _load()[1]


def available() -> bool:
    """Whether ``conv3x3`` can run here (oneDNN 3 and a compiler found, ``JAXVIZ_ONEDNN`` not 0)."""
    return _library() is not None


def why_not(precision: str = "float32") -> str | None:
    """None where ``conv3x3`` runs here in ``precision``, else why not, in one line: oneDNN
    3.2 has no bfloat16 conv on a CPU with AVX2 only (its primitive cannot be created)."""
    if _library() is None:
        return build_error() or MISSING
    if precision == "bfloat16" and implementation((1, 8, 8, 16), 16, jnp.bfloat16) == "unavailable":
        return NO_BF16
    return None


@functools.lru_cache(maxsize=None)
def implementation(shape: tuple[int, int, int, int], out_channels: int, dtype=jnp.float32) -> str:
    """The kernel oneDNN picks on this CPU for an (N, H, W, C) input, e.g. "brgconv:avx512_core_amx"
    ("unavailable" where it has none)."""
    lib = _library()
    if lib is None:
        return "unavailable"
    buf = ctypes.create_string_buffer(256)
    n, h, w, c = shape
    bad = lib.jaxviz_onednn_impl(int(jnp.dtype(dtype) == jnp.bfloat16), *(ctypes.c_long(v) for v in (n, h, w, c, out_channels)),
                                 buf, ctypes.c_int(256))
    return "unavailable" if bad else buf.value.decode()


def winograd_runs(dtype=jnp.float32) -> bool:
    """Whether the Winograd calls run here with a transformed kernel of ``dtype``: float32 wherever
    the handlers load; bfloat16 only where oneDNN has a bfloat16 matmul (none on AVX2 only in
    oneDNN 3.2, where its primitive cannot be made), else the ops' XLA form runs it."""
    return available() and (jnp.dtype(dtype) != jnp.bfloat16 or _bf16_matmul())


@functools.lru_cache(maxsize=None)
def _bf16_matmul() -> bool:
    """Whether oneDNN makes a Winograd block's matmul on bfloat16 inputs here."""
    buf = ctypes.create_string_buffer(256)
    return not _library().jaxviz_matmul_impl(1, ctypes.c_long(96), ctypes.c_long(64), ctypes.c_long(64), buf,
                                             ctypes.c_int(256))


@jax.custom_batching.custom_vmap
def _conv4(x: jax.Array, kernel: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(x.shape[:-1] + kernel.shape[-1:], jnp.float32)
    return jax.ffi.ffi_call(TARGETS[jnp.dtype(x.dtype)], out)(x, kernel)


def _per_item(fn, axis_size, x_batched, x, w):
    """``fn`` item by item, for the rare vmap where every item brings its own weights."""
    x = x if x_batched else jnp.broadcast_to(x, (axis_size, *x.shape))
    return jax.lax.map(lambda xw: fn(*xw), (x, w)), True


def _images_vmap(conv):
    """The vmap rule of a conv whose public form takes any leading dimensions: the vmapped
    images join its batch (one call), or, with a kernel per item, one call per item."""

    def rule(axis_size, in_batched, x, kernel):
        if in_batched[1]:
            return _per_item(conv, axis_size, in_batched[0], x, kernel)
        return conv(x, kernel), in_batched[0]

    return rule


_conv4.def_vmap(_images_vmap(lambda x, kernel: conv3x3(x, kernel)))


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv, (..., H, W, C) x HWIO -> float32, by oneDNN; in bfloat16 when ``x`` is
    bfloat16 (the kernel is cast to ``x``'s type). Forward only: ``jaxviz.ops`` gives it its
    input gradient (``with_input_vjp``). Needs ``available()``."""
    if why := why_not("bfloat16" if x.dtype == jnp.bfloat16 else "float32"):
        raise RuntimeError(why)
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    if x.dtype not in TARGETS:
        x = x.astype(jnp.float32)
    y = _conv4(x.reshape((-1, h, w, c)), kernel.astype(x.dtype))
    return y.reshape((*lead, h, w, kernel.shape[-1]))


@jax.custom_vjp
def batched_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """(..., B, M, K) x (B, K, N) -> (..., B, M, N) in float32 by oneDNN's matmul: Winograd's
    batched matmuls (``ops.conv3x3_winograd``), the leading dimensions of ``a`` broadcast over
    ``b``. Differentiable (its gradients are matmuls too). Needs ``available()``."""
    if _library() is None:
        raise RuntimeError(MISSING)
    return _matmul(a.astype(jnp.float32), b.astype(jnp.float32))


def _matmul_fwd(a, b):
    return batched_matmul(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    da = batched_matmul(g, jnp.swapaxes(b, -1, -2))
    db = jnp.einsum("...bmk,...bmn->bkn", a.astype(jnp.float32), g)
    return da.astype(a.dtype), db.astype(b.dtype)


batched_matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_batching.custom_vmap
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    out = jax.ShapeDtypeStruct(a.shape[:-1] + b.shape[-1:], jnp.float32)
    return jax.ffi.ffi_call(MATMUL, out)(a, b)


@_matmul.def_vmap
def _matmul_vmap(axis_size, in_batched, a, b):
    if in_batched[1]:
        return _per_item(_matmul, axis_size, in_batched[0], a, b)
    if not in_batched[0]:
        return _matmul(a, b), False
    # the items folded into M: one (B, V M, K) x (B, K, N) product, larger matmuls than V of them
    v, nb, m, k = a.shape[0], a.shape[-3], a.shape[-2], a.shape[-1]
    lead = a.shape[1:-3]
    a2 = jnp.moveaxis(a.reshape((v, -1, nb, m, k)), 0, 2).reshape((-1, nb, v * m, k)) if lead else \
        jnp.moveaxis(a, 0, 1).reshape((nb, v * m, k))
    c = _matmul(a2, b)
    c = c.reshape((*c.shape[:-2], v, m, b.shape[-1]))
    c = jnp.moveaxis(c, -3, 0)
    return c.reshape((v, *lead, nb, m, b.shape[-1])), True


def winograd_kernel(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """G g G^T for ``ops.winograd_kernel``: g (R, 3), kernel (3, 3, C, O) float32 -> (R R, C, O),
    on every core, each sum as XLA's dot made that function's einsum on a Zen 5 (products
    rounded, added in order, no FMA: the same bits there). Not differentiable here
    (``ops.winograd_kernel`` is); needs ``available()``."""
    out = jax.ShapeDtypeStruct((g.shape[0] ** 2, *kernel.shape[2:]), jnp.float32)
    return jax.ffi.ffi_call(KERNEL, out, vmap_method="sequential")(g, kernel)


def winograd4(x: jax.Array, u: jax.Array) -> jax.Array:
    """3x3 SAME conv of (..., H, W, C) float32 by Winograd F(4x4, 3x3) with the transformed
    kernel ``u`` = ``ops.winograd_kernel(kernel, 4)``, (36, C, O): the tile transforms in C++
    on every core, the 36 matmuls in oneDNN's. The same sums in the same order as
    ``ops.conv3x3_winograd``'s XLA form with oneDNN's matmul. With ``u`` in bfloat16 (here and
    in the calls below) each transformed tile is rounded to bfloat16 as it is stored and the
    matmuls sum bf16 products in float32 (``ops._winograd_xla`` on a bf16 ``u``); it needs a CPU
    with native bf16 to be fast. Forward only; needs ``available()``."""
    return _winograd_public(_winograd4, (x,), (u,))


def winograd4_bias_relu(x: jax.Array, u: jax.Array, bias: jax.Array, pool: bool = False,
                        x_bias: jax.Array | None = None):
    """``relu(winograd4(x, u) + bias)`` in one call, and all its gradient needs: the bias and relu
    applied as the output transform writes each pixel (no pass of XLA's over the layer's output),
    and the relu's mask, uint8, 1 where the output is positive (a quarter of its bytes). With
    ``pool``, in their place, its 2x2 max pool (``model.max_pool2``) and the pool's hits
    (``ops.pool_hits``), made in the same pass: the layer's own output is never written.
    With ``x_bias`` (C,), the conv's input is ``relu(x + x_bias)``, made as the input transform
    reads ``x``: the layer before's bias and relu, where that layer's conv has no fused form;
    then that relu's mask comes last too, ``keep``: uint8, ``x``'s shape, 1 where
    ``x + x_bias > 0``, else 0 (all its gradient needs, a quarter of ``x``'s bytes).
    The same bits as the ops apart. Forward only; needs ``available()``."""
    if x_bias is None:
        return _winograd_public(_winograd4_bias_relu_pool if pool else _winograd4_bias_relu, (x,), (u, bias))
    op = _winograd4_in_relu_bias_relu_pool if pool else _winograd4_in_relu_bias_relu
    return _winograd_public(op, (x,), (u, bias, x_bias))


def winograd4_relu_grad(mask: jax.Array, g: jax.Array, u: jax.Array, keep: jax.Array | None = None) -> jax.Array:
    """``winograd4(where(mask > 0, g, 0), u)`` in one call: a conv + relu layer's input
    gradient (``u`` the flipped kernel's transform, ``mask`` the relu's from
    ``winograd4_bias_relu``), the mask applied as the input transform reads ``g``; with ``keep``
    (the mask of the layer's input ``relu(x + x_bias)``, also ``winograd4_bias_relu``'s),
    ``where(keep > 0, ..., 0)`` as the output transform writes: the gradient with respect to
    ``x``. The same bits as the ops apart. Needs ``available()``."""
    if keep is None:
        return _winograd_public(_winograd4_relu_grad, (mask, g), (u,))
    return _winograd_public(_winograd4_in_relu_grad, (mask, g, keep), (u,))


def winograd4_pool_grad(hits: jax.Array, g_pooled: jax.Array, u: jax.Array, keep: jax.Array | None = None, *,
                        size: tuple[int, int]) -> jax.Array:
    """The input gradient of ``winograd4_bias_relu(x, ..., pool=True)`` in one call, from the
    pool's hits and its cotangent, for a layer output of ``size`` (H, W): the max pool's gradient
    (each window's cotangent split between its maxima, as ``model.max_pool2``'s) and the relu's
    mask made as the input transform reads them; ``keep`` as in ``winograd4_relu_grad``. The
    same bits as the ops apart. Needs ``available()``."""
    odd = (size[0] - 2 * hits.shape[-3], size[1] - 2 * hits.shape[-2])
    if keep is None:
        return _winograd_public(_pool_grad_op(False, odd), (hits, g_pooled), (u,))
    return _winograd_public(_pool_grad_op(True, odd), (hits, g_pooled, keep), (u,))


def _winograd_public(op, images: tuple, weights: tuple):
    """``op`` on images of any leading dimensions (folded into its batch), in float32; its
    output(s) with those leading dimensions."""
    if _library() is None:
        raise RuntimeError(MISSING)
    lead = images[0].shape[:-3]
    flat = lambda a: (a if a.dtype == jnp.uint8 else a.astype(jnp.float32)).reshape((-1, *a.shape[-3:]))
    # the transformed kernel (the first weight) in bfloat16 stays so: the matmuls' inputs in bfloat16
    out = op(*map(flat, images), *(a if i == 0 and a.dtype == jnp.bfloat16 else a.astype(jnp.float32)
                                   for i, a in enumerate(weights)))
    unfold = lambda y: y.reshape((*lead, *y.shape[1:]))
    return tuple(map(unfold, out)) if isinstance(out, tuple) else unfold(out)


# About this many bytes of transformed tiles per shared block of winograd4 (every core on each
# block in turn): 1 / 2 / 4 / 8 / 16 MB and one block timed alike within noise on an AMX Xeon at
# 64-256 channels, except one block at 64 and 128 channels (1.3-1.8x the transforms' time: they
# fall out of cache) and small blocks at 512 channels (each block reads all the weights again,
# 38 MB there).
BLOCK_BYTES = 4 << 20
# Own blocks (each thread whole blocks of about OWN_TILES tiles, in its own cache, one fork and
# join a call instead of three a block) where every thread gets OWN_MIN_TILES tiles or more. On
# a Zen 5 (2 threads) the four seed grids took 0.87x the time with them (paired median of 5
# rounds, bit-identical), though each call alone times alike (0.93-1.07x,
# bench/engine/own_blocks.py): the gain shows only in situ, among XLA's threads. Layers of 64 tiles
# (512 channels) ran 1.05-1.13x alone with own blocks, so they stay shared (bench/README.md).
OWN_TILES = 96
OWN_MIN_TILES = 128


@functools.lru_cache(maxsize=None)
def _threads() -> int:
    """The threads of the handlers' parallel regions (OpenMP's, ``OMP_NUM_THREADS``)."""
    lib = _library()
    return max(1, int(lib.jaxviz_max_threads())) if lib is not None else 1


def _block(tiles: int, c: int, threads: int = 1) -> tuple[int, int]:
    """(tiles per block, scratch slots): own blocks (a slot per thread) of about OWN_TILES where
    each of ``threads`` gets OWN_MIN_TILES tiles or more, the blocks a multiple of the threads;
    else shared blocks (one slot), the tiles split evenly into about tiles * 36 * 4 * c /
    BLOCK_BYTES of them."""
    if threads > 1 and tiles >= threads * OWN_MIN_TILES:
        blocks = threads * -(-tiles // (threads * OWN_TILES))
        return -(-tiles // blocks), threads
    blocks = max(1, round(tiles * 36 * 4 * c / BLOCK_BYTES))
    return -(-tiles // blocks), 1


def _plane(floats: int) -> int:
    """Floats between the 36 planes of a block's scratch: ``floats`` padded to an odd number of
    64-byte lines, so that one tile's 36 values (a line or more each) spread over L1's sets
    instead of a few (a plane of a power-of-two number of lines maps every plane to the same sets)."""
    lines = -(-floats // 16)
    return 16 * (lines + 1 - lines % 2)


def _winograd_op(target: str, n_images: int, pooled: bool = False, unpool: tuple[int, int] | None = None,
                 mask: bool = False, keep: bool = False):
    """The custom call ``target`` on ``n_images`` (N, ..., C) images, the first (N, H, W, C),
    then the weights (the transformed kernel first), with its block and scratch: the conv
    (N, H, W, O), with ``mask`` and its relu's mask, uint8 (N, H, W, O), or with ``pooled`` its
    pool and the pool's hits, (N, H/2, W/2, O); with ``keep``, then the input relu's mask, uint8
    (N, H, W, C). With ``unpool`` (the odd edges' rows and columns), the first image is pooled,
    (N, H/2, W/2, C), and the conv (N, H, W, O). Under vmap the items join the batch (one call),
    or, with weights per item, one call per item."""
    results = 1 + (pooled or mask) + keep  # outputs, less the two scratch buffers

    def call(*args):
        n, h, w, c = args[0].shape
        if unpool is not None:
            h, w = 2 * h + unpool[0], 2 * w + unpool[1]
        o = args[n_images].shape[-1]
        tiles = n * (-(-h // 4)) * (-(-w // 4))
        block, slots = _block(tiles, max(c, o), _threads())
        outs = [jax.ShapeDtypeStruct((n, h // 2, w // 2, o), t) for t in (jnp.float32, jnp.uint8)] if pooled else \
            [jax.ShapeDtypeStruct((n, h, w, o), t) for t in (jnp.float32, jnp.uint8)[: 1 + mask]]
        outs += [jax.ShapeDtypeStruct((n, h, w, c), jnp.uint8)] if keep else []
        outs += [jax.ShapeDtypeStruct((36 * slots, _plane(block * c)), jnp.float32),  # two scratch buffers
                 jax.ShapeDtypeStruct((36 * slots, _plane(block * o)), jnp.float32)]
        r = jax.ffi.ffi_call(target, tuple(outs))(*args, block=block, own=int(slots > 1))
        return tuple(r[:results]) if results > 1 else r[0]

    op = jax.custom_batching.custom_vmap(call)

    @op.def_vmap
    def rule(axis_size, in_batched, *args):
        every = lambda xs, bs: tuple(a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(xs, bs))
        batched_out = (True,) * results if results > 1 else True
        if any(in_batched[n_images:]):
            return jax.lax.map(lambda a: op(*a), every(args, in_batched)), batched_out
        if not any(in_batched[:n_images]):
            return op(*args), ((False,) * results if results > 1 else False)
        images = every(args[:n_images], in_batched[:n_images])
        return _winograd_public(op, images, args[n_images:]), batched_out

    return op


_winograd4 = _winograd_op(WINOGRAD, 1)
_winograd4_bias_relu = _winograd_op(WINOGRAD_BIAS_RELU, 1, mask=True)
_winograd4_bias_relu_pool = _winograd_op(WINOGRAD_BIAS_RELU_POOL, 1, pooled=True)
_winograd4_relu_grad = _winograd_op(WINOGRAD_RELU_GRAD, 2)
_winograd4_in_relu_bias_relu = _winograd_op(WINOGRAD_IN_RELU_BIAS_RELU, 1, mask=True, keep=True)
_winograd4_in_relu_bias_relu_pool = _winograd_op(WINOGRAD_IN_RELU_BIAS_RELU_POOL, 1, pooled=True, keep=True)
_winograd4_in_relu_grad = _winograd_op(WINOGRAD_IN_RELU_GRAD, 3)


@functools.lru_cache(maxsize=None)
def _pool_grad_op(masked: bool, odd: tuple[int, int]):
    """The pool's gradient call, for layer outputs with ``odd`` extra rows and columns (0 or 1)."""
    return _winograd_op(WINOGRAD_IN_POOL_GRAD if masked else WINOGRAD_POOL_GRAD, 3 if masked else 2, unpool=odd)
