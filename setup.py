"""The native hot path (shipper._native) is a C extension; everything else is in pyproject.toml.

OpenSSL's libcrypto supplies SHA-256 (SHA-NI where the CPU has it); libsnappy compresses Kafka batches
without holding the GIL. If the extension cannot be built, installation stops: the pure-Python path
exists for tests and for SHIPPER_NATIVE=0, not as a silent fallback that costs five times the CPU.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shipper._native",
            sources=["native/module.c", "native/seal.c", "native/kafka.c", "native/parse.c", "native/correlate.c",
                     "native/merkle.c", "native/verify.c"],
            depends=["native/buf.h", "native/correlate.h", "native/seal.h", "native/kafka.h", "native/parse.h",
                     "native/merkle.h", "native/verify.h", "native/kafka_read.h"],
            libraries=["crypto", "snappy"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-deprecated-declarations"],
        )
    ],
)
