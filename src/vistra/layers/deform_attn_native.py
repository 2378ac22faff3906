"""Multi-scale deformable attention, native CPU path: a small C/OpenMP kernel compiled on first use.

Nothing is compiled at import. The first call of ``ms_deform_attn_native`` (or ``native_available()``) builds
the C source below with the system C compiler (``$CC``, else cc/gcc/clang) into a shared library cached under
``$XDG_CACHE_HOME/vistra`` (default ``~/.cache/vistra``), keyed by a hash of the source, flags and machine, and
loads it with ctypes: no torch headers, no Python.h, a build of about a second. If there is no compiler or the
build fails, ``native_available()`` is False and ``impl="auto"`` uses the pure-PyTorch fast path instead.

Semantics are those of the official CUDA kernel: a sample whose pixel coordinate (location * size - 0.5) is not
inside (-1, W) x (-1, H) contributes nothing (nor gradient), and corners outside the map read zero.
Forward: one pass over (batch, query) rows. Backward: one pass per (batch, head) -- each owns its slice of
grad_value, so the scatter needs no atomics -- computing the four corner dot products, grad_value, and the
gradients of attention weights and locations together. Float32 and float64, contiguous CPU tensors.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* value (B, S, M, D); hw (L, 2) = (H, W); start (L,); loc (B, Lq, M, L, P, 2) (x, y) in [0, 1];
   attn (B, Lq, M, L, P); out (B, Lq, M, D). */
void msda_forward_SUFFIX(const scalar_t* value, const int64_t* hw, const int64_t* start, const scalar_t* loc,
                         const scalar_t* attn, scalar_t* out, int64_t B, int64_t S, int64_t Lq, int64_t M,
                         int64_t D, int64_t L, int64_t P, int nthreads) {
    scalar_t* zero = (scalar_t*)calloc((size_t)D, sizeof(scalar_t));
    const int64_t rows = B * Lq * M;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = r / (Lq * M), m = r % M;
        const scalar_t* lc = loc + r * L * P * 2;
        const scalar_t* at = attn + r * L * P;
        scalar_t* o = out + r * D;
        for (int64_t d = 0; d < D; ++d) o[d] = 0;
        for (int64_t l = 0; l < L; ++l) {
            const int64_t H = hw[2 * l], W = hw[2 * l + 1];
            const scalar_t* v = value + ((b * S + start[l]) * M + m) * D;  /* pixel (0, 0) of this level/head */
            const int64_t row = W * M * D, col = M * D;
            for (int64_t p = 0; p < P; ++p) {
                const int64_t k = l * P + p;
                const scalar_t x = lc[2 * k] * W - (scalar_t)0.5, y = lc[2 * k + 1] * H - (scalar_t)0.5;
                if (!(x > -1 && y > -1 && x < W && y < H)) continue;  /* also skips NaN */
                const scalar_t xf = floor(x), yf = floor(y);
                const int64_t x0 = (int64_t)xf, y0 = (int64_t)yf;
                const scalar_t fx = x - xf, fy = y - yf, a = at[k];
                const scalar_t w00 = a * (1 - fx) * (1 - fy), w01 = a * fx * (1 - fy);
                const scalar_t w10 = a * (1 - fx) * fy, w11 = a * fx * fy;
                const int ok_x0 = x0 >= 0, ok_x1 = x0 + 1 < W, ok_y0 = y0 >= 0, ok_y1 = y0 + 1 < H;
                const scalar_t* v00 = (ok_y0 && ok_x0) ? v + y0 * row + x0 * col : zero;
                const scalar_t* v01 = (ok_y0 && ok_x1) ? v + y0 * row + (x0 + 1) * col : zero;
                const scalar_t* v10 = (ok_y1 && ok_x0) ? v + (y0 + 1) * row + x0 * col : zero;
                const scalar_t* v11 = (ok_y1 && ok_x1) ? v + (y0 + 1) * row + (x0 + 1) * col : zero;
                #pragma omp simd
                for (int64_t d = 0; d < D; ++d)
                    o[d] += w00 * v00[d] + w01 * v01[d] + w10 * v10[d] + w11 * v11[d];
            }
        }
    }
    free(zero);
}

/* grad_out (B, Lq, M, D); grad_value (B, S, M, D) zero-initialised, or NULL; grad_loc (B, Lq, M, L, P, 2) and
   grad_attn (B, Lq, M, L, P) fully written, or NULL. */
void msda_backward_SUFFIX(const scalar_t* value, const int64_t* hw, const int64_t* start, const scalar_t* loc,
                          const scalar_t* attn, const scalar_t* grad_out, scalar_t* grad_value,
                          scalar_t* grad_loc, scalar_t* grad_attn, int64_t B, int64_t S, int64_t Lq,
                          int64_t M, int64_t D, int64_t L, int64_t P, int nthreads) {
    scalar_t* zero = (scalar_t*)calloc((size_t)D, sizeof(scalar_t));
    #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t bm = 0; bm < B * M; ++bm) {
        const int64_t b = bm / M, m = bm % M;
        for (int64_t q = 0; q < Lq; ++q) {
            const int64_t r = (b * Lq + q) * M + m;
            const scalar_t* g = grad_out + r * D;
            const scalar_t* lc = loc + r * L * P * 2;
            const scalar_t* at = attn + r * L * P;
            for (int64_t l = 0; l < L; ++l) {
                const int64_t H = hw[2 * l], W = hw[2 * l + 1];
                const int64_t origin = ((b * S + start[l]) * M + m) * D;
                const scalar_t* v = value + origin;
                scalar_t* gv = grad_value ? grad_value + origin : 0;
                const int64_t row = W * M * D, col = M * D;
                for (int64_t p = 0; p < P; ++p) {
                    const int64_t k = l * P + p;
                    const scalar_t x = lc[2 * k] * W - (scalar_t)0.5, y = lc[2 * k + 1] * H - (scalar_t)0.5;
                    if (!(x > -1 && y > -1 && x < W && y < H)) {
                        if (grad_attn) grad_attn[r * L * P + k] = 0;
                        if (grad_loc) grad_loc[2 * (r * L * P + k)] = grad_loc[2 * (r * L * P + k) + 1] = 0;
                        continue;
                    }
                    const scalar_t xf = floor(x), yf = floor(y);
                    const int64_t x0 = (int64_t)xf, y0 = (int64_t)yf;
                    const scalar_t fx = x - xf, fy = y - yf, a = at[k];
                    const int ok_x0 = x0 >= 0, ok_x1 = x0 + 1 < W, ok_y0 = y0 >= 0, ok_y1 = y0 + 1 < H;
                    const int64_t o00 = y0 * row + x0 * col, o01 = o00 + col, o10 = o00 + row, o11 = o10 + col;
                    const int ok00 = ok_y0 && ok_x0, ok01 = ok_y0 && ok_x1, ok10 = ok_y1 && ok_x0, ok11 = ok_y1 && ok_x1;
                    if (grad_attn || grad_loc) {
                        const scalar_t* v00 = ok00 ? v + o00 : zero;
                        const scalar_t* v01 = ok01 ? v + o01 : zero;
                        const scalar_t* v10 = ok10 ? v + o10 : zero;
                        const scalar_t* v11 = ok11 ? v + o11 : zero;
                        scalar_t d00 = 0, d01 = 0, d10 = 0, d11 = 0;
                        #pragma omp simd reduction(+ : d00, d01, d10, d11)
                        for (int64_t d = 0; d < D; ++d) {
                            d00 += g[d] * v00[d];
                            d01 += g[d] * v01[d];
                            d10 += g[d] * v10[d];
                            d11 += g[d] * v11[d];
                        }
                        const scalar_t h0 = d00 + fx * (d01 - d00), h1 = d10 + fx * (d11 - d10);
                        if (grad_attn) grad_attn[r * L * P + k] = h0 + fy * (h1 - h0);
                        if (grad_loc) {
                            const scalar_t gx = a * ((d01 - d00) + fy * ((d11 - d10) - (d01 - d00)));
                            grad_loc[2 * (r * L * P + k)] = gx * W;
                            grad_loc[2 * (r * L * P + k) + 1] = a * (h1 - h0) * H;
                        }
                    }
                    if (gv) {
                        const scalar_t w00 = a * (1 - fx) * (1 - fy), w01 = a * fx * (1 - fy);
                        const scalar_t w10 = a * (1 - fx) * fy, w11 = a * fx * fy;
                        if (ok00) for (int64_t d = 0; d < D; ++d) gv[o00 + d] += w00 * g[d];
                        if (ok01) for (int64_t d = 0; d < D; ++d) gv[o01 + d] += w01 * g[d];
                        if (ok10) for (int64_t d = 0; d < D; ++d) gv[o10 + d] += w10 * g[d];
                        if (ok11) for (int64_t d = 0; d < D; ++d) gv[o11 + d] += w11 * g[d];
                    }
                }
            }
        }
    }
    free(zero);
}
"""

_TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}
_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": ctypes.CDLL | None, "error": str


def _full_source() -> str:
    return "\n".join(_SOURCE.replace("scalar_t", c).replace("SUFFIX", s) for c, s in _TYPES.values())


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vistra"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, delete=True)
        probe.close()
        return root
    except OSError:
        return Path(tempfile.gettempdir()) / f"vistra-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _compile(source: str) -> tuple[ctypes.CDLL | None, str]:
    """Build (or find in the cache) and load the library; (None, reason) when that is not possible."""
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc/clang)"
    attempts = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3", "-fopenmp-simd"], ["-O3"])
    errors = []
    for flags in attempts:
        key = hashlib.sha256("\0".join([source, cc, *flags, platform.machine(), platform.node()]).encode()).hexdigest()[:16]
        lib_path = _cache_dir() / f"msda_{key}.so"
        if not lib_path.exists():
            lib_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                src = Path(tmp) / "msda.c"
                src.write_text(source)
                tmp_lib = Path(tmp) / "msda.so"
                cmd = [cc, *flags, "-shared", "-fPIC", "-o", str(tmp_lib), str(src), "-lm"]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                except (OSError, subprocess.SubprocessError) as exc:
                    errors.append(f"{' '.join(cmd)}: {exc}")
                    continue
                if proc.returncode != 0:
                    errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
                    continue
                os.replace(tmp_lib, lib_path)  # atomic: concurrent builds cannot leave a torn file
        try:
            return ctypes.CDLL(str(lib_path)), ""
        except OSError as exc:
            errors.append(f"loading {lib_path}: {exc}")
    return None, "; ".join(errors)


