"""CUDA for Bazel 4.2.3 without rules_cuda: nvcc in a genrule.

nvcc is called by absolute path (through a symlinked repository it cannot
find its own headers). The CUDA runtime is linked statically, so binaries
need no libcudart at run time and never link libcuda: the runtime loads the
driver when the first CUDA call is made, and on a machine without one that
call fails cleanly and lmserve runs on the CPU.
"""

NVCC = "/usr/local/cuda/bin/nvcc"

# sm_80 (A100) and sm_90 (H100/H200) machine code, plus PTX for newer GPUs.
CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]

CUDA_LINKOPTS = [
    "-L/usr/local/cuda/lib64",
    "-lcudart_static",
    "-ldl",
    "-lrt",
    "-lpthread",
]

def cuda_library(name, srcs, hdrs = [], deps = [], copts = []):
    """Compiles each .cu in srcs with nvcc into a cc_library."""
    objs = []
    for src in srcs:
        obj = src.replace(".cu", ".o")
        native.genrule(
            name = name + "_" + src.replace("/", "_").replace(".", "_"),
            srcs = [src] + hdrs,
            outs = [obj],
            # nvcc names its temporary files after its process id, which is
            # the same in every sandbox: each compile gets its own TMPDIR
            cmd = " ".join([
                "tmp=$$(mktemp -d) &&",
                "TMPDIR=$$tmp",
                NVCC,
                "-c",
                "-O3",
                "-std=c++17",
                "-Xcompiler=-fPIC,-Wall,-Wextra,-Werror",
                "--Werror=all-warnings",
                "-I.",
                "-I$(GENDIR)",
            ] + CUDA_ARCH_FLAGS + copts + ["$(location " + src + ")", "-o", "$@", "; rc=$$?; rm -rf $$tmp; exit $$rc"]),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps,
        linkopts = CUDA_LINKOPTS,
        linkstatic = True,
    )
