"""The ISA for tests whose shapes were chosen around 8-lane vectors.

Which kernel, layout or epilogue a layer gets depends on the vector width: an 8x8 map is one
AVX2 vector per row (row-mode tiles) but half an AVX-512 vector. Tests that check such a
choice compile for an 8-lane target this host runs: AVX2 on any x86 core with AVX2 (AVX-512
cores too), else portable C. The host's own ISA is covered by every other test.
"""

from __future__ import annotations

from compiler_backend.isa import detect_isa

EIGHT_LANES = "avx2" if detect_isa().name in ("avx2", "avx512") else "generic"
#: Every ISA whose code this host runs (the prelude-level tests run each).
RUNNABLE_ISAS = {"avx512": ["avx512", "avx2", "generic"], "avx2": ["avx2", "generic"],
                 "neon": ["neon", "generic"]}.get(detect_isa().name, ["generic"])
