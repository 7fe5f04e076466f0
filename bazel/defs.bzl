"""Helpers shared by lmserve's BUILD files."""

def lm_test_binary(name, srcs = None, deps = []):
    """A test program built from tests/<name>.c against the engine."""
    native.cc_binary(
        name = name,
        srcs = srcs or [name + ".c", "check.h"],
        deps = ["//engine"] + deps,
        testonly = True,
    )