def _lib() -> ctypes.CDLL | None:
    with _lock:
        if "lib" not in _state:
            lib, error = _compile(_full_source())
            if lib is not None:
                ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
                for _, s in _TYPES.values():
                    getattr(lib, f"msda_forward_{s}").argtypes = [ptr] * 6 + [i64] * 7 + [cint]
                    getattr(lib, f"msda_backward_{s}").argtypes = [ptr] * 9 + [i64] * 7 + [cint]
            _state["lib"], _state["error"] = lib, error
        return _state["lib"]  # type: ignore[return-value]


def native_available() -> bool:
    """Whether the C kernel is built and loaded (builds it on the first call; False if that is impossible)."""
    return _lib() is not None


def native_error() -> str:
    """Why the native kernel is unavailable ('' if it is available)."""
    _lib()
    return str(_state.get("error", ""))


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


# Below this many multiply-adds a call runs on one thread: starting an OpenMP team costs more than it saves.
_SERIAL_WORK = 1 << 18


def _threads(work: int) -> int:
    return 1 if work < _SERIAL_WORK else torch.get_num_threads()


def _level_tables(shapes) -> tuple[torch.Tensor, torch.Tensor]:
    hw = torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2)  # (L, 2)
    start = torch.zeros(len(shapes), dtype=torch.int64)  # (L,)
    start[1:] = (hw[:, 0] * hw[:, 1]).cumsum(0)[:-1]
    return hw, start


class _NativeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, shapes):
        lib = _lib()
        value, loc, attn = (t.contiguous() for t in (value, sampling_locations, attention_weights))
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = loc.shape
        hw, start = _level_tables(shapes)
        out = value.new_empty(B, Lq, M, D)
        fn = getattr(lib, f"msda_forward_{_TYPES[value.dtype][1]}")
        fn(_ptr(value), _ptr(hw), _ptr(start), _ptr(loc), _ptr(attn), _ptr(out), B, S, Lq, M, D, L, P,
           _threads(B * Lq * M * L * P * D))
        ctx.save_for_backward(value, loc, attn)
        ctx.tables = (hw, start)
        return out.view(B, Lq, M * D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        value, loc, attn = ctx.saved_tensors
        hw, start = ctx.tables
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = loc.shape
        need_value, need_loc, need_attn = ctx.needs_input_grad[:3]
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros_like(value) if need_value else None
        grad_loc = torch.empty_like(loc) if need_loc else None
        grad_attn = torch.empty_like(attn) if need_attn else None
        fn = getattr(_lib(), f"msda_backward_{_TYPES[value.dtype][1]}")
        fn(_ptr(value), _ptr(hw), _ptr(start), _ptr(loc), _ptr(attn), _ptr(grad_out), _ptr(grad_value),
           _ptr(grad_loc), _ptr(grad_attn), B, S, Lq, M, D, L, P, _threads(B * Lq * M * L * P * D))
        return grad_value, grad_loc, grad_attn, None


def supports(value: torch.Tensor) -> bool:
    """Whether the native kernel can take these inputs (CPU float32/float64) and is built."""
    return value.device.type == "cpu" and value.dtype in _TYPES and native_available()


def ms_deform_attn_native(value, shapes, sampling_locations, attention_weights) -> torch.Tensor:
    """Native path; same arguments and result as ms_deform_attn_reference. Raises if the kernel is unavailable."""
    if value.device.type != "cpu" or value.dtype not in _TYPES:
        raise ValueError(f"the native kernel takes CPU float32/float64 tensors, got {value.dtype} on {value.device}")
    if not native_available():
        raise RuntimeError(f"the native deformable-attention kernel is unavailable: {native_error()}")
    return _NativeFunction.apply(value, sampling_locations, attention_weights, shapes)
