// Byte sizes with units ("2GiB", "512MB", "1024") and human-readable printing.
#pragma once

#include <cstdint>
#include <string>

namespace kolos {

// Parses "123", "4KiB", "2GiB", "1.5GB", "512MB" (case-insensitive units B, KB, MB, GB, TB, KiB ... TiB).
// Throws InputError naming `what` (e.g. the config key) when the text is not a size.
int64_t parse_bytes(const std::string& text, const std::string& what);

// 1536 -> "1.5 KiB".
std::string format_bytes(double bytes);

// Peak resident set size of this process in bytes (VmHWM), 0 when unknown.
int64_t peak_rss_bytes();
// Current resident set size in bytes (VmRSS).
int64_t current_rss_bytes();

}  // namespace kolos
