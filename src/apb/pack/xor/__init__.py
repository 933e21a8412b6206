"""XOR-gate weight encryption: fixed-rate, lossless storage of sparse quantized weights.

Kim et al., *Structured Compression by Weight Encryption for Unstructured Pruning and
Quantization*, CVPR 2020. Each bit-plane of a layer is cut into blocks of ``n_out`` bits; a
fixed, seeded random XOR network (:class:`XorNetwork`) maps ``n_in < n_out`` stored bits to
each block, chosen so that every care bit (an unpruned weight) comes out right; the few
care bits no input can produce are patched. The pruning mask is a separate stream. Every
block decodes the same way from the same number of bits, so decoding is regular and
parallel.

>>> enc = apb.pack.xor.encode_planes(planes, care)          # 0/1 [Q, n], bool [n]
>>> enc.encrypted_bits, enc.patch_bits, enc.network
>>> apb.pack.xor.decode_planes(enc)[:, care] == planes[:, care]
>>> apb.pack.xor.encode_file("lenet.safetensors", "lenet.xor.safetensors")
>>> model = apb.pack.xor.load_xor("lenet.xor.safetensors")  # the packed model, exactly

Layers (:func:`encode_layer`): any packed layer. Pruned + quantized layers encrypt their code
planes with the kept weights as care bits; APB (and binary) layers their sign plane, the
signs implied by the full-precision corrections being don't-care; dense layers (DoReFa,
binary, the output of filter pruning) have no don't-care bits and are stored plainly.
"""

from .codec import (
    EncodedLayer,
    XorFormatError,
    decode_layer,
    encode_layer,
    inferable_signs,
    layer_planes,
    tensor_digest,
)
from .file import (
    FORMAT,
    FORMAT_VERSION,
    XorLayerRow,
    XorReport,
    decode_bytes,
    decode_file,
    encode_bytes,
    encode_file,
    is_xor_file,
    load_xor,
    recorded_encoding,
)
from .mask import MaskCode, decode_mask, encode_mask
from .network import DEFAULT_SEED, XorNetwork
from .planes import (
    SCHEMES,
    EncodedPlanes,
    candidate_shapes,
    decode_plane,
    decode_planes,
    encode_planes,
    expected_patches,
    patch_streams,
)

__all__ = [
    "DEFAULT_SEED", "FORMAT", "FORMAT_VERSION", "SCHEMES", "EncodedLayer", "EncodedPlanes",
    "MaskCode", "XorFormatError", "XorLayerRow", "XorNetwork", "XorReport", "candidate_shapes",
    "decode_bytes", "decode_file", "decode_layer", "decode_mask", "decode_plane",
    "decode_planes", "encode_bytes", "encode_file", "encode_layer", "encode_mask",
    "encode_planes", "expected_patches", "inferable_signs", "is_xor_file", "layer_planes",
    "load_xor", "patch_streams", "recorded_encoding", "tensor_digest",
]
