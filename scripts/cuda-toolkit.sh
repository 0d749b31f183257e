# Sourced by scripts/check-cuda and scripts/gpu-bench (not run on its own): puts deploy/cuda.env's
# CUDA toolkit, from PyPI's nvidia-* wheels, in .venv-cuda and exports what candle's and
# cudarc's build scripts read (CUDA_ROOT, CUDA_COMPUTE_CAP, NVCC, PATH), so that a machine
# without a system CUDA or a GPU compiles the `cuda` feature.
#
# cuda_toolkit           nvcc, its headers and cicc: enough for `cargo check`.
# cuda_toolkit --link    also the libraries the binaries link (cuBLAS, cuBLASLt, cuRAND, NVRTC,
#                        the CUDA runtime) under the names the linker looks for, and a stub
#                        libcuda.so: the driver ships the real one, PyPI has none.
# Either returns non-zero, with the reason on stderr, when pip cannot install the wheels.
#
# CUDA_COMPUTE_CAP, set before, overrides deploy/cuda.env's.

cuda_toolkit() {
  local link=0
  [[ "${1:-}" == --link ]] && link=1
  local cap="${CUDA_COMPUTE_CAP:-}"
  # shellcheck source=../deploy/cuda.env
  source deploy/cuda.env
  export CUDA_COMPUTE_CAP="${cap:-$CUDA_COMPUTE_CAP}"
  if [[ ! -x .venv-cuda/bin/python ]]; then
    python3 -m venv .venv-cuda || return 1
  fi
  local v="$CUDA_PYPI_VERSION"
  local wheels=("nvidia-cuda-nvcc==$v" "nvidia-cuda-runtime==$v" "nvidia-cuda-crt==$v"
    "nvidia-nvvm==$v" "nvidia-cuda-cccl==$CUDA_CCCL_PYPI_VERSION")
  if ((link)); then
    wheels+=("nvidia-cuda-nvrtc==$v" "nvidia-cublas==$CUDA_CUBLAS_PYPI_VERSION"
      "nvidia-curand==$CUDA_CURAND_PYPI_VERSION")
  fi
  if ! .venv-cuda/bin/pip install --quiet --disable-pip-version-check "${wheels[@]}"; then
    echo "cuda-toolkit: pip could not install ${wheels[*]}" >&2
    return 1
  fi
  local root
  root="$(.venv-cuda/bin/python -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
  # nvcc looks for cicc under nvvm/bin and the runtime under lib64.
  [[ -e "$root/lib64" ]] || ln -s lib "$root/lib64"
  # Some releases' wheels (13.0) put cicc in bin/ instead.
  if [[ ! -e "$root/nvvm/bin/cicc" && -e "$root/bin/cicc" ]]; then
    mkdir -p "$root/nvvm/bin"
    ln -sf ../../bin/cicc "$root/nvvm/bin/cicc"
  fi
  if ((link)); then
    cuda_link_names "$root" || return 1
  fi
  export CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_HOME="$root" NVCC="$root/bin/nvcc"
  export PATH="$root/bin:$root/nvvm/bin:$PATH"
  "$NVCC" --version | tail -2
}

# The wheels hold only versioned sonames (libcublas.so.13); `-lcublas` wants libcublas.so.
# cudarc's build script searches $CUDA_ROOT/lib and lib/stubs.
cuda_link_names() {
  local root="$1" so base
  for so in "$root"/lib/lib{cublas,cublasLt,curand,nvrtc,cudart}.so.*; do
    base="${so##*/}"
    base="${base%%.so.*}.so"
    [[ "$base" == *.alt.so ]] && continue
    ln -sf "${so##*/}" "$root/lib/$base"
  done
  # A stub libcuda.so (soname libcuda.so.1, the driver's) defining every function cuda.h
  # declares, after the preprocessor has mapped names to their versioned exports
  # (cuMemAlloc → cuMemAlloc_v2). It is only linked against: at run time the driver's
  # libcuda.so.1 is found instead, as the stubs/ folder is never on a library path.
  local stub="$root/lib/stubs/libcuda.so"
  if [[ ! -e "$stub" || "$root/include/cuda.h" -nt "$stub" ]]; then
    mkdir -p "$root/lib/stubs"
    local names
    names="$({ cc -E -P "$root/include/cuda.h" && cat "$root/include/cuda.h"; } |
      grep -o '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*(' | tr -d ' \t(' | sort -u)" || return 1
    sed 's/.*/void &(void) {}/' <<<"$names" >"$root/lib/stubs/libcuda.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$root/lib/stubs/libcuda.c" || {
      echo "cuda-toolkit: cannot build the libcuda.so stub with cc" >&2
      return 1
    }
  fi
}
