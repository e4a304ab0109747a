// safetensors files (https://github.com/huggingface/safetensors format), kolos's own reader and writer.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON {"name": {"dtype": "F32", "shape": [..],
// "data_offsets": [begin, end]}, ..., "__metadata__": {string: string}}, then the raw little-endian data.
// Offsets are relative to the end of the header; tensors are stored contiguously in name order.
// dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace kolos::checkpoint {

using TensorMap = std::map<std::string, at::Tensor>;
using Metadata = std::map<std::string, std::string>;

// Writes `tensors` (any CPU dtype above, any strides; written contiguous) to `path` directly (callers that need
// atomicity write into a temporary directory and rename it). The file is fsync'ed before returning.
// InputError naming the path when it cannot be written (disk full included).
void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

// Reads every tensor of `path` into freshly allocated CPU tensors. InputError naming the file (and the tensor)
// when it is missing, truncated, has a malformed header, overlapping or out-of-range offsets, or an unknown dtype.
TensorMap load_safetensors(const std::string& path, Metadata* metadata = nullptr);

}  // namespace kolos::checkpoint
